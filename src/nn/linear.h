// A linear layer y = x W^T (+ b). The weight is dense today; quantized weights and
// LoRA / DoRA adapters attach here so that models never see the difference.
#pragma once
#include "autograd/functions.h"
#include "nn/lora.h"

namespace lmtune::nn {

struct Linear {
  Tensor weight;  // (out, in)
  Tensor bias;    // (out) or undefined
  const LoraAdapter* adapter = nullptr;  // a LoRA / DoRA adapter owned by the model, or null

  Tensor forward(const Tensor& x) const;
  // The same, for an input that other adapted layers also read: their adapters share one cast.
  Tensor forward(AdapterInput& in) const;
  int64_t in_features() const { return weight.dim(1); }
  int64_t out_features() const { return weight.dim(0); }
};

}  // namespace lmtune::nn
