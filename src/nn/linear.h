// A linear layer y = x W^T (+ b). The weight is dense today; quantized weights and
// LoRA / DoRA adapters attach here so that models never see the difference.
#pragma once
#include "autograd/functions.h"
#include "nn/lora.h"

namespace lmtune::nn {

struct Linear {
  Tensor weight;                         // (out, in)
  Tensor bias;                           // (out) or undefined
  const LoraAdapter* adapter = nullptr;  // a LoRA / DoRA adapter owned by the model, or null

  Tensor forward(const Tensor& x) const;
  // The same, for an input that other adapted layers also read: their adapters share one cast.
  Tensor forward(AdapterInput& in) const;
  int64_t in_features() const { return weight.dim(1); }
  int64_t out_features() const { return weight.dim(0); }
  // No adapter and no bias: decoding may hand the bare weight to a fused kernel.
  bool plain() const { return !adapter && !bias.defined(); }
};

// A linear layer bound once, at load time, to the model's tensors: pointers into the model's
// weight and adapter maps (whose entries stay put while the maps are not restructured), so that
// a weight replaced in place (a cast master, a parameter leaf) is seen without looking it up.
struct LinearRef {
  const Tensor* weight = nullptr;        // (out, in)
  const Tensor* bias = nullptr;          // (out) or null
  const LoraAdapter* adapter = nullptr;  // or null
  Linear get() const { return {*weight, bias ? *bias : Tensor{}, adapter}; }
  Tensor forward(const Tensor& x) const { return get().forward(x); }
};

}  // namespace lmtune::nn
