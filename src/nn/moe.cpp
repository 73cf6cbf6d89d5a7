#include "nn/moe.h"

#include <algorithm>
#include <climits>
#include <limits>
#include <numeric>

#include "core/error.h"
#include "core/runtime_config.h"

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

bool MoeMlp::grouped(DType dt) const {
  if (!runtime_config().moe_grouped) return false;
  for (const GatedMlp& m : experts)
    for (const LinearRef* l : {&m.gate, &m.up, &m.down}) {
      if (!l->weight) return false;  // a fused gate_up
      const Linear d = l->get();
      if (!d.plain() || d.weight.dtype() != dt) return false;
    }
  return true;
}

// The rows each expert was chosen for, in order of expert (then token): one gather, each of the
// three products for all experts at once, each row times its weight, one scatter that sums a
// token's k rows (in f32, in the order of the experts, as the loop below does).
Tensor MoeMlp::forward_grouped(const Tensor& xf, const Tensor& w, const std::vector<std::vector<int32_t>>& rows_of,
                               const Tensor& ones) const {
  const int64_t N = xf.dim(0), E = int64_t(experts.size());
  LMT_CHECK(N * E <= INT32_MAX, "[moe] ", N, " rows x ", E, " experts exceed the gather's 32-bit row ids");
  std::vector<int32_t> order, weight_at;  // the token of each sorted row; its entry of w (N * E)
  std::vector<int64_t> offsets{0};
  for (int64_t e = 0; e < E; ++e) {
    for (int32_t r : rows_of[size_t(e)]) {
      order.push_back(r);
      weight_at.push_back(int32_t(r * E + e));
    }
    offsets.push_back(int64_t(order.size()));
  }
  const int64_t R = int64_t(order.size());
  if (R == 0) return {};
  const Tensor idx = ops::to(Tensor::from_i32(order, {R}), xf.device());
  const Tensor widx = ops::to(Tensor::from_i32(weight_at, {R}), xf.device());
  std::vector<Tensor> wg, wu, wd;
  for (const GatedMlp& m : experts) {
    wg.push_back(*m.gate.weight);
    wu.push_back(*m.up.weight);
    wd.push_back(*m.down.weight);
  }
  const Tensor xs = ag::gather_rows(xf, idx);  // (R, C)
  const Tensor g = ag::grouped_linear(xs, wg, offsets), u = ag::grouped_linear(xs, wu, offsets);
  const Activation act = experts[0].act;
  const Tensor h = act == Activation::silu ? ag::swiglu(g, u) : ag::mul(ag::gelu_tanh(g), u);
  Tensor y = ag::grouped_linear(h, wd, offsets);                        // (R, C)
  const Tensor we = ag::gather_rows(ag::reshape(w, {N * E, 1}), widx);  // (R, 1)
  y = ag::mul(y, ag::matmul(we, ones));                                 // each row times its weight
  return ag::scatter_rows(y, idx, N);
}

// Each expert's MLP on its own gathered rows, scattered back one expert at a time: any layer
// (quantized, adapted, fused gate_up).
Tensor MoeMlp::forward_each(const Tensor& xf, const Tensor& w, const std::vector<std::vector<int32_t>>& rows_of,
                            const Tensor& ones) const {
  const int64_t N = xf.dim(0);
  Tensor out;
  for (size_t e = 0; e < experts.size(); ++e) {
    const std::vector<int32_t>& rows = rows_of[e];
    if (rows.empty()) continue;
    const int64_t n = int64_t(rows.size());
    const Tensor idx = ops::to(Tensor::from_i32(rows, {n}), xf.device());
    Tensor y = experts[e].forward(ag::gather_rows(xf, idx), false);            // (n, C)
    const Tensor we = ag::gather_rows(ag::slice_last(w, int64_t(e), 1), idx);  // (n, 1)
    y = ag::mul(y, ag::matmul(we, ones));                                      // each row times its weight
    const Tensor placed = ag::scatter_rows(y, idx, N);                         // (N, C)
    out = out.defined() ? ag::add(out, placed) : placed;
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
  Tensor out = grouped(x.dtype()) ? forward_grouped(xf, w, rows_of, ones) : forward_each(xf, w, rows_of, ones);
  if (!out.defined()) out = ops::zeros({N, C}, x.dtype(), x.device());
  return ag::reshape(out, x.shape());
}

}  // namespace lmtune::nn
