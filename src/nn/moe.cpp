#include "nn/moe.h"

#include <algorithm>
#include <limits>
#include <numeric>

#include "core/error.h"

namespace lmtune::nn {

std::vector<int32_t> MoeMlp::choose(const std::vector<float>& probs, int64_t rows, int64_t n_expert, int64_t k) {
  std::vector<int32_t> out(size_t(rows * k));
  std::vector<int32_t> order(static_cast<size_t>(n_expert));
  for (int64_t r = 0; r < rows; ++r) {
    const float* p = probs.data() + r * n_expert;
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [p](int32_t a, int32_t b) { return p[a] > p[b]; });
    std::copy(order.begin(), order.begin() + k, out.begin() + r * k);
  }
  return out;
}

Tensor MoeMlp::forward(const Tensor& x) const {
  const int64_t C = x.dim(x.ndim() - 1), N = x.numel() / C, E = int64_t(experts.size());
  LMT_CHECK(E > 0 && top_k >= 1 && top_k <= E, "[moe] top_k ", top_k, " of ", E, " experts");
  const Tensor xf = ag::reshape(x, {N, C});
  // Routing probabilities in f32, as transformers and mlx-lm compute them.
  const Tensor logits = ag::cast(router.forward(xf), DType::f32);  // (N, E)
  const Tensor probs = ag::softmax(logits);
  std::vector<float> host = ops::to(probs.detach(), Device::cpu).to_f32_vector();
  const std::vector<int32_t> chosen = choose(host, N, E, top_k);
  // The routing weights (N, E), zero off the chosen experts. Renormalized over the chosen k, they are
  // the softmax of the logits with the others masked out (the same values and gradients).
  std::vector<float> mask(size_t(N * E), norm_topk ? -std::numeric_limits<float>::infinity() : 0.f);
  std::vector<std::vector<int32_t>> rows_of(static_cast<size_t>(E));
  for (int64_t r = 0; r < N; ++r)
    for (int64_t j = 0; j < top_k; ++j) {
      const int32_t e = chosen[size_t(r * top_k + j)];
      mask[size_t(r * E + e)] = norm_topk ? 0.f : 1.f;
      rows_of[size_t(e)].push_back(int32_t(r));
    }
  const Tensor m = ops::to(Tensor::from_f32(mask, {N, E}), x.device());
  Tensor w = norm_topk ? ag::softmax(ag::add(logits, m)) : ag::mul(probs, m);
  w = ag::cast(w, x.dtype());
  const Tensor ones = ops::full({1, C}, 1.f, x.dtype(), x.device());
  Tensor out;
  for (int64_t e = 0; e < E; ++e) {
    const std::vector<int32_t>& rows = rows_of[size_t(e)];
    if (rows.empty()) continue;
    const int64_t n = int64_t(rows.size());
    const Tensor idx = ops::to(Tensor::from_i32(rows, {n}), x.device());
    Tensor y = experts[size_t(e)].forward(ag::gather_rows(xf, idx), false);  // (n, C)
    const Tensor we = ag::gather_rows(ag::slice_last(w, e, 1), idx);         // (n, 1)
    y = ag::mul(y, ag::matmul(we, ones));                                    // each row times its weight
    const Tensor placed = ag::scatter_rows(y, idx, N);                       // (N, C)
    out = out.defined() ? ag::add(out, placed) : placed;
  }
  if (!out.defined()) out = ops::zeros({N, C}, x.dtype(), x.device());
  return ag::reshape(out, x.shape());
}

}  // namespace lmtune::nn
