// RMS normalisation over the last axis: y = x / sqrt(mean(x^2) + eps) * w.
#pragma once
#include <utility>

#include "autograd/functions.h"
#include "ops/ops.h"

namespace lmtune::nn {

struct RmsNorm {
  const Tensor* weight = nullptr;  // (n) the model's dtype; null = no norm here
  float eps = 1e-6f;
  // Gemma's norms scale by (1 + w): the stored weight is the offset from one. 1 + w is formed in
  // the weight's dtype at each call (as mlx-lm's fast.rms_norm(x, 1.0 + w)), so that a trained
  // norm's gradient reaches w.
  bool unit_offset = false;

  bool defined() const { return weight != nullptr; }
  Tensor forward(const Tensor& x) const;
  Tensor scale() const;  // the weight the norm multiplies by: w, or 1 + w
  // (x + y, norm(x + y)): the residual add and the norm after it. While decoding, or whenever
  // autograd is off, one fused kernel does both where the backend has one; the same values either way.
  std::pair<Tensor, Tensor> add_forward(const Tensor& x, const Tensor& y, bool decoding) const;
};

// A norm as decoding's fused products take it (ops::InputNorm), with the scale it points to; get() is null where
// there is no norm. Not copyable: the InputNorm points into it.
class FusedNorm {
 public:
  explicit FusedNorm(const RmsNorm* n) : scale_(n ? n->scale() : Tensor()), norm_{&scale_, n ? n->eps : 0.f} {}
  FusedNorm(const FusedNorm&) = delete;
  FusedNorm& operator=(const FusedNorm&) = delete;
  const ops::InputNorm* get() const { return scale_.defined() ? &norm_ : nullptr; }

 private:
  Tensor scale_;  // undefined where there is no norm
  ops::InputNorm norm_;
};

}  // namespace lmtune::nn
