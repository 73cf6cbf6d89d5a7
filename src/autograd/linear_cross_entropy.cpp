// The fused head + cross-entropy. Every product and reduction is an existing op (ops::linear,
// ops::cross_entropy and its backward, ops::gemm_into), so both backends run it unchanged; what is
// new is the order: a chunk's logits live only while its loss and dlogits are formed.
#include "autograd/linear_cross_entropy.h"

#include <algorithm>
#include <vector>

#include "core/error.h"

namespace lmtune::ag {

int64_t default_xent_chunk_rows(int64_t n_vocab, DType dt) {
  const int64_t budget = int64_t(256) << 20;
  const int64_t rows = budget / std::max<int64_t>(1, n_vocab * int64_t(dtype_size(dt)));
  // Whole tiles of the products: on the H200 a Qwen2-0.5B loss (8192 x 151,936, bf16) took
  // 12.96 ms in chunks of 832 rows against 9.48 in chunks of 768 (bench/bench_xent.cpp).
  if (rows >= 256) return rows / 256 * 256;
  if (rows >= 64) return rows / 64 * 64;
  return std::max<int64_t>(1, rows);
}

Tensor linear_cross_entropy(const Tensor& hidden, const HeadWeight& head, const Tensor& targets, int64_t chunk_rows) {
  const bool quantized = head.quantized();
  LMT_CHECK(hidden.ndim() == 2 && head.weight.ndim() == 2, "[linear_cross_entropy] hidden ", hidden.describe(),
            " and head ", head.weight.describe(), " must be (N, n_embd) and (n_vocab, n_embd)");
  const int64_t N = hidden.dim(0), C = hidden.dim(1), V = head.weight.dim(0);
  const Device dev = hidden.device();
  const DType dt = hidden.dtype();
  if (quantized) {
    ops::check_quantized(head.weight, head.scales, head.biases, head.format, "lm_head");
    LMT_CHECK(head.weight.dim(1) * 32 == C * head.format.bits && head.dense_dtype == dt,
              "[linear_cross_entropy] quantized head ", head.weight.describe(), " (", head.format.bits,
              " bits, dequantized to ", dtype_name(head.dense_dtype), ") for hidden ", hidden.describe());
  } else {
    LMT_CHECK(head.weight.dim(1) == C && head.weight.dtype() == dt, "[linear_cross_entropy] head ",
              head.weight.describe(), " for hidden ", hidden.describe());
  }
  LMT_CHECK(head.weight.device() == dev, "[linear_cross_entropy] head on ", device_name(head.weight.device()),
            ", hidden on ", device_name(dev));
  LMT_CHECK(targets.dtype() == DType::i32 && targets.numel() == N, "[linear_cross_entropy] targets ",
            targets.describe(), " for ", N, " rows (expected i32 (N))");
  LMT_CHECK(chunk_rows >= 0, "[linear_cross_entropy] chunk_rows must be >= 0, got ", chunk_rows);

  // The supervised rows, found on the host (the unfused loss counts them there too).
  Tensor tc = ops::to(targets, Device::cpu);
  const int32_t* t = tc.data<int32_t>();
  std::vector<int32_t> rows, row_targets;
  for (int64_t i = 0; i < N; ++i) {
    if (t[i] < 0) continue;
    LMT_CHECK(t[i] < V, "[linear_cross_entropy] target ", t[i], " at row ", i, " outside the vocabulary of ", V);
    rows.push_back(int32_t(i));
    row_targets.push_back(t[i]);
  }
  const int64_t n = int64_t(rows.size());
  const bool all_rows = n == N;
  const float inv_n = n > 0 ? 1.f / float(n) : 0.f;

  const bool gx = grad_enabled() && requires_grad(hidden);
  const bool gw = grad_enabled() && !quantized && requires_grad(head.weight);
  Tensor w = quantized ? ops::dequantize(head.weight, head.scales, head.biases, head.format, dt, "lm_head")
                       : head.weight.detach();  // (V, C)
  Tensor ids = all_rows ? Tensor() : Tensor::from_i32(rows, {n});
  Tensor x = all_rows ? hidden.detach() : ops::embedding(hidden.detach(), ids);  // (n, C): the supervised rows
  Tensor tg = ops::to(all_rows ? tc : Tensor::from_i32(row_targets, {n}), dev);

  Tensor loss_rows = ops::zeros({std::max<int64_t>(n, 1)}, DType::f32, dev);  // f32 (n)
  Tensor dx = gx ? ops::empty({n, C}, dt, dev) : Tensor();                    // (n, C)
  Tensor dw = gw ? ops::zeros({V, C}, dt, dev) : Tensor();                    // (V, C)
  const int64_t step = chunk_rows > 0 ? chunk_rows : default_xent_chunk_rows(V, dt);
  // The gradient of the mean for each supervised row, sliced for each chunk.
  Tensor dloss = gx || gw ? ops::full({std::min(n, step)}, inv_n, DType::f32, dev) : Tensor();
  for (int64_t r0 = 0; r0 < n; r0 += step) {
    const int64_t r1 = std::min(n, r0 + step);
    Tensor xc = x.slice_rows(r0, r1), tgc = tg.slice_rows(r0, r1);
    Tensor dl;  // (r1 - r0, V)
    {
      Tensor logits = ops::linear(xc, w);  // (r1 - r0, V), freed at the end of this scope
      ops::CrossEntropyOut ce = ops::cross_entropy(logits, tgc);
      ops::copy_rows_into(loss_rows, r0, ce.loss);
      if (gx || gw) dl = ops::cross_entropy_backward(logits, tgc, ce.lse, dloss.slice_rows(0, r1 - r0));
    }
    if (gx) {
      Tensor dst = dx.slice_rows(r0, r1);
      ops::gemm_into(dst, dl, w, false, false, 1.f, 0.f);  // (r, V) @ (V, C)
    }
    if (gw) ops::gemm_into(dw, dl, xc, true, false, 1.f, 1.f);  // (V, r) @ (r, C), accumulated
  }
  Tensor total = ops::sum_all(loss_rows);  // the unsupervised rows' losses are 0, as the unfused kernel's
  Tensor loss = ops::scale(total, inv_n);
  if (!gx && !gw) return loss;
  return record("linear_cross_entropy", loss, {hidden, gw ? head.weight : Tensor()},
                [dx, dw, ids, all_rows, N, dt](const Tensor& d) {
                  // The stored gradients are those of a loss gradient of 1.
                  const float g = ops::item(d);
                  auto scaled = [g](const Tensor& t) { return g == 1.f ? t : ops::scale(t, g); };
                  Tensor dh, dwo;
                  if (dx.defined()) {
                    dh = scaled(dx);
                    if (!all_rows) dh = ops::cast(ops::embedding_backward(dh, ids, N), dt);  // rows back in place
                  }
                  if (dw.defined()) dwo = scaled(dw);
                  return std::vector<Tensor>{dh, dwo};
                });
}

}  // namespace lmtune::ag
