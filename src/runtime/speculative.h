// Speculative decoding (mlx-lm's speculative_generate_step): a small draft model proposes up to
// num_draft_tokens tokens one at a time, the model scores them all in one forward, and the longest
// prefix where the model's own choice equals the draft is kept, plus the model's token after it.
// Both caches are trimmed back to the kept tokens. Every emitted token is the model's choice, so
// at temp 0 the output equals plain greedy generate's. Batch 1; caches must be trimmable.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "models/model.h"
#include "runtime/generate.h"
#include "runtime/kv_cache.h"
#include "runtime/sampler.h"

namespace lmtune {

struct SpeculativeStats {
  GenerationStats gen;
  int64_t drafted = 0;   // draft tokens the model scored
  int64_t accepted = 0;  // of them, emitted (the model chose the same token)
  double acceptance_rate() const { return drafted > 0 ? double(accepted) / double(drafted) : 0.0; }
};

class SpeculativeGenerator {
 public:
  // Everything must outlive the generator. Throws unless num_draft_tokens >= 1 and neither cache
  // rotates (a wrapped rotating cache cannot be trimmed back). The draft may have a different
  // n_vocab (padded embeddings); it proposes only ids below both models' n_vocab.
  SpeculativeGenerator(Model& model, DenseKVCache& cache, Model& draft, DenseKVCache& draft_cache, Sampler& sampler,
                       int64_t num_draft_tokens);

  // Prefills `prompt` into both caches (all but its last token), then decodes until an EOS id,
  // cfg.max_tokens or on_token returning false, as Generator::generate. on_token(id, from_draft).
  SpeculativeStats generate(const std::vector<int32_t>& prompt, const GenerationConfig& cfg,
                            const std::function<bool(int32_t, bool)>& on_token = {});

 private:
  // Feeds ids to m (appending to `fed`) and returns host f32 logits (T, n_vocab) of the last
  // `n_out` positions, flattened.
  std::vector<float> feed(Model& m, DenseKVCache& c, std::vector<int32_t>& fed, const int32_t* ids, int64_t n,
                          int64_t n_out);
  Model& model_;
  DenseKVCache& cache_;
  Model& draft_;
  DenseKVCache& draft_cache_;
  Sampler& sampler_;
  int64_t num_draft_;
  std::vector<int32_t> fed_, draft_fed_;  // the tokens each cache holds, in order
};

}  // namespace lmtune
