// Op front ends for MLX's quantized layout (every mode: core/quant_format.h): validation, then the
// device's kernel.
#include <algorithm>

#include "core/error.h"
#include "ops/ops.h"

namespace lmtune::ops {

void check_quantized(const Tensor& wq, const Tensor& scales, const Tensor& biases, const QuantFormat& f,
                     const std::string& name) {
  check_quant_format(f, 0, "dequantize " + name);
  const char* mode = quant_mode_name(f.mode);
  LMT_CHECK(wq.defined() && wq.dtype() == DType::u32 && wq.ndim() == 2, "[dequantize] ", name,
            ".weight: the packed weight must be u32 (rows, in * bits / 32), got ",
            wq.defined() ? wq.describe() : "none");
  const int64_t rows = wq.dim(0), in = wq.dim(1) * 32 / f.bits;
  LMT_CHECK(wq.dim(1) * 32 % f.bits == 0 && in % f.group_size == 0, "[dequantize] ", name, ".weight: packed width ",
            wq.dim(1), " words is not a whole number of ", f.group_size, "-wide groups of ", f.bits, "-bit codes");
  const Shape sb{rows, in / f.group_size};
  if (f.has_biases()) {
    LMT_CHECK(scales.defined() && scales.shape() == sb && is_float(scales.dtype()), "[dequantize] ", name,
              ".scales: must be a float (", rows, ", ", in / f.group_size, ") for ", mode, ", got ",
              scales.defined() ? scales.describe() : "none");
    LMT_CHECK(biases.defined() && biases.shape() == sb && biases.dtype() == scales.dtype(), "[dequantize] ", name,
              ".biases: must match scales ", scales.describe(), ", got ",
              biases.defined() ? biases.describe() : "none");
    LMT_CHECK(wq.device() == biases.device(), "[dequantize] ", name,
              ": packed weight, scales and biases are on different devices");
  } else {
    LMT_CHECK(scales.defined() && scales.shape() == sb && scales.dtype() == DType::u8, "[dequantize] ", name,
              ".scales: must be u8 (", rows, ", ", in / f.group_size, ") for ", mode, ", got ",
              scales.defined() ? scales.describe() : "none");
    LMT_CHECK(!biases.defined(), "[dequantize] ", name, ".biases: present, but ", mode,
              " quantization has no biases (got ", biases.describe(), ")");
  }
  LMT_CHECK(wq.device() == scales.device(), "[dequantize] ", name,
            ": packed weight and scales are on different devices");
}

Tensor dequantize(const Tensor& wq, const Tensor& scales, const Tensor& biases, const QuantFormat& f, DType dt,
                  const std::string& name) {
  check_quantized(wq, scales, biases, f, name);
  LMT_CHECK(is_float(dt), "[dequantize] ", name, ": the output dtype must be f32, bf16 or f16, got ", dtype_name(dt));
  const int64_t rows = wq.dim(0), in = wq.dim(1) * 32 / f.bits;
  if (f.mode == QuantMode::affine) {  // computed in the scales' dtype, as mx.dequantize does
    Tensor out = empty({rows, in}, scales.dtype(), wq.device());
    if (rows > 0)
      backend(wq.device())
          .dequantize_affine(static_cast<const uint32_t*>(wq.raw()), scales.raw(), biases.raw(), out.raw(), rows, in,
                             f.bits, f.group_size, scales.dtype());
    return cast(out, dt);
  }
  Tensor out = empty({rows, in}, dt, wq.device());
  if (rows > 0)
    backend(wq.device())
        .dequantize_fp(static_cast<const uint32_t*>(wq.raw()), static_cast<const uint8_t*>(scales.raw()), out.raw(),
                       rows, in, f.mode, dt);
  return out;
}

Tensor quantized_linear(const Tensor& x, const Tensor& wq, const Tensor& scales, const Tensor& biases,
                        const QuantFormat& f, const Tensor& bias) {
  const int64_t N = wq.dim(0), K = wq.dim(1) * 32 / std::max(f.bits, 1);
  LMT_CHECK(x.ndim() >= 1 && x.dim(-1) == K && is_float(x.dtype()) &&
                (!f.has_biases() || x.dtype() == scales.dtype()) && x.device() == wq.device(),
            "[quantized_linear] input ", x.describe(), " does not fit a quantized weight of ", K, " inputs with ",
            scales.describe(), " scales (", describe(f), ")");
  const int64_t M = x.numel() / std::max<int64_t>(K, 1);
  // Few rows: a kernel that reads the packed weight once, where the backend has one (1-8 rows any mode,
  // 9-64 affine).
  const bool affine = f.mode == QuantMode::affine;
  if (M >= 1 && M <= (affine ? 64 : 8)) {
    check_quantized(wq, scales, biases, f, "quantized_linear");
    Shape os = x.shape();
    os.back() = N;
    Tensor y = empty(os, x.dtype(), x.device());
    Backend& b = backend(x.device());
    const auto* w = static_cast<const uint32_t*>(wq.raw());
    const bool done = !affine  ? b.quantized_gemv_fp(x.raw(), w, static_cast<const uint8_t*>(scales.raw()), y.raw(), M,
                                                     N, K, f.mode, x.dtype())
                      : M <= 8 ? b.quantized_gemv(x.raw(), w, scales.raw(), biases.raw(), y.raw(), M, N, K, f.bits,
                                                  f.group_size, x.dtype())
                               : b.quantized_gemm_rows(x.raw(), w, scales.raw(), biases.raw(), y.raw(), M, N, K, f.bits,
                                                       f.group_size, x.dtype());
    if (done) return bias.defined() ? add(y, bias) : y;
  }
  return linear(x, dequantize(wq, scales, biases, f, x.dtype(), "quantized_linear"), bias);
}

}  // namespace lmtune::ops
