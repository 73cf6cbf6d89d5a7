#include "nn/norm.h"

namespace lmtune::nn {

Tensor RmsNorm::scale() const { return unit_offset ? ag::add_scalar(*weight, 1.f) : *weight; }

Tensor RmsNorm::forward(const Tensor& x) const { return ag::rms_norm(x, scale(), eps); }

std::pair<Tensor, Tensor> RmsNorm::add_forward(const Tensor& x, const Tensor& y, bool decoding) const {
  // Without autograd (decoding, prefill, a server's batched steps, scoring) any number of rows may
  // take the fused kernel: its sum is rounded to the dtype before the norm, as ag::add's is.
  const Tensor w = scale();
  if ((decoding || !ag::grad_enabled()) && x.dtype() == y.dtype() && x.shape() == y.shape() && w.dtype() == x.dtype() &&
      x.device() == y.device())
    return ops::add_rms_norm(x, y, w, eps);
  Tensor sum = ag::add(x, y);
  return {sum, ag::rms_norm(sum, w, eps)};
}

}  // namespace lmtune::nn
