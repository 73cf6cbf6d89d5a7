// `lmtune generate`: mlx_lm.generate's flags, defaults and output. The prompt goes through the
// chat template (unless --ignore-chat-template or the tokenizer has none), the text streams to
// stdout, and with --verbose (the default) the prompt / generation speeds and peak memory follow.
// --draft-model decodes speculatively (runtime/speculative.h); --prompt-cache-file continues a
// cache written by cache_prompt (runtime/prompt_cache_file.h) with the new prompt.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli_commands.h"
#include "core/error.h"
#include "runtime/generate.h"
#include "runtime/prompt_cache_file.h"
#include "runtime/speculative.h"
#include "runtime_setup.h"
#include "tokenizer/streaming_detokenizer.h"

namespace lmtune::cli {

namespace {

struct GenerateOptions {
  LoadOptions load;
  SamplerOptions sampler;
  GenerationConfig gen;
  std::string prompt = "hello";
  std::optional<std::string> system_prompt, prefill_response;
  std::optional<int64_t> seed;
  bool ignore_chat_template = false, verbose = true;
  std::string chat_template_config;
  std::vector<std::string> extra_eos_token;
  int64_t max_kv_size = 0;
  KVQuantOptions kv;
  std::optional<std::string> prompt_cache_file, draft_model;
  int64_t num_draft_tokens = 3;
};

void declare(Options& t, GenerateOptions& o) {
  add_model_options(t, o.load, kModelHelp);
  t.add("--prompt, -p", &o.prompt, "TEXT", "the message; '-' reads stdin; \\n and \\t are unescaped");
  t.add("--system-prompt", &o.system_prompt, "TEXT", "a system message before the prompt");
  t.add("--prefill-response", &o.prefill_response, "TEXT",
        "start the assistant's answer with TEXT (continue_final_message)");
  t.add("--max-tokens, -m", &o.gen.max_tokens, "N", "tokens to generate");
  add_sampler_options(t, o.sampler);
  t.add("--seed", &o.seed, "N", "RNG seed").default_text("random");
  t.add("--ignore-chat-template", &o.ignore_chat_template, "", "encode the prompt as is");
  t.add("--chat-template-config", &o.chat_template_config, "JSON",
        "extra chat-template variables, e.g. '{\"enable_thinking\": false}'");
  t.add("--extra-eos-token", &o.extra_eos_token, "T", "more stop tokens (token strings or ids)");
  t.add("--verbose", &o.verbose, "BOOL", "print the frame and statistics (yes/no, true/false, 1/0)").str2bool();
  t.add("--max-kv-size", &o.max_kv_size, "N", "rotating KV cache of N entries, 4 sink tokens kept; 0 = unbounded");
  add_kv_quant_options(t, o.kv);
  t.add("--prompt-cache-file", &o.prompt_cache_file, "FILE",
        "continue a prompt cache written by `lmtune cache_prompt` (or mlx_lm.cache_prompt): the prompt is "
        "appended to the cached one; --model defaults to the file's");
  t.add("--draft-model", &o.draft_model, "MODEL",
        "a smaller model with the same tokenizer that drafts tokens for speculative decoding");
  t.add("--num-draft-tokens", &o.num_draft_tokens, "N", "tokens the draft model proposes per step");
  t.group("lmtune's additions");
  add_penalty_options(t, o.sampler);
  t.add("--prefill-step-size", &o.gen.prefill_step_size, "N", "prompt tokens per prefill step");
  add_device_options(t, o.load);
}

// --prompt-cache-file: mlx-lm takes --model from the file's metadata when it is not given and
// refuses another model; the file's own eos_token (cache_prompt --eos-token) joins the stop ids.
void open_prompt_cache(GenerateOptions& o) {
  namespace fs = std::filesystem;
  PromptCacheInfo info = read_prompt_cache_info(*o.prompt_cache_file);
  auto it = info.metadata.find("model");
  const std::string made_with = it == info.metadata.end() ? "" : it->second;
  if (o.load.model.empty()) {
    if (made_with.empty())
      throw UsageError("--model is required: the prompt cache file " + *o.prompt_cache_file +
                       " does not name its model (metadata 'model')");
    o.load.model = made_with;
  } else if (!made_with.empty() && made_with != o.load.model) {
    std::error_code ec;
    if (!fs::equivalent(o.load.model, made_with, ec))
      throw UsageError("--model " + o.load.model + " is not the model the prompt cache file " + *o.prompt_cache_file +
                       " was made with (" + made_with + ")");
  }
  auto tc = info.metadata.find("tokenizer_config");
  if (tc != info.metadata.end()) {
    nlohmann::json j = nlohmann::json::parse(tc->second, nullptr, false);
    if (j.is_object() && j.contains("eos_token") && j["eos_token"].is_string())
      o.extra_eos_token.push_back(j["eos_token"].get<std::string>());
  }
  if (info.kv_bits > 0) {  // as mlx-lm: flags that disagree with a quantized file are errors
    if (o.kv.kv_bits && *o.kv.kv_bits != info.kv_bits)
      throw UsageError("--kv-bits " + std::to_string(*o.kv.kv_bits) + " does not match the prompt cache file's " +
                       std::to_string(info.kv_bits));
    if (o.kv.kv_group_size != info.kv_group_size)
      throw UsageError("--kv-group-size " + std::to_string(o.kv.kv_group_size) +
                       " does not match the prompt cache file's " + std::to_string(info.kv_group_size));
    o.kv.kv_bits = info.kv_bits;
  }
}

int generate(GenerateOptions& o) {
  LoadOptions& lo = o.load;
  SamplerOptions& so = o.sampler;
  GenerationConfig& gc = o.gen;
  std::string prompt = o.prompt;
  const std::string& template_config = o.chat_template_config;
  nlohmann::ordered_json template_kwargs = nlohmann::ordered_json::object();
  if (!template_config.empty()) {
    template_kwargs = nlohmann::ordered_json::parse(template_config, nullptr, false);
    LMT_CHECK(template_kwargs.is_object(), "--chat-template-config must be a JSON object, got: ", template_config);
  }
  const bool using_cache = o.prompt_cache_file.has_value();
  if (using_cache) open_prompt_cache(o);
  if (lo.model.empty()) throw UsageError("--model is required (a local model folder or a Hub repo id)");
  LoadedModel lm = load_for_generation(lo);
  const Tokenizer& tok = lm.chat->tokenizer();

  prompt = unescape_prompt(prompt);
  if (prompt == "-") {
    std::ostringstream ss;
    ss << std::cin.rdbuf();
    prompt = ss.str();
  }
  std::vector<int32_t> ids;
  if (!o.ignore_chat_template && !tok.chat_templates().empty()) {
    nlohmann::ordered_json messages = nlohmann::ordered_json::array();
    if (o.system_prompt) messages.push_back({{"role", "system"}, {"content", *o.system_prompt}});
    messages.push_back({{"role", "user"}, {"content", prompt}});
    ChatTemplateOptions opts;
    if (o.prefill_response) {
      messages.push_back({{"role", "assistant"}, {"content", *o.prefill_response}});
      opts.continue_final_message = "content";
    } else {
      opts.add_generation_prompt = true;
    }
    opts.kwargs = template_kwargs;
    std::string text = lm.chat->render(messages, opts);
    if (using_cache) {
      // As mlx-lm: the cache holds the templated prefix, so only the text from the final message's
      // content on is new; it is found by rendering a marker in that content's place.
      messages.back()["content"] = "<query>";
      const std::string marked = lm.chat->render(messages, opts);
      const size_t at = marked.find("<query>");
      LMT_CHECK(at != std::string::npos, "the chat template drops the message content; cannot continue ",
                *o.prompt_cache_file);
      ids = tok.encode(text.substr(at), false);
    } else {
      // As mlx-lm: no second BOS when the template already starts with it.
      bool add_special = tok.bos_token().empty() || text.rfind(tok.bos_token(), 0) != 0;
      ids = tok.encode(text, add_special);
    }
  } else {
    ids = tok.encode(prompt, true);  // with a cache too, as mlx-lm (add_special_tokens when untemplated)
  }

  gc.eos_ids = collect_eos_ids(lm.dir, tok, o.extra_eos_token);
  so.xtc_special_tokens = tok.encode("\n", false);
  so.xtc_special_tokens.insert(so.xtc_special_tokens.end(), gc.eos_ids.begin(), gc.eos_ids.end());
  Sampler sampler(so, o.seed ? uint64_t(*o.seed) : std::random_device{}());
  DenseKVCache cache(lm.model->config(), lm.model->device(), lm.model->dtype(), 1, o.max_kv_size);
  cache.set_quantization(kv_quantization(o.kv, lm.model->config().head_dim));
  if (using_cache) (void)load_prompt_cache(*o.prompt_cache_file, cache);
  // As Hugging Face's tokenizers warn: a prompt past the trained context still runs (mlx-lm runs it
  // silently), but its output may degrade and the prefill grows with the square of the length.
  const int64_t context = lm.model->config().max_position_embeddings;
  const int64_t prompt_len = cache.offset() + int64_t(ids.size());
  if (prompt_len > context)
    std::fprintf(stderr,
                 "Warning: the prompt is %lld tokens, longer than the model's context of %lld "
                 "(max_position_embeddings in %s/config.json): positions past it were never trained, so the "
                 "output may degrade, and the prompt takes time quadratic in its length to process.\n",
                 (long long)prompt_len, (long long)context, lm.dir.c_str());

  StreamingDetokenizer detok(tok);
  std::string text;
  if (o.verbose) std::printf("==========\n");
  std::fflush(stdout);
  auto on_token = [&](int32_t id) {
    std::string piece = detok.push(id);
    if (o.verbose && !piece.empty()) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
    text += piece;
    return true;
  };
  GenerationStats st;
  std::optional<SpeculativeStats> spec;
  if (o.draft_model) {
    LoadOptions dl = lo;
    dl.model = *o.draft_model;
    dl.adapter_path.clear();
    LoadedModel draft = load_for_generation(dl);
    const int32_t nv = tok.vocab_size(), dv = draft.chat->tokenizer().vocab_size();
    if (nv != dv)
      throw UsageError("--draft-model " + *o.draft_model + ": its tokenizer has " + std::to_string(dv) +
                       " tokens, the model's has " + std::to_string(nv) + " (the draft must share the tokenizer)");
    DenseKVCache dcache(draft.model->config(), draft.model->device(), draft.model->dtype());
    dcache.set_quantization(kv_quantization(o.kv, draft.model->config().head_dim));
    SpeculativeGenerator gen(*lm.model, cache, *draft.model, dcache, sampler, o.num_draft_tokens);
    spec = gen.generate(ids, gc, [&](int32_t id, bool) { return on_token(id); });
    st = spec->gen;
  } else {
    Generator gen(*lm.model, cache, sampler);
    st = gen.generate(ids, gc, on_token);
  }
  std::string rest = detok.finish();
  text += rest;
  if (!o.verbose) {
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
  if (spec)  // lmtune's addition (mlx-lm prints no acceptance figure)
    std::printf("Draft: %lld of %lld proposed tokens accepted (%.1f%%)\n", (long long)spec->accepted,
                (long long)spec->drafted, 100.0 * spec->acceptance_rate());
  return 0;
}
}  // namespace

int run_generate(int argc, char** argv) {
  GenerateOptions o;
  Options t("generate", "lmtune generate --model MODEL [options]",
            "Generate text from a prompt (mlx_lm.generate's flags and output).");
  declare(t, o);
  return run_with_options(t, argc, argv, [&] {
    if (o.load.model.empty() && !o.prompt_cache_file)
      throw UsageError("--model is required (a local model folder or a Hub repo id)");
    if (o.draft_model && o.num_draft_tokens < 1)
      throw UsageError("--num-draft-tokens must be at least 1, got " + std::to_string(o.num_draft_tokens));
    if (o.draft_model && o.max_kv_size > 0)
      throw UsageError(
          "--max-kv-size cannot be combined with --draft-model: speculative decoding trims the cache "
          "back after a rejected draft, which a rotating cache cannot do once it wraps");
    if (o.prompt_cache_file && o.max_kv_size > 0)
      throw UsageError("--max-kv-size cannot be combined with --prompt-cache-file: the file's cache is not rotating");
    if (o.prompt_cache_file && o.draft_model)
      throw UsageError(
          "--draft-model cannot be combined with --prompt-cache-file: the file holds no cache for the "
          "draft model and not the cached tokens to rebuild one");
    if (o.max_kv_size < 0 || (o.max_kv_size > 0 && o.max_kv_size <= 4))
      throw UsageError("--max-kv-size must be more than the 4 kept sink tokens");
    // mlx-lm loops until n == max_tokens, so -5 never stops and 0 still prints a token: refused
    if (o.gen.max_tokens <= 0)
      throw UsageError("--max-tokens must be a positive number of tokens, got " + std::to_string(o.gen.max_tokens));
    (void)kv_quantization(o.kv);  // the flags' own checks before loading; head_dim's after
    return generate(o);
  });
}

}  // namespace lmtune::cli
