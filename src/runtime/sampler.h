// Token selection as mlx-lm's make_logits_processors + make_sampler: penalties on the raw logits
// (repetition, presence, frequency, over a recent-token window), then log-softmax, then the
// filters top-p -> min-p -> XTC -> top-k, then a categorical draw at temperature (temp 0: argmax).
// Runs on the host on one row of logits; a seeded RNG makes sampled output reproducible.
#pragma once
#include <cstdint>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "runtime/logits_constraint.h"

namespace lmtune {

struct SamplerOptions {
  float temp = 0.f;
  float top_p = 1.f;  // applied only for 0 < top_p < 1
  int top_k = 0;      // 0 = off
  float min_p = 0.f;  // 0 = off
  int min_tokens_to_keep = 1;
  float xtc_probability = 0.f;
  float xtc_threshold = 0.1f;
  std::vector<int32_t> xtc_special_tokens;  // never cut by XTC (mlx-lm: "\n" ids and the EOS ids)
  // Logits processors; 0 = off. Each looks at the last *_context_size tokens of the history.
  float repetition_penalty = 0.f;
  int repetition_context_size = 20;
  float presence_penalty = 0.f;
  int presence_context_size = 20;
  float frequency_penalty = 0.f;
  int frequency_context_size = 20;
  // OpenAI's / mlx-lm's logit_bias: added to the raw logits before the penalties. Ids outside the
  // vocabulary are ignored here (the server refuses them first).
  std::vector<std::pair<int32_t, float>> logit_bias;
  // Keep last_logprobs() after each sample() (the server's logprobs; costs one copy of the row).
  bool keep_logprobs = false;
};

class Sampler {
 public:
  Sampler(SamplerOptions opts, uint64_t seed);
  const SamplerOptions& options() const { return opts_; }
  // A constraint (JSON schema, forced tool call) masks the logits after the processors and before
  // the filters, and is told each chosen token. nullptr = none.
  void set_constraint(std::shared_ptr<LogitsConstraint> c) { constraint_ = std::move(c); }
  LogitsConstraint* constraint() const { return constraint_.get(); }

  // logits f32 (n_vocab), modified in place by the processors; history: every token so far
  // (prompt included), as mlx-lm's processors see it. Returns the chosen id.
  int32_t sample(std::vector<float>& logits, const std::vector<int32_t>& history);

  // The pieces, exposed for tests. Processors act on raw logits; filters on log-probs (a removed
  // token becomes -inf).
  void apply_penalties(std::vector<float>& logits, const std::vector<int32_t>& history) const;
  static void log_softmax(std::vector<float>& x);
  static void apply_top_p(std::vector<float>& logprobs, float top_p);
  static void apply_min_p(std::vector<float>& logprobs, float min_p, int min_tokens_to_keep);
  void apply_xtc(std::vector<float>& logprobs);  // draws one uniform number
  static void apply_top_k(std::vector<float>& logprobs, int top_k);
  static int32_t argmax(const std::vector<float>& x);
  int32_t categorical(const std::vector<float>& logprobs, float temp);

  // With keep_logprobs: the log-softmax of the last sample()'s logits after the processors (bias,
  // penalties) and before the filters and the temperature, as mlx-lm reports logprobs. Else empty.
  const std::vector<float>& last_logprobs() const { return last_logprobs_; }

 private:
  int32_t choose(std::vector<float>& logits);

  SamplerOptions opts_;
  std::shared_ptr<LogitsConstraint> constraint_;
  std::vector<float> last_logprobs_;
  std::mt19937_64 rng_;
};

}  // namespace lmtune
