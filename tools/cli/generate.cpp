// `lmtune generate`: mlx_lm.generate's flags, defaults and output. The prompt goes through the
// chat template (unless --ignore-chat-template or the tokenizer has none), the text streams to
// stdout, and with --verbose (the default) the prompt / generation speeds and peak memory follow.
#include <cstdio>
#include <iostream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli_commands.h"
#include "core/error.h"
#include "runtime/generate.h"
#include "runtime_setup.h"
#include "tokenizer/streaming_detokenizer.h"

namespace lmtune::cli {

namespace {

const char kUsage[] =
    "usage: lmtune generate --model DIR [options]\n"
    "\n"
    "Generate text from a prompt (mlx_lm.generate's flags and output).\n"
    "\n"
    "  --model DIR                 a local Hugging Face model folder (Hub downloads are not available yet)\n"
    "  --adapter-path PATH         a folder with adapters.safetensors + adapter_config.json (lmtune lora / mlx_lm.lora)\n"
    "  --prompt, -p TEXT           the message (default 'hello'); '-' reads stdin; \\n and \\t are unescaped\n"
    "  --system-prompt TEXT        a system message before the prompt\n"
    "  --prefill-response TEXT     start the assistant's answer with TEXT (continue_final_message)\n"
    "  --max-tokens, -m N          tokens to generate (100)\n"
    "  --temp T                    sampling temperature (0.0 = greedy)\n"
    "  --top-p P                   nucleus sampling (1.0 = off)\n"
    "  --top-k K                   keep the K most likely tokens (0 = off)\n"
    "  --min-p P                   drop tokens below P times the top probability (0.0 = off)\n"
    "  --min-tokens-to-keep N      tokens min-p always keeps (1)\n"
    "  --xtc-probability P         chance per step to exclude the top choices (0.0)\n"
    "  --xtc-threshold P           XTC's probability threshold (0.1)\n"
    "  --repetition-penalty R      CTRL penalty on recent tokens (off)\n"
    "  --repetition-context-size N recent tokens it looks at (20)\n"
    "  --presence-penalty P        subtract P from each recent token's logit (off)\n"
    "  --frequency-penalty P       subtract P per recent occurrence (off)\n"
    "  --seed N                    RNG seed (default: random)\n"
    "  --ignore-chat-template      encode the prompt as is\n"
    "  --chat-template-config JSON extra chat-template variables, e.g. '{\"enable_thinking\": false}'\n"
    "  --extra-eos-token T [T ...] more stop tokens (token strings or ids)\n"
    "  --verbose BOOL              print the frame and statistics (True)\n"
    "  --max-kv-size N             rotating KV cache of N entries (4 sink tokens kept)\n"
    "  --prefill-step-size N       prompt tokens per prefill step (2048)\n"
    "  --device cpu|cuda           (default: cuda when available)\n"
    "  --dtype float32|bfloat16|float16  weights on CUDA (default: the config's torch_dtype); the CPU uses float32\n"
    "  -h, --help                  show this help\n";

}  // namespace

int run_generate(int argc, char** argv) {
  LoadOptions lo;
  std::string prompt = "hello", template_config;
  std::optional<std::string> system_prompt, prefill;
  std::vector<std::string> extra_eos;
  SamplerOptions so;
  GenerationConfig gc;
  std::optional<uint64_t> seed;
  bool ignore_template = false, verbose = true;
  int64_t max_kv_size = 0;
  try {
    Args a(argc, argv);
    while (a.next()) {
      if (a.is("-h", "--help")) {
        std::fputs(kUsage, stdout);
        return 0;
      } else if (read_load_flag(a, lo) || read_sampler_flag(a, so)) {
        // read by the shared flag readers (runtime_setup.h)
      } else if (a.is("--prompt", "-p")) prompt = a.value();
      else if (a.is("--system-prompt")) system_prompt = a.value();
      else if (a.is("--prefill-response")) prefill = a.value();
      else if (a.is("--max-tokens", "-m")) gc.max_tokens = a.int_value();
      else if (a.is("--seed")) seed = uint64_t(a.int_value());
      else if (a.is("--ignore-chat-template")) ignore_template = true;
      else if (a.is("--chat-template-config")) template_config = a.value();
      else if (a.is("--extra-eos-token")) extra_eos = a.values();
      else if (a.is("--verbose")) verbose = a.bool_value();
      else if (a.is("--max-kv-size")) max_kv_size = a.int_value();
      else if (a.is("--prefill-step-size")) gc.prefill_step_size = a.int_value();
      else a.unknown();
    }
    if (lo.model.empty()) throw UsageError("--model is required (a local model folder)");
    if (max_kv_size < 0 || (max_kv_size > 0 && max_kv_size <= 4))
      throw UsageError("--max-kv-size must be more than the 4 kept sink tokens");
  } catch (const UsageError& e) {
    std::fprintf(stderr, "lmtune generate: error: %s (see lmtune generate --help)\n", e.what());
    return 2;
  }

  nlohmann::ordered_json template_kwargs = nlohmann::ordered_json::object();
  if (!template_config.empty()) {
    template_kwargs = nlohmann::ordered_json::parse(template_config, nullptr, false);
    LMT_CHECK(template_kwargs.is_object(), "--chat-template-config must be a JSON object, got: ", template_config);
  }
  LoadedModel lm = load_for_generation(lo);
  const Tokenizer& tok = lm.chat->tokenizer();

  prompt = unescape_prompt(prompt);
  if (prompt == "-") {
    std::ostringstream ss;
    ss << std::cin.rdbuf();
    prompt = ss.str();
  }
  std::vector<int32_t> ids;
  if (!ignore_template && !tok.chat_templates().empty()) {
    nlohmann::ordered_json messages = nlohmann::ordered_json::array();
    if (system_prompt) messages.push_back({{"role", "system"}, {"content", *system_prompt}});
    messages.push_back({{"role", "user"}, {"content", prompt}});
    ChatTemplateOptions opts;
    if (prefill) {
      messages.push_back({{"role", "assistant"}, {"content", *prefill}});
      opts.continue_final_message = "content";
    } else {
      opts.add_generation_prompt = true;
    }
    opts.kwargs = template_kwargs;
    std::string text = lm.chat->render(messages, opts);
    // As mlx-lm: no second BOS when the template already starts with it.
    bool add_special = tok.bos_token().empty() || text.rfind(tok.bos_token(), 0) != 0;
    ids = tok.encode(text, add_special);
  } else {
    ids = tok.encode(prompt, true);
  }

  gc.eos_ids = collect_eos_ids(lm.dir, tok, extra_eos);
  so.xtc_special_tokens = tok.encode("\n", false);
  so.xtc_special_tokens.insert(so.xtc_special_tokens.end(), gc.eos_ids.begin(), gc.eos_ids.end());
  Sampler sampler(so, seed ? *seed : std::random_device{}());
  DenseKVCache cache(lm.model->config(), lm.model->device(), lm.model->dtype(), 1, max_kv_size);
  Generator gen(*lm.model, cache, sampler);

  StreamingDetokenizer detok(tok);
  std::string text;
  if (verbose) std::printf("==========\n");
  std::fflush(stdout);
  GenerationStats st = gen.generate(ids, gc, [&](int32_t id) {
    std::string piece = detok.push(id);
    if (verbose && !piece.empty()) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
    text += piece;
    return true;
  });
  std::string rest = detok.finish();
  text += rest;
  if (!verbose) {
    std::printf("%s\n", text.c_str());
    return 0;
  }
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::printf("\n==========\n");
  if (text.empty()) {
    std::printf("No text generated for this prompt\n");
    return 0;
  }
  std::printf("Prompt: %lld tokens, %.3f tokens-per-sec\n", (long long)st.prompt_tokens, st.prompt_tps);
  std::printf("Generation: %lld tokens, %.3f tokens-per-sec\n", (long long)st.generation_tokens, st.generation_tps);
  std::printf("Peak memory: %.3f GB\n", st.peak_memory_gb);
  return 0;
}

}  // namespace lmtune::cli
