// LoRA and DoRA adapters on a linear layer, exactly as mlx-lm defines them (tuner/lora.py,
// tuner/dora.py): y = W x + scale * ((dropout(x) @ lora_a) @ lora_b), and DoRA rescales that
// by m / stop_gradient(||W + scale * lora_b^T lora_a^T||_row) before the bias.
#pragma once
#include <cstdint>
#include <memory>

#include "autograd/functions.h"

namespace lmtune::nn {

enum class AdapterKind { lora, dora };

// The trainable tensors of one adapted linear layer; all f32 whatever the base dtype, so that
// gradients and optimizer state are f32 (DESIGN.md, Precision).
struct LoraAdapter {
  AdapterKind kind = AdapterKind::lora;
  Tensor lora_a;        // f32 (in, r), U(-1/sqrt(in), 1/sqrt(in)) at creation
  Tensor lora_b;        // f32 (r, out), zeros at creation
  Tensor m;             // f32 (out): DoRA's magnitude (row norms of W at creation); undefined for LoRA
  Tensor w_row_sq;      // f32 (out): DoRA's ||W_i||^2 of the frozen base, made with the adapter
  float scale = 20.f;   // the multiplier itself (PEFT's lora_alpha / r)
  float dropout = 0.f;  // on the adapter's input only, as mlx-lm; active only while grad is on
  // The dropout counter, advanced by each draw; null uses a fixed seed. Shared, not borrowed: the
  // trainer hands every adapter one counter, and the adapters (owned by the model) outlive train().
  std::shared_ptr<uint64_t> dropout_seed;
};

// Fresh adapter tensors for a base weight (out, in) of any dtype, on the weight's device.
LoraAdapter make_lora_adapter(const Tensor& weight, AdapterKind kind, int64_t rank, float scale, float dropout,
                              uint64_t seed);

// A layer input read by several adapted layers (q, k, v; gate, up): its f32 cast for the adapters
// is made once, on first use, and lives as long as this object. Keep it in a scope that ends after
// those layers' forward: backward does not use it.
struct AdapterInput {
  explicit AdapterInput(const Tensor& input) : x(input) {}
  const Tensor& f32();  // f32 copy of x (x itself when already f32), detached
  const Tensor& x;      // (..., in) in the base dtype

 private:
  Tensor f32_;
};

struct Linear;  // nn/linear.h

// The adapted forward. x (..., in) in the base dtype; base: the frozen layer (dense or quantized:
// QLoRA) whose product and bias are adapted. Returns (..., out) in the base dtype. shared, when
// given, is an AdapterInput made for this x.
Tensor lora_forward(const Tensor& x, const Linear& base, const LoraAdapter& a, AdapterInput* shared = nullptr);

// Row norms of W + scale * lora_b^T lora_a^T as f32 (out), without autograd (DoRA's denominator
// and, with zero lora_b, its initial magnitude). Forms the (out, in) sum: the reference.
Tensor dora_row_norms(const Tensor& weight, const Tensor& lora_a, const Tensor& lora_b, float scale);

// The same norms as the forward computes them, without an (out, in) temporary: with D = B^T A^T,
// ||W_i + s D_i||^2 = ||W_i||^2 + 2 s sum_r B[r, i] (W A)[i, r] + s^2 b_i^T (A^T A) b_i, where
// ||W_i||^2 is a.w_row_sq (made once with the adapter) and (W A)^T is the base layer's product of
// A's r columns (dense or quantized; one read of W in its own dtype).
Tensor dora_row_norms(const Linear& base, const LoraAdapter& a);

}  // namespace lmtune::nn
