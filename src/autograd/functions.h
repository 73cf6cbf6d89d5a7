// Differentiable ops: each runs the ops/ forward and records its backward rule.
#pragma once
#include "autograd/tape.h"
#include "ops/ops.h"

namespace lmtune::ag {

Tensor reshape(const Tensor& x, const Shape& shape);
Tensor cast(const Tensor& x, DType dt);
Tensor add(const Tensor& a, const Tensor& b);  // b may broadcast over a's leading axes
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& x, float s);
Tensor add_scalar(const Tensor& x, float s);                   // x + s, rounded to x's dtype
Tensor slice_last(const Tensor& x, int64_t begin, int64_t n);  // columns [begin, begin + n) of the last axis
// Rows ids i32 (n) of x (R, D) -> (n, D), and its reverse: y (n, D) added into zeros (rows, D) at
// rows ids (repeats sum). A mixture of experts' gather and scatter (embedding's ops, named apart).
Tensor gather_rows(const Tensor& x, const Tensor& ids);
Tensor scatter_rows(const Tensor& y, const Tensor& ids, int64_t rows);
Tensor silu(const Tensor& x);
Tensor gelu_tanh(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sum(const Tensor& x);   // f32 scalar
Tensor mean(const Tensor& x);  // f32 scalar
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias = {});
// x (R, in)'s rows in consecutive groups, each through its own ws[g] (out, in) (ops::grouped_matmul):
// a mixture of experts' layers on rows sorted by expert. Gradients to x and to each weight that wants one.
Tensor grouped_linear(const Tensor& x, const std::vector<Tensor>& ws, const std::vector<int64_t>& offsets);
// LoRA's down projection z = (cast(x, a.dtype) * mask) @ a: x (..., in) in any float dtype,
// a (in, r), mask (..., in) in a's dtype or undefined; z (..., r) in a's dtype. It saves x itself
// (shared storage), never its cast: backward casts x again to form da = cast(x)^T dz and returns
// dx = (dz a^T) * mask in x's dtype. x_cast, when given, is cast(x, a.dtype) made by the caller
// for several adapters reading the same x; forward reads it, backward does not keep it.
Tensor lora_down(const Tensor& x, const Tensor& a, const Tensor& mask = {}, const Tensor& x_cast = {});
// y + scale * ((x * mask) @ a) @ b written into y's storage and returned: LoRA's sum in two products
// in x's dtype (f32 accumulation), the scale the second product's alpha and the sum its beta = 1,
// with no (..., out) temporary. y (..., out) in x's dtype is the fresh base product of x (nothing else
// reads it; the base's backward does not); a (in, r) and b (r, out) are the f32 adapter, cast to x's
// dtype once a call; mask (..., in) f32 or undefined (dropout; applied in x's dtype). Backward: dy
// passes through, db = scale (x a)^T dy and da = (x mask)^T (scale dy b^T) in f32 straight from
// x's-dtype operands, dx = (scale dy b^T) a^T * mask in x's dtype. Saves x (shared), x a (..., r),
// the cast a and b, and the mask.
Tensor lora_add(const Tensor& y, const Tensor& x, const Tensor& a, const Tensor& b, float scale,
                const Tensor& mask = {});
// x @ w^T (+ bias) + scale * (x @ a) @ b as one node (ops::lora_linear: each block of rows through all its
// products while in cache), for a frozen f32 weight and bias and an f32 adapter a (in, r), b (r, out).
// Backward: dx = dy @ w + (scale dy b^T) a^T, da and db as lora_add's, from one backend call. Undefined (nothing
// recorded) where the backend has no such kernel or the weight or bias would need a gradient: the caller then
// composes linear and lora_add. Saves x, x a, and the references to w, a and b.
Tensor lora_linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& a, const Tensor& b, float scale);
// x @ dequant(W)^T (+ bias) for a frozen weight in MLX's quantized layout, any mode
// (ops::quantized_linear);
// gradients flow to x (dx = dy @ dequant(W), the weight dequantized again in backward rather than
// kept) and to bias, never to the packed weight.
Tensor quantized_linear(const Tensor& x, const Tensor& wq, const Tensor& scales, const Tensor& biases,
                        const QuantFormat& f, const Tensor& bias = {});
Tensor embedding(const Tensor& weight, const Tensor& ids);
Tensor rms_norm(const Tensor& x, const Tensor& w, float eps);
Tensor rope(const Tensor& x, const Tensor& inv_freq, int64_t pos_offset, float mscale);
// positions: i32 (B, T) on x's device, a rotary position per token (packed rows).
Tensor rope_at(const Tensor& x, const Tensor& inv_freq, const Tensor& positions, float mscale);
// segments: packed rows' i32 (B, T) segment ids (ops::attention); null for ordinary rows.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, bool causal, int64_t window,
                 int64_t q_offset = 0, const Tensor* segments = nullptr, float softcap = 0.f);
Tensor softmax(const Tensor& x);
Tensor swiglu(const Tensor& gate, const Tensor& up);
// Mean over the targets that are >= 0 of -log softmax(logits)[target]; logits (N, V), i32 (N).
// Returns an f32 scalar; with no supervised target the loss is 0.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets);
// Sum (not mean) of the per-token losses and the count of supervised tokens, for callers that
// average over several batches.
struct CrossEntropySum {
  Tensor sum;
  int64_t n_tokens;
};
CrossEntropySum cross_entropy_sum(const Tensor& logits, const Tensor& targets);

}  // namespace lmtune::ag
