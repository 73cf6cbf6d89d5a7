// Op front ends: validate shapes and dtypes, allocate outputs, dispatch to the tensor's
// backend. No autograd here (autograd/ builds on these).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "core/tensor.h"

namespace lmtune::ops {

// Creation and movement.
Tensor empty(const Shape& shape, DType dt, Device d);
Tensor zeros(const Shape& shape, DType dt, Device d);
Tensor full(const Shape& shape, float value, DType dt, Device d);
Tensor to(const Tensor& x, Device d);    // copy (or the same tensor when already there)
Tensor cast(const Tensor& x, DType dt);  // copy (or the same tensor when already dt)
Tensor to(const Tensor& x, Device d, DType dt);
Tensor clone(const Tensor& x);
void copy_into(Tensor& dst, const Tensor& src);  // same shape and dtype, any devices
// dst (R, ...) rows [dst_row, dst_row + n) = src (n, ...): same trailing shape, dtype and device.
// One contiguous device copy (how the KV cache appends new keys and values).
void copy_rows_into(Tensor& dst, int64_t dst_row, const Tensor& src);
// The same with the row in device memory (an i32 scalar on dst's device, read at run time): no
// bounds check is possible on the host, so callers keep *row_at + src rows <= dst rows.
void copy_rows_at(Tensor& dst, const Tensor& row_at, const Tensor& src);
// Columns [begin, begin + n) of x's last axis, as a new contiguous tensor (..., n): how a fused
// projection's output (phi3's qkv_proj, gate_up_proj) is split.
Tensor slice_last(const Tensor& x, int64_t begin, int64_t n);
// The reverse: zeros (..., cols) with columns [begin, begin + x's last dim) = x (a slice's gradient).
Tensor place_last(const Tensor& x, int64_t cols, int64_t begin);
// Deterministic N(0, std^2) / U(lo, hi) values drawn on the host from seed, then moved.
Tensor randn(const Shape& shape, uint64_t seed, float std = 1.f, DType dt = DType::f32, Device d = Device::cpu);
Tensor uniform(const Shape& shape, uint64_t seed, float lo, float hi, DType dt = DType::f32, Device d = Device::cpu);

// Elementwise; b may have a trailing shape of a (broadcast b[i % b.numel()]).
Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
void add_(Tensor& a, const Tensor& b);  // a += b (same shape)
Tensor axpby(const Tensor& a, const Tensor& b, float alpha, float beta);
Tensor unary(UnaryOp op, const Tensor& x, float param = 0.f);
Tensor scale(const Tensor& x, float s);
Tensor unary_backward(UnaryOp op, const Tensor& x, const Tensor& dy);

// Sum over one axis (keeps the others), over leading axes down to a trailing shape, or all.
Tensor sum_axis(const Tensor& x, int axis, DType out_dt);
Tensor sum_to_shape(const Tensor& x, const Shape& trailing);
Tensor sum_all(const Tensor& x);  // f32 scalar, shape {}
float item(const Tensor& x);      // a one-element tensor's value, any device

// Matrix products. matmul: a (..., M, K) (or (..., K, M) with trans_a), b (K, N) or with the
// same leading batch shape as a (or (N, K) with trans_b) -> (..., M, N).
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// A mixture of experts' products: x (R, K)'s rows in consecutive groups, rows [offsets[g], offsets[g + 1])
// times ws[g]^T (ws[g] (N, K), a linear layer's weight) when trans_w, else times ws[g] (K, N); all ws of
// one shape and x's dtype; offsets from 0 to R, never decreasing (empty groups are skipped); handed to
// Backend::gemm_grouped together.
Tensor grouped_matmul(const Tensor& x, const std::vector<Tensor>& ws, const std::vector<int64_t>& offsets,
                      bool trans_w);
// grouped_matmul(x, ws, offsets, true)'s weight gradients: dw[g] (N, K) = dy_g^T x_g for each g with want[g]
// (zeros for an empty group), undefined where not wanted; dy (R, N) and x (R, K) in one dtype.
std::vector<Tensor> grouped_matmul_wgrad(const Tensor& dy, const Tensor& x, const std::vector<int64_t>& offsets,
                                         const std::vector<bool>& want);
// x (..., in) @ w (out, in)^T (+ bias (out)) -> (..., out).
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias = {});
// Inference only (no autograd), for decoding: the backend's fused kernel where it has one for
// the shapes, else the plain ops, with the same values either way.
// x (..., K) and up to 3 weights (N_i, K) sharing it -> x W_i^T each (q, k, v).
std::vector<Tensor> linear_group(const Tensor& x, const std::vector<Tensor>& ws);
// swiglu(x W_gate^T, x W_up^T).
Tensor swiglu_linear(const Tensor& x, const Tensor& w_gate, const Tensor& w_up);
// {x + y, rms_norm(x + y) * w}: a residual add and the norm after it.
std::pair<Tensor, Tensor> add_rms_norm(const Tensor& x, const Tensor& y, const Tensor& w, float eps);
// c (M, N) = alpha * op(a) @ op(b) + beta * c for 2-D matrices viewed as rows (accumulation); c in a's
// dtype, or f32 for 16-bit a and b (f32 accumulation kept in the output).
void gemm_into(Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, float alpha, float beta);

// A linear layer with its LoRA in one backend call (Backend::lora_linear): y (..., out) = x @ w^T [+ bias] +
// scale * xa @ b with xa (rows, r) = x (..., in) @ a (in, r), w (out, in), b (r, out); all f32 on one device.
// Both undefined where the backend has no such kernel (the caller composes linear and the LoRA products).
struct LoraLinearOut {
  Tensor y, xa;
};
LoraLinearOut lora_linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& a, const Tensor& b,
                          float scale);
// Its backward from dy (like y): dx (like x), da (in, r), db (r, out), each only where wanted. ok false (nothing
// made) where the backend has no such kernel.
struct LoraLinearGrads {
  bool ok = false;
  Tensor dx, da, db;
};
LoraLinearGrads lora_linear_backward(const Tensor& dy, const Tensor& x, const Tensor& xa, const Tensor& w,
                                     const Tensor& a, const Tensor& b, float scale, bool want_dx, bool want_da,
                                     bool want_db);

// Layers.
// MLX's quantized layout (quant/quant.h; the mode, bits and group size in f: core/quant_format.h):
// wq u32 (rows, in * bits / 32); scales (rows, in / group_size), a float dtype for affine (with
// biases of the same shape and dtype) or u8 for the fp modes (mxfp4, nvfp4, mxfp8: biases
// undefined); all on one device.
// Throws naming `name` (the layer) and the tensor at fault unless wq, scales and biases fit f.
void check_quantized(const Tensor& wq, const Tensor& scales, const Tensor& biases, const QuantFormat& f,
                     const std::string& name);
// The dense weight (rows, in) in dt, equal bit for bit to mx.dequantize: affine computes in the
// scales' dtype (then cast to dt), the fp modes in dt itself.
Tensor dequantize(const Tensor& wq, const Tensor& scales, const Tensor& biases, const QuantFormat& f, DType dt,
                  const std::string& name = "weight");
// x (..., K) @ dequant(W)^T (+ bias) for W (N, K) in that layout (affine scales in x's dtype): the
// backend's fused kernel for a few rows (decoding) where it has one, else a dequantized scratch
// weight and the dense product. -> (..., N) in x's dtype.
Tensor quantized_linear(const Tensor& x, const Tensor& wq, const Tensor& scales, const Tensor& biases,
                        const QuantFormat& f, const Tensor& bias = {});
// A quantized weight's three tensors (borrowed).
struct QuantizedWeight {
  const Tensor* wq;
  const Tensor* scales;
  const Tensor* biases;
};
// An rms_norm that decoding's products below take on x first: rms_norm(x, *weight, eps).out (weight: what the norm
// multiplies by, in x's dtype). One row of x may have it inside the products' launch (Backend::quantized_gemv_normed);
// the same values either way.
struct InputNorm {
  const Tensor* weight;
  float eps;
};
// Inference only, for decoding: up to 3 quantized weights of one format that share x ->
// quantized_linear(x, W_i) each, in one launch where the backend can (q, k and v; gate and up).
// With norm, of rms_norm(x) instead of x.
std::vector<Tensor> quantized_linear_group(const Tensor& x, const std::vector<QuantizedWeight>& ws,
                                           const QuantFormat& f, const InputNorm* norm = nullptr);
// Decoding's rope and KV-cache append inside the q/k/v products' launch (Backend::quantized_gemv_normed's rope): one
// row x, qkv = {q, k, v} of one format with head_dim = inv_freq's 2 x numel; returns q's product rotated at position
// pos (+ *pos_at, an i32 scalar on x's device, where not null), and writes k's rotated and v's into the cache planes
// k_cache, v_cache (capacity, n_kv_head, head_dim) at that row: rope_append's values on the plain products'. With
// norm, of rms_norm(x). Undefined where the backend has no such launch; then nothing was written.
struct RopeAppend {
  const Tensor* inv_freq;
  Tensor* k_cache;
  Tensor* v_cache;
  int64_t pos;
  const Tensor* pos_at;
};
Tensor quantized_qkv_rope_append(const Tensor& x, const std::vector<QuantizedWeight>& qkv, const QuantFormat& f,
                                 const InputNorm* norm, const RopeAppend& rope);
// Inference only, for decoding: swiglu(quantized_linear(x, gate), quantized_linear(x, up)) in one
// launch where the backend can; the same values either way. With norm, of rms_norm(x) instead of x.
Tensor quantized_swiglu_linear(const Tensor& x, const QuantizedWeight& gate, const QuantizedWeight& up,
                               const QuantFormat& f, const InputNorm* norm = nullptr);
// Inference only, for decoding: add(residual, quantized_linear(x, W)) in one launch where the
// backend can; the same values either way.
Tensor quantized_linear_add(const Tensor& x, const QuantizedWeight& w, const Tensor& residual, const QuantFormat& f);
// Inference only, for decoding one row: x1 = quantized_linear_add(a, o, x), then quantized_linear_add(
// quantized_swiglu_linear(x1, gate, up, f, &norm), down, x1), in one launch (Backend::quantized_decode_chain) where the
// backend has it: the same values. Undefined where it has not (nothing was written; the caller runs those ops).
// With next, a fourth phase in the same launch: the next layer's quantized_qkv_rope_append(out, next->qkv, f,
// &next->norm, next->rope), its rotated q into *next->q (the same values); undefined where the backend cannot (nothing
// written).
struct DecodeChainNext {
  std::vector<QuantizedWeight> qkv;  // q, k, v
  InputNorm norm;
  RopeAppend rope;
  Tensor* q;
};
Tensor quantized_decode_chain(const Tensor& a, const QuantizedWeight& o, const Tensor& x, const InputNorm& norm,
                              const QuantizedWeight& gate, const QuantizedWeight& up, const QuantizedWeight& down,
                              const QuantFormat& f, const DecodeChainNext* next = nullptr);
// The inverse of affine dequantize: x (rows, in) in a float dtype -> {wq u32 (rows, in * bits / 32), scales and biases
// (rows, in / group_size) in x's dtype} on x's device, bit for bit mx.quantize (quant::quantize is
// the reference). Bits 2, 3, 4, 5, 6, 8; group size 32, 64, 128 dividing in.
struct AffineQuantized {
  Tensor wq, scales, biases;
};
AffineQuantized quantize_affine(const Tensor& x, int bits, int group_size);
Tensor embedding(const Tensor& weight, const Tensor& ids);                          // (V, D), i32 (...) -> (..., D)
Tensor embedding_backward(const Tensor& dout, const Tensor& ids, int64_t n_vocab);  // f32 (V, D)
struct RmsNormOut {
  Tensor out, rstd;
};
RmsNormOut rms_norm(const Tensor& x, const Tensor& w, float eps);
struct RmsNormGrads {
  Tensor dx, dw;
};  // dw f32
RmsNormGrads rms_norm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy);
// x (B, T, H, D); inv_freq f32 (D/2) on x's device.
// pos_at: an optional i32 scalar on x's device added to pos_offset at run time.
Tensor rope(const Tensor& x, const Tensor& inv_freq, int64_t pos_offset, float mscale, bool inverse,
            const Tensor* pos_at = nullptr);
// Packed rows: x (B, T, H, D) rotated at per-token positions, i32 (B, T) on x's device.
Tensor rope_at(const Tensor& x, const Tensor& inv_freq, const Tensor& positions, float mscale, bool inverse);
// Inference, batch 1: q (1, T, H, D) rotated -> returned; k (1, T, KV, D) rotated and v stored
// into the cache buffers k_cache, v_cache (rows, KV, D) at rows pos .. pos + T - 1, where pos =
// pos_offset (+ *pos_at on the device) is also the rotary position. Undefined where the backend
// has no fused kernel (nothing is written then).
Tensor rope_append(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& inv_freq, int64_t pos_offset,
                   const Tensor* pos_at, Tensor& k_cache, Tensor& v_cache);
// A packed batch's decoding rows (nn::Attention::forward_packed), each its own sequence: query row
// `row` of the packed projections at position `pos`, with its cache planes for the layer.
struct DecodeRowRef {
  int64_t row, pos;
  Tensor k_cache, v_cache;  // (capacity, KV, D), the projections' dtype and device
};
// Whether decode_rows_attention can run on device d (the backend has its kernels: CUDA). Where it
// cannot, callers skip gathering the rows (decode_rows_attention would return false at once).
bool has_decode_rows(Device d);
// For every row: q's row (q (N, H, D)) rotated at pos, k's and v's rows (N, KV, D) rotated (k)
// and stored at row pos of its caches, then out's row (out (N, H * D), allocated by the caller) =
// causal attention of the rotated row over its cache's keys [0, pos] (within `window` when > 0).
// Two launches for up to 64 rows (Backend::rope_append_rows, attention_rows). False where the
// backend has no such kernels (checked first, before the shapes) or the shapes are not theirs:
// nothing was written then.
bool decode_rows_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& inv_freq,
                           const std::vector<DecodeRowRef>& rows, float scale, int64_t window, Tensor& out);
struct AttentionOut {
  Tensor out, lse;
};
// q_offset_at: an optional i32 scalar on q's device added to q_offset at run time (inference).
// segments: packed rows' i32 (B, T) segment ids on q's device, non-decreasing along each row, for
// causal self-attention (S == T, q_offset 0): a query sees only keys of its own segment.
// softcap > 0: scores softcap * tanh(score / softcap) (AttentionArgs::softcap).
AttentionOut attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, bool causal, int64_t window,
                       int64_t q_offset, const Tensor* q_offset_at = nullptr, const Tensor* segments = nullptr,
                       float softcap = 0.f);
struct AttentionGrads {
  Tensor dq, dk, dv;
};
AttentionGrads attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOut& fwd,
                                  const Tensor& dout, float scale, bool causal, int64_t window, int64_t q_offset,
                                  const Tensor* segments = nullptr, float softcap = 0.f);
Tensor softmax(const Tensor& x);  // over the last axis
Tensor softmax_backward(const Tensor& y, const Tensor& dy);
Tensor swiglu(const Tensor& gate, const Tensor& up);
struct SwigluGrads {
  Tensor dgate, dup;
};
SwigluGrads swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout);
struct CrossEntropyOut {
  Tensor loss, lse;
};                                                                           // f32 (N) each
CrossEntropyOut cross_entropy(const Tensor& logits, const Tensor& targets);  // (N, V), i32 (N)
Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& dloss);

// Optimizer update, in place on f32 tensors of one shape.
void adamw_(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, float lr, float b1, float b2, float eps, float wd,
            float bc1, float bc2);

}  // namespace lmtune::ops
