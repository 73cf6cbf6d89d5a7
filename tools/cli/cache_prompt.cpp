// `lmtune cache_prompt`: mlx_lm.cache_prompt's flags and output. The prompt (as a user message the
// chat template leaves open, continue_final_message) is run through the model and the KV cache is
// saved as mlx-lm's prompt cache file; `lmtune generate --prompt-cache-file` (or mlx_lm.generate)
// continues it.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli_commands.h"
#include "core/allocator.h"
#include "core/error.h"
#include "runtime/prompt_cache_file.h"
#include "runtime_setup.h"

namespace lmtune::cli {

namespace {

struct CachePromptOptions {
  LoadOptions load;
  std::string prompt_cache_file, prompt;
  std::optional<std::string> eos_token;
  int64_t max_kv_size = 0;
  KVQuantOptions kv;
  int64_t prefill_step_size = 2048;
};

void declare(Options& t, CachePromptOptions& o) {
  add_model_options(t, o.load, kModelHelp);
  t.add("--prompt-cache-file", &o.prompt_cache_file, "FILE", "the .safetensors file to write (required)");
  t.add("--prompt", &o.prompt, "TEXT", "the message to cache (required); '-' reads stdin");
  t.add("--eos-token", &o.eos_token, "TOKEN", "an end-of-sequence token, stored in the file for generate to stop on");
  t.add("--max-kv-size", &o.max_kv_size, "N", "not supported here: a rotating cache cannot be saved (0 = off)");
  add_kv_quant_options(t, o.kv);
  t.group("lmtune's additions");
  t.add("--prefill-step-size", &o.prefill_step_size, "N", "prompt tokens per prefill step");
  add_device_options(t, o.load);
}

// Python's json.dumps spacing, as mlx-lm writes the tokenizer_config metadata.
std::string tokenizer_config_json(const std::optional<std::string>& eos_token) {
  std::string s = "{\"trust_remote_code\": false";
  if (eos_token) s += ", \"eos_token\": " + nlohmann::json(*eos_token).dump();
  return s + "}";
}

int cache_prompt(CachePromptOptions& o) {
  LoadedModel lm = load_for_generation(o.load);
  const Tokenizer& tok = lm.chat->tokenizer();
  std::string prompt = o.prompt;
  if (prompt == "-") {
    std::ostringstream ss;
    ss << std::cin.rdbuf();
    prompt = ss.str();
  }
  std::vector<int32_t> ids;
  if (!tok.chat_templates().empty()) {
    nlohmann::ordered_json messages = nlohmann::ordered_json::array();
    messages.push_back({{"role", "user"}, {"content", prompt}});
    ChatTemplateOptions opts;
    opts.continue_final_message = "content";  // generate's prompt continues this message
    std::string text = lm.chat->render(messages, opts);
    bool add_special = tok.bos_token().empty() || text.rfind(tok.bos_token(), 0) != 0;  // as generate
    ids = tok.encode(text, add_special);
  } else {
    ids = tok.encode(prompt, true);
  }
  LMT_CHECK(!ids.empty(), "the prompt encodes to no tokens; nothing to cache");
  const int64_t V = lm.model->config().n_vocab;
  for (int32_t t : ids) LMT_CHECK(t >= 0 && t < V, "prompt token ", t, " is outside the model's vocabulary of ", V);

  DenseKVCache cache(lm.model->config(), lm.model->device(), lm.model->dtype());
  cache.set_quantization(kv_quantization(o.kv, lm.model->config().head_dim));
  const auto tic = std::chrono::steady_clock::now();
  const int64_t total = int64_t(ids.size());
  size_t width = 0;
  // As mlx-lm's prefill: all but the last token in chunks, then the last alone (with --kv-bits
  // the cache may be quantized between them, which changes what the last token attends over).
  for (int64_t done = 0; done < total;) {
    const int64_t n = done + 1 < total ? std::min(o.prefill_step_size, total - 1 - done) : 1;
    Tensor t = Tensor::from_i32(std::vector<int32_t>(ids.begin() + done, ids.begin() + done + n), {1, n});
    (void)lm.model->forward(t, cache, true);
    done += n;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - tic).count();
    char msg[96];
    std::snprintf(msg, sizeof msg, "\rProcessed %6lld tokens (%6.2f tok/s)", (long long)done, double(done) / s);
    width = std::max(width, std::strlen(msg));
    std::printf("%-*s", int(width), msg);
    std::fflush(stdout);
  }
  std::printf("\n");
  std::printf("Peak memory: %.3f GB\n", double(allocator(lm.model->device()).peak_bytes()) / 1e9);
  std::printf("Saving...\n");
  std::fflush(stdout);
  save_prompt_cache(o.prompt_cache_file, cache,
                    {{"model", o.load.model}, {"tokenizer_config", tokenizer_config_json(o.eos_token)}});
  return 0;
}

}  // namespace

int run_cache_prompt(int argc, char** argv) {
  CachePromptOptions o;
  Options t("cache_prompt", "lmtune cache_prompt --model MODEL --prompt-cache-file FILE --prompt TEXT [options]",
            "Cache the state of a prompt for `lmtune generate --prompt-cache-file` (mlx_lm.cache_prompt's flags).");
  declare(t, o);
  return run_with_options(t, argc, argv, [&] {
    if (o.load.model.empty()) throw UsageError("--model is required (a local model folder or a Hub repo id)");
    if (o.prompt_cache_file.empty()) throw UsageError("--prompt-cache-file is required");
    if (o.prompt.empty()) throw UsageError("--prompt is required ('-' reads stdin)");
    if (o.max_kv_size != 0)
      throw UsageError(
          "--max-kv-size is not supported by cache_prompt here: lmtune saves KVCache and "
          "QuantizedKVCache layers, not a rotating cache");
    if (o.prefill_step_size < 1)
      throw UsageError("--prefill-step-size must be at least 1, got " + std::to_string(o.prefill_step_size));
    (void)kv_quantization(o.kv);
    return cache_prompt(o);
  });
}

}  // namespace lmtune::cli
