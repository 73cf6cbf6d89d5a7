#include "nn/linear.h"

namespace lmtune::nn {

Linear Linear::rows(int64_t begin, int64_t n) const {
  Linear l;
  l.weight = weight.slice_rows(begin, begin + n);
  if (bias.defined()) l.bias = bias.slice_rows(begin, begin + n);
  if (scales.defined()) l.scales = scales.slice_rows(begin, begin + n);
  if (biases.defined()) l.biases = biases.slice_rows(begin, begin + n);
  l.format = format, l.dense_dtype = dense_dtype;
  return l;
}

Tensor Linear::forward(const Tensor& x) const {
  if (adapter) return lora_forward(x, *this, *adapter);
  return base(x);
}

Tensor Linear::forward(AdapterInput& in) const {
  if (adapter) return lora_forward(in.x, *this, *adapter, &in);
  return base(in.x);
}

Tensor Linear::base(const Tensor& x, bool with_bias) const {
  const Tensor& b = with_bias ? bias : Tensor();
  if (quantized()) return ag::quantized_linear(x, weight, scales, biases, format, b);
  return ag::linear(x, weight, b);
}

Tensor Linear::dense_weight() const {
  if (!quantized()) return weight;
  return ops::dequantize(weight, scales, biases, format, dense_dtype);
}

Tensor LinearRef::dense() const {
  if (!scales) return *weight;
  return ops::dequantize(*weight, *scales, biases ? *biases : Tensor(), format, dense_dtype);
}

}  // namespace lmtune::nn
