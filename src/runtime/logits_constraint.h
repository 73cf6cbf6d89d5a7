// LogitsConstraint: a rule over which tokens may come next (a grammar, a JSON schema), applied by the
// Sampler after the logits processors and before any filter, then told the chosen token.
#pragma once
#include <cstdint>
#include <vector>

namespace lmtune {

class LogitsConstraint {
 public:
  virtual ~LogitsConstraint() = default;
  // logits f32 (n_vocab): sets every token the constraint forbids now to -inf. When the constrained
  // text is complete only the end-of-sequence tokens stay allowed. Throws when no token is allowed.
  virtual void mask(std::vector<float>& logits) = 0;
  // The token the sampler chose (one mask() allowed); advances the constraint's state.
  virtual void accept(int32_t token) = 0;
  // The constrained text is complete: nothing but an end-of-sequence token may follow.
  virtual bool complete() const = 0;
};

}  // namespace lmtune
