// RMS normalisation over the last axis: y = x / sqrt(mean(x^2) + eps) * w.
#pragma once
#include <utility>

#include "autograd/functions.h"

namespace lmtune::nn {

struct RmsNorm {
  const Tensor* weight = nullptr;  // (n) the model's dtype; null = no norm here
  float eps = 1e-6f;

  bool defined() const { return weight != nullptr; }
  Tensor forward(const Tensor& x) const;
  // (x + y, norm(x + y)): the residual add and the norm after it. While decoding (a few rows, no
  // autograd) one fused kernel does both where the backend has one; the same values either way.
  std::pair<Tensor, Tensor> add_forward(const Tensor& x, const Tensor& y, bool decoding) const;
};

}  // namespace lmtune::nn
