// Op front ends for MLX's quantized layout: validation, then the device's kernel.
#include <algorithm>

#include "core/error.h"
#include "ops/ops.h"

namespace lmtune::ops {

void check_quantized(const Tensor& wq, const Tensor& scales, const Tensor& biases, int bits, int group_size,
                     const std::string& name) {
  LMT_CHECK(bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8, "[dequantize] ", name,
            ": bits must be 2, 3, 4, 5, 6 or 8, got ", bits);
  LMT_CHECK(group_size == 32 || group_size == 64 || group_size == 128, "[dequantize] ", name,
            ": group_size must be 32, 64 or 128, got ", group_size);
  LMT_CHECK(wq.defined() && wq.dtype() == DType::u32 && wq.ndim() == 2, "[dequantize] ", name,
            ": the packed weight must be u32 (rows, in * bits / 32), got ", wq.defined() ? wq.describe() : "none");
  const int64_t rows = wq.dim(0), in = wq.dim(1) * 32 / bits;
  LMT_CHECK(wq.dim(1) * 32 % bits == 0 && in % group_size == 0, "[dequantize] ", name, ": packed width ", wq.dim(1),
            " words is not a whole number of ", group_size, "-wide groups of ", bits, "-bit codes");
  const Shape sb{rows, in / group_size};
  LMT_CHECK(scales.defined() && scales.shape() == sb && is_float(scales.dtype()), "[dequantize] ", name,
            ": scales must be a float (", rows, ", ", in / group_size, "), got ",
            scales.defined() ? scales.describe() : "none");
  LMT_CHECK(biases.defined() && biases.shape() == sb && biases.dtype() == scales.dtype(), "[dequantize] ", name,
            ": biases must match scales ", scales.describe(), ", got ", biases.defined() ? biases.describe() : "none");
  LMT_CHECK(wq.device() == scales.device() && wq.device() == biases.device(), "[dequantize] ", name,
            ": packed weight, scales and biases are on different devices");
}

Tensor dequantize_affine(const Tensor& wq, const Tensor& scales, const Tensor& biases, int bits, int group_size,
                         const std::string& name) {
  check_quantized(wq, scales, biases, bits, group_size, name);
  const int64_t rows = wq.dim(0), in = wq.dim(1) * 32 / bits;
  Tensor out = empty({rows, in}, scales.dtype(), wq.device());
  if (rows > 0)
    backend(wq.device())
        .dequantize_affine(static_cast<const uint32_t*>(wq.raw()), scales.raw(), biases.raw(), out.raw(), rows, in,
                           bits, group_size, scales.dtype());
  return out;
}

Tensor quantized_linear(const Tensor& x, const Tensor& wq, const Tensor& scales, const Tensor& biases, int bits,
                        int group_size, const Tensor& bias) {
  const int64_t N = wq.dim(0), K = wq.dim(1) * 32 / std::max(bits, 1);
  LMT_CHECK(x.ndim() >= 1 && x.dim(-1) == K && x.dtype() == scales.dtype() && x.device() == wq.device(),
            "[quantized_linear] input ", x.describe(), " does not fit a quantized weight of ", K, " inputs with ",
            scales.describe(), " scales");
  const int64_t M = x.numel() / std::max<int64_t>(K, 1);
  if (M >= 1 && M <= 8) {
    check_quantized(wq, scales, biases, bits, group_size, "quantized_linear");
    Shape os = x.shape();
    os.back() = N;
    Tensor y = empty(os, x.dtype(), x.device());
    if (backend(x.device())
            .quantized_gemv(x.raw(), static_cast<const uint32_t*>(wq.raw()), scales.raw(), biases.raw(), y.raw(), M, N,
                            K, bits, group_size, x.dtype()))
      return bias.defined() ? add(y, bias) : y;
  }
  return linear(x, dequantize_affine(wq, scales, biases, bits, group_size, "quantized_linear"), bias);
}

}  // namespace lmtune::ops
