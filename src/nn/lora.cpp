// LoRA / DoRA forward. An f32 input (the CPU, an f32 model on a GPU) takes ag::lora_add: the two
// thin products against the f32 lora_a / lora_b, the scale as the second product's alpha and the
// sum written into the base output (beta = 1), with no (..., out) temporary. A 16-bit input (bf16
// on a GPU) takes the earlier path by default: x cast to f32 for the adapter (a temporary of
// ag::lora_down, which saves x itself and casts again in backward; layers reading one input share
// one forward cast), the products in f32, the (..., out) result cast back and added; so the
// parameter gradients come from f32 operands. LMTUNE_LORA_16BIT=1 sends 16-bit inputs through
// ag::lora_add too (products in the input's dtype with f32 accumulation; dA and dB still f32).
#include "nn/lora.h"

#include <cmath>
#include <random>

#include "core/error.h"
#include "core/runtime_config.h"
#include "nn/linear.h"

namespace lmtune::nn {

namespace {

// mlx.nn.Dropout: keep with probability 1 - p, scale kept values by 1 / (1 - p).
Tensor dropout_mask(const Shape& shape, float p, uint64_t seed, Device dev) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  std::vector<float> m(size_t(numel_of(shape)));
  float keep = 1.f / (1.f - p);
  for (float& v : m) v = u(rng) < 1.f - p ? keep : 0.f;
  return ops::to(Tensor::from_f32(m, shape), dev);
}

}  // namespace

Tensor dora_row_norms(const Tensor& weight, const Tensor& lora_a, const Tensor& lora_b, float scale) {
  ag::NoGradGuard no_grad;
  Tensor w = ops::cast(weight.detach(), DType::f32);  // (out, in)
  if (lora_a.defined() && lora_b.defined()) {
    // W + scale * lora_b^T @ lora_a^T: (out, r) @ (r, in)
    Tensor delta = ops::matmul(lora_b.detach(), lora_a.detach(), true, true);
    w = ops::axpby(w, delta, 1.f, scale);
  }
  Tensor sq = ops::sum_axis(ops::unary(UnaryOp::square, w), 1, DType::f32);  // (out)
  return ops::unary(UnaryOp::sqrt, sq);
}

Tensor dora_row_norms(const Linear& base, const LoraAdapter& a) {
  ag::NoGradGuard no_grad;
  const Tensor A = a.lora_a.detach(), B = a.lora_b.detach();  // f32 (in, r), (r, out)
  const int64_t r = A.dim(1), out = B.dim(1);
  Tensor w_sq = a.w_row_sq;
  if (!w_sq.defined()) {  // an adapter not made by make_lora_adapter: the base's squares now
    Tensor w = ops::cast(base.dense_weight().detach(), DType::f32);
    w_sq = ops::sum_axis(ops::unary(UnaryOp::square, w), 1, DType::f32);
  }
  // A^T as r rows of length in (the identity's product: exact), in the base's input dtype.
  std::vector<float> eye(size_t(r * r), 0.f);
  for (int64_t i = 0; i < r; ++i) eye[size_t(i * r + i)] = 1.f;
  Tensor at = ops::matmul(ops::to(Tensor::from_f32(eye, {r, r}), A.device()), A, false, true);
  const DType in_dt = base.quantized() ? base.dense_dtype : base.weight.dtype();
  Tensor wa_t = ops::cast(base.base(ops::cast(at, in_dt), false), DType::f32);  // (r, out) = (W A)^T
  Tensor cross = ops::sum_to_shape(ops::mul(B, wa_t), {out});                   // W_i . D_i
  Tensor gram = ops::matmul(A, A, true, false);                                 // (r, r)
  Tensor dd = ops::sum_to_shape(ops::mul(B, ops::matmul(gram, B)), {out});      // ||D_i||^2
  Tensor sq = ops::axpby(ops::axpby(w_sq, cross, 1.f, 2.f * a.scale), dd, 1.f, a.scale * a.scale);
  return ops::unary(UnaryOp::sqrt, sq);
}

LoraAdapter make_lora_adapter(const Tensor& weight, AdapterKind kind, int64_t rank, float scale, float dropout,
                              uint64_t seed) {
  LMT_CHECK(weight.ndim() == 2, "[lora] base weight must be (out, in), got ", weight.describe());
  LMT_CHECK(rank > 0, "[lora] rank must be positive, got ", rank);
  LMT_CHECK(dropout >= 0.f && dropout < 1.f, "[lora] dropout must be in [0, 1), got ", dropout);
  int64_t out = weight.dim(0), in = weight.dim(1);
  float bound = 1.f / std::sqrt(float(in));
  LoraAdapter a;
  a.kind = kind;
  a.scale = scale;
  a.dropout = dropout;
  a.lora_a = ag::param(ops::uniform({in, rank}, seed, -bound, bound, DType::f32, weight.device()));
  a.lora_b = ag::param(ops::zeros({rank, out}, DType::f32, weight.device()));
  if (kind == AdapterKind::dora) {
    a.m = ag::param(dora_row_norms(weight, {}, {}, scale));
    a.w_row_sq = ops::unary(UnaryOp::square, a.m.detach());
  }
  return a;
}

const Tensor& AdapterInput::f32() {
  if (!f32_.defined()) f32_ = ops::cast(x.detach(), DType::f32);
  return f32_;
}

Tensor lora_forward(const Tensor& x, const Linear& base, const LoraAdapter& a, AdapterInput* shared) {
  const int64_t in = base.in_features(), out_dim = base.out_features();
  LMT_CHECK(a.lora_a.defined() && a.lora_b.defined(), "[lora] adapter without lora_a / lora_b");
  LMT_CHECK(a.lora_a.dim(0) == in && a.lora_b.dim(1) == out_dim && a.lora_a.dim(1) == a.lora_b.dim(0), "[lora] lora_a ",
            a.lora_a.describe(), " and lora_b ", a.lora_b.describe(), " do not fit a (", out_dim, ", ", in, ") weight");
  bool dora = a.kind == AdapterKind::dora;
  DType dt = x.dtype();
  LMT_CHECK(!shared || shared->x.raw() == x.raw(), "[lora] shared input cast made for another tensor");
  const RuntimeConfig& rc = runtime_config();
  const bool dropout = a.dropout > 0.f && ag::grad_enabled();
  if (!dora && !dropout && rc.lora_fused && rc.lora_linear && dt == DType::f32 && !base.quantized() &&
      a.lora_a.dtype() == DType::f32 && a.lora_b.dtype() == DType::f32 && base.weight.dtype() == DType::f32 &&
      (!base.bias.defined() || base.bias.dtype() == DType::f32)) {
    Tensor out = ag::lora_linear(x, base.weight, base.bias, a.lora_a, a.lora_b, a.scale);
    if (out.defined()) return out;  // else (no such kernel on this device) the nodes below
  }
  // DoRA adds the bias after the magnitude rescaling, so its base product has none.
  Tensor y = base.base(x, !dora);
  Tensor mask;  // f32 (..., in)
  if (dropout) {
    uint64_t seed = a.dropout_seed ? (*a.dropout_seed)++ : 0x5eedull;
    mask = dropout_mask(x.shape(), a.dropout, seed, x.device());
  }
  Tensor out;
  if (rc.lora_fused && (dt == DType::f32 || (rc.lora_16bit && x.is_cuda()))) {
    out = ag::lora_add(y, x, a.lora_a, a.lora_b, a.scale, mask);  // into y: two products, no (..., out) temporary
  } else {
    Tensor xa = ag::lora_down(x, a.lora_a, mask, shared ? shared->f32() : Tensor());  // f32 (..., r)
    Tensor z = ag::matmul(xa, a.lora_b);                                              // f32 (..., out)
    out = ag::add(y, ag::cast(ag::scale(z, a.scale), dt));
  }
  if (!dora) return out;
  LMT_CHECK(a.m.defined() && a.m.numel() == out_dim, "[dora] magnitude m missing or of the wrong size");
  // m / stop_gradient(||W + scale B^T A^T||_row): the denominator carries no gradient.
  Tensor inv = ops::div(ops::full({out_dim}, 1.f, DType::f32, x.device()), dora_row_norms(base, a));
  Tensor norm_scale = ag::mul(a.m, inv);  // f32 (out)
  out = ag::mul(out, ag::cast(norm_scale, dt));
  if (base.bias.defined()) out = ag::add(out, base.bias);
  return out;
}

}  // namespace lmtune::nn
