// Affine quantization as MLX's CPU backend computes it (mlx/backend/cpu/quantized.cpp `quantize`,
// ops.cpp `affine_dequantize`): one group at a time by core/affine_group.h, which says how. Scale
// and bias are stored rounded to the weight's dtype, but the codes use the unrounded f32 values.
// Dequantization: (scale * q, rounded) + bias, rounded, both in the scales' dtype (two MLX ops, no
// fused multiply-add).
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/affine_group.h"
#include "quant/quant_impl.h"

namespace lmtune::quant::detail {

namespace {

template <typename D>
void quantize_rows(const typename D::T* w, uint32_t* wq, typename D::T* scales, typename D::T* biases, int64_t r0,
                   int64_t r1, int64_t in, int bits, int group_size) {
  const int64_t groups = in / group_size, words = in * bits / 32;
  float x[128];  // one group as f32
  uint8_t codes[128];
  for (int64_t r = r0; r < r1; ++r) {
    BitWriter out(wq + r * words);
    for (int64_t g = 0; g < groups; ++g) {
      const typename D::T* src = w + r * in + g * group_size;
      for (int j = 0; j < group_size; ++j) x[j] = D::load(src[j]);
      const AffineGroup q = affine_quantize_group(x, group_size, bits, codes);
      for (int j = 0; j < group_size; ++j) out.put(codes[j], bits);
      scales[r * groups + g] = D::store(q.scale);
      biases[r * groups + g] = D::store(q.bias);
    }
  }
}

template <typename S, typename O>
void dequantize_rows(const uint32_t* wq, const typename S::T* scales, const typename S::T* biases, typename O::T* out,
                     int64_t r0, int64_t r1, int64_t in, int bits, int group_size) {
  const int64_t groups = in / group_size, words = in * bits / 32;
  for (int64_t r = r0; r < r1; ++r) {
    BitReader codes(wq + r * words);
    for (int64_t g = 0; g < groups; ++g) {
      const float s = S::load(scales[r * groups + g]), b = S::load(biases[r * groups + g]);
      typename O::T* dst = out + r * in + g * group_size;
      for (int j = 0; j < group_size; ++j) {
        const float scaled = S::round(float(codes.get(bits)) * s);
        dst[j] = O::store(S::round(scaled + b));
      }
    }
  }
}

}  // namespace

void affine_quantize(const Tensor& w, const QuantParams& p, QuantizedWeight& q) {
  const int64_t in = w.dim(-1), rows = w.numel() / in;
  with_float_type(w.dtype(), "quantize", [&](auto d) {
    using D = decltype(d);
    using T = typename D::T;
    const T* src = w.data<T>();
    uint32_t* wq = q.wq.data<uint32_t>();
    T* scales = q.scales.data<T>();
    T* biases = q.biases.data<T>();
    for_row_slices(rows, in, [&](int64_t r0, int64_t r1) {
      quantize_rows<D>(src, wq, scales, biases, r0, r1, in, p.bits, p.group_size);
    });
  });
}

void affine_dequantize(const QuantizedWeight& q, Tensor& out) {
  const int64_t in = q.in_features(), rows = out.numel() / in;
  const QuantParams& p = q.params;
  with_float_type(q.scales.dtype(), "dequantize", [&](auto s) {
    using S = decltype(s);
    with_float_type(out.dtype(), "dequantize", [&](auto o) {
      using O = decltype(o);
      const uint32_t* wq = q.wq.data<uint32_t>();
      const typename S::T* scales = q.scales.data<typename S::T>();
      const typename S::T* biases = q.biases.data<typename S::T>();
      typename O::T* dst = out.data<typename O::T>();
      for_row_slices(rows, in, [&](int64_t r0, int64_t r1) {
        dequantize_rows<S, O>(wq, scales, biases, dst, r0, r1, in, p.bits, p.group_size);
      });
    });
  });
}

}  // namespace lmtune::quant::detail
