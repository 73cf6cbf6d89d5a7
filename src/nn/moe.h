// A mixture-of-experts MLP (mixtral, qwen3_moe): a router picks each token's top-k experts from a
// softmax over its logits, and the token's output is the sum of those experts' gated-MLP outputs,
// each times its routing weight (renormalized over the chosen k when norm_topk). This is the
// correct, general path: each expert runs on the rows routed to it (gathered, then scattered back
// with their gradients); the choice itself is made on the host. Dense experts take one gather, grouped
// products (ops::grouped_matmul) and one scatter.
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
  // Whether every expert's three layers are dense, of dtype dt, without adapter or bias: then one
  // gather, grouped products and one scatter (forward_grouped) instead of a loop over the experts.
  bool grouped(DType dt) const;
  // Each row's chosen experts, best first; among equal probabilities the lower index first.
  static std::vector<int32_t> choose(const std::vector<float>& probs, int64_t rows, int64_t n_expert, int64_t k);

 private:
  // xf (N, C); w (N, E) the routing weights in x's dtype; rows_of[e] the rows routed to expert e;
  // ones (1, C). Both give (N, C).
  Tensor forward_grouped(const Tensor& xf, const Tensor& w, const std::vector<std::vector<int32_t>>& rows_of,
                         const Tensor& ones) const;
  Tensor forward_each(const Tensor& xf, const Tensor& w, const std::vector<std::vector<int32_t>>& rows_of,
                      const Tensor& ones) const;
};

}  // namespace lmtune::nn
