// `lmtune chat`: mlx_lm.chat's REPL. The KV cache persists across turns: each turn renders the
// whole conversation through the chat template and prefills only the tokens beyond what the cache
// holds (a tail that re-tokenizes differently is trimmed first). Reads lines from a terminal or a
// pipe; q quits, r resets, h helps.
#include <cstdio>
#include <iostream>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "cli_commands.h"
#include "core/error.h"
#include "runtime/generate.h"
#include "runtime_setup.h"
#include "tokenizer/streaming_detokenizer.h"

namespace lmtune::cli {

namespace {

struct ChatOptions {
  LoadOptions load;
  SamplerOptions sampler;
  int64_t seed = 0;
  int64_t max_kv_size = 0;
  int64_t max_tokens = 256;
  std::optional<std::string> system_prompt;
  std::string chat_template_config;
  KVQuantOptions kv;
};

void declare(Options& t, ChatOptions& o) {
  add_model_options(t, o.load, std::string(kModelHelp) + "; it needs a chat template");
  add_sampler_options(t, o.sampler);
  t.add("--seed", &o.seed, "N", "RNG seed");
  t.add("--max-kv-size", &o.max_kv_size, "N", "rotating KV cache of N entries, 4 sink tokens kept; 0 = unbounded");
  t.add("--max-tokens, -m", &o.max_tokens, "N", "tokens per answer");
  t.add("--system-prompt", &o.system_prompt, "TEXT", "a system message at the start of the conversation");
  t.group("lmtune's additions");
  t.add("--chat-template-config", &o.chat_template_config, "JSON",
        "extra chat-template variables, e.g. '{\"enable_thinking\": false}'");
  add_penalty_options(t, o.sampler);
  add_kv_quant_options(t, o.kv);
  add_device_options(t, o.load);
}

void print_help() {
  std::printf("The command list:\n- 'q' to exit\n- 'r' to reset the chat\n- 'h' to display these commands\n");
}

int chat(ChatOptions& o) {
  const LoadOptions& lo = o.load;
  SamplerOptions& so = o.sampler;
  GenerationConfig gc;
  gc.max_tokens = o.max_tokens;
  const std::string& template_config = o.chat_template_config;
  ChatTemplateOptions opts;
  opts.add_generation_prompt = true;
  if (!template_config.empty()) {
    opts.kwargs = nlohmann::ordered_json::parse(template_config, nullptr, false);
    LMT_CHECK(opts.kwargs.is_object(), "--chat-template-config must be a JSON object, got: ", template_config);
  }
  LoadedModel lm = load_for_generation(lo);
  const Tokenizer& tok = lm.chat->tokenizer();
  LMT_CHECK(!tok.chat_templates().empty(), "model ", lm.dir, " has no chat template; use lmtune generate instead");
  gc.eos_ids = collect_eos_ids(lm.dir, tok);
  so.xtc_special_tokens = tok.encode("\n", false);
  so.xtc_special_tokens.insert(so.xtc_special_tokens.end(), gc.eos_ids.begin(), gc.eos_ids.end());
  Sampler sampler(so, uint64_t(o.seed));
  DenseKVCache cache(lm.model->config(), lm.model->device(), lm.model->dtype(), 1, o.max_kv_size);
  cache.set_quantization(kv_quantization(o.kv, lm.model->config().head_dim));
  Generator gen(*lm.model, cache, sampler);

  auto fresh = [&] {
    nlohmann::ordered_json m = nlohmann::ordered_json::array();
    if (o.system_prompt) m.push_back({{"role", "system"}, {"content", *o.system_prompt}});
    return m;
  };
  nlohmann::ordered_json messages = fresh();
  std::printf("[INFO] Starting chat session with %s.\n", lo.model.c_str());
  print_help();
  std::string line;
  while (true) {
    std::printf(">> ");
    std::fflush(stdout);
    if (!std::getline(std::cin, line)) {
      std::printf("\n");
      break;
    }
    if (line == "q") break;
    if (line == "r") {
      gen.reset();
      messages = fresh();
      continue;
    }
    if (line == "h") {
      print_help();
      continue;
    }
    messages.push_back({{"role", "user"}, {"content", line}});
    std::string text = lm.chat->render(messages, opts);
    bool add_special = tok.bos_token().empty() || text.rfind(tok.bos_token(), 0) != 0;
    std::vector<int32_t> ids = tok.encode(text, add_special);
    // Reuse the cached prefix; prefill the rest (at least one token, for the next logits).
    const std::vector<int32_t>& held = gen.cached();
    size_t common = 0;
    while (common < held.size() && common < ids.size() && held[common] == ids[common]) ++common;
    if (common == ids.size()) --common;
    if (!gen.trim_to(int64_t(common))) {
      gen.reset();
      common = 0;
    }
    std::vector<int32_t> suffix(ids.begin() + long(common), ids.end());
    StreamingDetokenizer detok(tok);
    std::string answer;
    GenerationStats st = gen.generate(suffix, gc, [&](int32_t id) {
      std::string piece = detok.push(id);
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
      answer += piece;
      return true;
    });
    std::string rest = detok.finish();
    std::fwrite(rest.data(), 1, rest.size(), stdout);
    answer += rest;
    messages.push_back({{"role", "assistant"}, {"content", answer}});
    std::printf("\n%lld tokens \xc2\xb7 %.1f tok/s \xc2\xb7 prompt %.1f tok/s (%lld new) \xc2\xb7 peak %.3f GB\n",
                (long long)st.generation_tokens, st.generation_tps, st.prompt_tps, (long long)st.prompt_tokens,
                st.peak_memory_gb);
  }
  return 0;
}

}  // namespace

int run_chat(int argc, char** argv) {
  ChatOptions o;
  Options t("chat", "lmtune chat --model MODEL [options]",
            "Chat with a model in the terminal (mlx_lm.chat). Commands: q quits, r resets, h shows help.");
  declare(t, o);
  return run_with_options(t, argc, argv, [&] {
    if (o.load.model.empty()) throw UsageError("--model is required (a local model folder or a Hub repo id)");
    if (o.max_kv_size < 0 || (o.max_kv_size > 0 && o.max_kv_size <= 4))
      throw UsageError("--max-kv-size must be more than the 4 kept sink tokens");
    if (o.max_tokens <= 0)
      throw UsageError("--max-tokens must be a positive number of tokens, got " + std::to_string(o.max_tokens));
    (void)kv_quantization(o.kv);
    return chat(o);
  });
}

}  // namespace lmtune::cli
