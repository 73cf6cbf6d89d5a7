#include "nn/linear.h"

namespace lmtune::nn {

Tensor Linear::forward(const Tensor& x) const {
  if (adapter) return lora_forward(x, weight, bias, *adapter);
  return ag::linear(x, weight, bias);
}

Tensor Linear::forward(AdapterInput& in) const {
  if (adapter) return lora_forward(in.x, weight, bias, *adapter, &in);
  return ag::linear(in.x, weight, bias);
}

Tensor LinearRef::dense() const {
  if (!scales) return *weight;
  return ops::dequantize_affine(*weight, *scales, *biases, bits, group_size);
}

}  // namespace lmtune::nn
