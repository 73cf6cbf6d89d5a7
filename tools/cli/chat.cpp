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

const char kUsage[] =
    "usage: lmtune chat --model DIR [options]\n"
    "\n"
    "Chat with a model in the terminal (mlx_lm.chat). Commands: q quits, r resets, h shows help.\n"
    "\n"
    "  --model DIR                 a local Hugging Face model folder with a chat template\n"
    "  --adapter-path PATH         a folder with adapters.safetensors + adapter_config.json (lmtune lora / mlx_lm.lora)\n"
    "  --temp T (0.0)  --top-p P (1.0)  --top-k K (0)  --min-p P (0.0)\n"
    "  --xtc-probability P (0.0)  --xtc-threshold P (0.1)\n"
    "  --seed N (0)                RNG seed\n"
    "  --max-kv-size N             rotating KV cache of N entries\n"
    "  --max-tokens, -m N          tokens per answer (256)\n"
    "  --system-prompt TEXT        a system message at the start of the conversation\n"
    "  --chat-template-config JSON extra chat-template variables\n"
    "  --device cpu|cuda  --dtype float32|bfloat16|float16\n"
    "  -h, --help                  show this help\n";

void print_help() {
  std::printf("The command list:\n- 'q' to exit\n- 'r' to reset the chat\n- 'h' to display these commands\n");
}

}  // namespace

int run_chat(int argc, char** argv) {
  LoadOptions lo;
  SamplerOptions so;
  GenerationConfig gc;
  gc.max_tokens = 256;
  uint64_t seed = 0;
  int64_t max_kv_size = 0;
  std::optional<std::string> system_prompt;
  std::string template_config;
  try {
    Args a(argc, argv);
    while (a.next()) {
      if (a.is("-h", "--help")) {
        std::fputs(kUsage, stdout);
        return 0;
      } else if (read_load_flag(a, lo) || read_sampler_flag(a, so)) {
        // read by the shared flag readers (runtime_setup.h)
      } else if (a.is("--seed")) seed = uint64_t(a.int_value());
      else if (a.is("--max-kv-size")) max_kv_size = a.int_value();
      else if (a.is("--max-tokens", "-m")) gc.max_tokens = a.int_value();
      else if (a.is("--system-prompt")) system_prompt = a.value();
      else if (a.is("--chat-template-config")) template_config = a.value();
      else a.unknown();
    }
    if (lo.model.empty()) throw UsageError("--model is required (a local model folder)");
    if (max_kv_size < 0 || (max_kv_size > 0 && max_kv_size <= 4))
      throw UsageError("--max-kv-size must be more than the 4 kept sink tokens");
  } catch (const UsageError& e) {
    std::fprintf(stderr, "lmtune chat: error: %s (see lmtune chat --help)\n", e.what());
    return 2;
  }
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
  Sampler sampler(so, seed);
  DenseKVCache cache(lm.model->config(), lm.model->device(), lm.model->dtype(), 1, max_kv_size);
  Generator gen(*lm.model, cache, sampler);

  auto fresh = [&] {
    nlohmann::ordered_json m = nlohmann::ordered_json::array();
    if (system_prompt) m.push_back({{"role", "system"}, {"content", *system_prompt}});
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

}  // namespace lmtune::cli
