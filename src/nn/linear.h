// A linear layer y = x W^T (+ b). The weight is dense or quantized (MLX's layout, any mode), and
// LoRA / DoRA adapters attach here, so that models never see the difference.
#pragma once
#include "autograd/functions.h"
#include "nn/lora.h"

namespace lmtune::nn {

struct Linear {
  Tensor weight;                         // (out, in), or u32 (out, in * bits / 32) when quantized
  Tensor bias;                           // (out) or undefined
  const LoraAdapter* adapter = nullptr;  // a LoRA / DoRA adapter owned by the model, or null
  // MLX's quantization (frozen): scales (out, in / group_size), float for affine or u8 for the fp
  // modes; biases like scales for affine only; both undefined if dense. format: mode, bits, group.
  Tensor scales{}, biases{};
  QuantFormat format{};
  DType dense_dtype = DType::f32;  // what a quantized weight dequantizes to (the model's dtype)

  Tensor forward(const Tensor& x) const;
  // The same, for an input that other adapted layers also read: their adapters share one cast.
  Tensor forward(AdapterInput& in) const;
  // x W^T (+ bias): the frozen base product, through the quantized kernels when quantized.
  Tensor base(const Tensor& x, bool with_bias = true) const;
  // The (out, in) weight: the weight itself, or its dequantization (a scratch tensor).
  Tensor dense_weight() const;
  bool quantized() const { return scales.defined(); }
  int64_t in_features() const { return quantized() ? weight.dim(1) * 32 / format.bits : weight.dim(1); }
  int64_t out_features() const { return weight.dim(0); }
  // Dense, no adapter and no bias: decoding may hand the bare weight to a fused kernel.
  bool plain() const { return !adapter && !bias.defined() && !quantized(); }
  // Quantized, no adapter and no bias: decoding may hand the packed weight to a fused kernel.
  bool plain_quantized() const { return !adapter && !bias.defined() && quantized(); }
  // Whether two plain quantized layers can share a fused launch (one format).
  bool quantized_like(const Linear& o) const { return plain_quantized() && o.plain_quantized() && format == o.format; }
  ops::QuantizedWeight packed() const { return {&weight, &scales, &biases}; }
  // Output rows [begin, begin + n) of the base weight (and bias, scales, biases) as views, without
  // the adapter: a fused projection's part (phi3's qkv_proj, gate_up_proj) for the decoding kernels.
  Linear rows(int64_t begin, int64_t n) const;
};

// A linear layer bound once, at load time, to the model's tensors: pointers into the model's
// weight and adapter maps (whose entries stay put while the maps are not restructured), so that
// a weight replaced in place (a cast master, a parameter leaf) is seen without looking it up.
// A quantized layer (MLX's layout) points at its packed weight, scales and (affine) biases.
struct LinearRef {
  const Tensor* weight = nullptr;        // (out, in), or u32 (out, in * bits / 32) when quantized
  const Tensor* bias = nullptr;          // (out) or null
  const LoraAdapter* adapter = nullptr;  // or null
  const Tensor* scales = nullptr;        // (out, in / group_size) when quantized, else null
  const Tensor* biases = nullptr;        // like scales for affine; null for the fp modes
  QuantFormat format{};
  DType dense_dtype = DType::f32;  // what a quantized weight dequantizes to (the model's dtype)

  // The dense weight: the weight itself, or its dequantization (frozen; a scratch tensor).
  Tensor dense() const;
  Linear get() const {
    Linear l;
    l.weight = *weight, l.adapter = adapter;
    if (bias) l.bias = *bias;
    if (scales) {
      l.scales = *scales, l.format = format, l.dense_dtype = dense_dtype;
      if (biases) l.biases = *biases;
    }
    return l;
  }
  Tensor forward(const Tensor& x) const { return get().forward(x); }
};

}  // namespace lmtune::nn
