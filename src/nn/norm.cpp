#include "nn/norm.h"

namespace lmtune::nn {

Tensor RmsNorm::scale() const { return unit_offset ? ag::add_scalar(*weight, 1.f) : *weight; }

Tensor RmsNorm::forward(const Tensor& x) const { return ag::rms_norm(x, scale(), eps); }

std::pair<Tensor, Tensor> RmsNorm::add_forward(const Tensor& x, const Tensor& y, bool decoding) const {
  if (decoding) return ops::add_rms_norm(x, y, scale(), eps);
  Tensor sum = ag::add(x, y);
  return {sum, forward(sum)};
}

}  // namespace lmtune::nn
