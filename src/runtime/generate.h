// The generation loop (mlx-lm's generate_step / stream_generate): chunked prefill of the tokens
// the cache does not hold yet, then one token per step until an EOS id or max_tokens, with the
// prompt and generation speeds and the allocator's peak memory. Batch 1.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "models/model.h"
#include "runtime/decode_graph.h"
#include "runtime/kv_cache.h"
#include "runtime/sampler.h"
#include "tokenizer/tokenizer.h"

namespace lmtune {

struct GenerationConfig {
  int64_t max_tokens = 100;          // < 0: until an EOS id
  int64_t prefill_step_size = 2048;  // prompt tokens per forward during prefill
  std::vector<int32_t> eos_ids;      // stop ids; empty never stops early
  // Called after each prefill forward with (prompt tokens fed so far, prompt tokens), the last one
  // included (mlx-lm's prompt_progress_callback); returning false stops before the first token is
  // chosen (finish_reason "stop", no tokens). The server's SSE keepalives; a client gone stops it.
  std::function<bool(int64_t done, int64_t total)> on_prefill;
};

struct GenerationStats {
  int64_t prompt_tokens = 0;      // tokens prefilled by this call
  double prompt_tps = 0;          // prompt_tokens / (time to the first generated token)
  int64_t generation_tokens = 0;  // as mlx-lm counts them: the final EOS included
  double generation_tps = 0;      // generation_tokens / (time after the first token)
  double peak_memory_gb = 0;      // the model device's allocator peak, in 1e9 bytes
  std::string finish_reason;      // "stop" (an EOS id) or "length"
  std::vector<int32_t> tokens;    // generated ids, the EOS left out
};

// longrope (phi3): a cache holding `held` tokens made within original_max_position_embeddings (with
// the short factors) that n more tokens would take past it must be dropped, and the whole sequence
// run again with the long factors, as transformers' Phi3 prepare_inputs_for_generation does.
bool longrope_reruns(const ModelConfig& cfg, int64_t held, int64_t n);

class Generator {
 public:
  // model, cache and sampler must outlive the generator.
  Generator(Model& model, DenseKVCache& cache, Sampler& sampler);

  // Prefills `prompt` (the tokens after cached()), then decodes. on_token gets each generated
  // id except a final EOS, as soon as it is chosen; returning false stops (finish "stop").
  GenerationStats generate(const std::vector<int32_t>& prompt, const GenerationConfig& cfg,
                           const std::function<bool(int32_t)>& on_token = {});

  // The tokens whose keys and values the cache holds, in order (the last generated token is
  // chosen but not yet fed, as in mlx-lm).
  const std::vector<int32_t>& cached() const { return cached_; }
  // Keep the first n cached tokens (chat drops a tail that re-templating tokenizes differently);
  // false when the cache cannot trim (a wrapped rotating cache), then reset() is the way out.
  bool trim_to(int64_t n);
  void reset();

 private:
  Model& model_;
  DenseKVCache& cache_;
  Sampler& sampler_;
  std::vector<int32_t> cached_;
  std::vector<int32_t> history_;        // what the penalties see: every prompt and generated token
  std::unique_ptr<DecodeGraph> graph_;  // the recorded decode step, where the device has graphs
  bool graph_off_ = false;              // recording failed once: eager from then on
};

// The EOS ids mlx-lm stops on: config.json's and generation_config.json's eos_token_id (an int
// or a list), the tokenizer's eos token, and each extra (a token string or a decimal id).
std::vector<int32_t> collect_eos_ids(const std::string& model_dir, const Tokenizer& tokenizer,
                                     const std::vector<std::string>& extra = {});

// --model: a local folder with config.json, or a Hub repo id `org/name[@revision]` resolved into
// the huggingface_hub cache (io/hub.h).
std::string resolve_model_dir(const std::string& model);

// mlx-lm's prompt escapes: the two-character sequences \n and \t become a newline and a tab.
std::string unescape_prompt(const std::string& s);

}  // namespace lmtune
