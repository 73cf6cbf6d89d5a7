// A mixture-of-experts MLP (mixtral, qwen3_moe): a router picks each token's top-k experts from a
// softmax over its logits, and the token's output is the sum of those experts' gated-MLP outputs,
// each times its routing weight (renormalized over the chosen k when norm_topk). This is the
// correct, general path: each expert runs on the rows routed to it (gathered, then scattered back
// with their gradients); the choice itself is made on the host.
#pragma once
#include <vector>

#include "nn/mlp.h"

namespace lmtune::nn {

struct MoeMlp {
  LinearRef router;               // (n_expert, n_embd)
  std::vector<GatedMlp> experts;  // n_expert of them
  int64_t top_k = 2;
  bool norm_topk = true;

  // x (B, T, n_embd) -> (B, T, n_embd).
  Tensor forward(const Tensor& x) const;
  // Each row's chosen experts, best first; among equal probabilities the lower index first.
  static std::vector<int32_t> choose(const std::vector<float>& probs, int64_t rows, int64_t n_expert, int64_t k);
};

}  // namespace lmtune::nn
