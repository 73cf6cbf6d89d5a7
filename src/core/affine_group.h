// One group of MLX's affine quantization, as MLX's CPU backend computes it (mlx/backend/cpu/
// quantized.cpp `quantize`), shared by quant/ (the reference that convert uses, compared with
// mx.quantize bit for bit) and the CPU backend's quantize_affine (the KV cache's --kv-bits), which
// sits below quant/. In f32:
//   scale = max((max - min) / (2^bits - 1), 1e-7), negated unless |min| > |max|;
//   edge  = min if |min| > |max| else max (the larger-magnitude end);
//   q0    = rint(edge / scale); if q0 != 0: scale = edge / q0, bias = edge; else bias = 0;
//   code  = clip(rint((w - bias) / scale), 0, 2^bits - 1)   (rint: ties to even; NaN -> 0).
// So the edge is represented exactly and the scale is negative when the codes count down from max.
// The caller stores scale and bias rounded to the weight's dtype; the codes use the f32 values.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace lmtune {

struct AffineGroup {
  float scale, bias;
};

// x: the group's n (<= 128) values in f32 -> codes[0..n) and the group's f32 scale and bias.
inline AffineGroup affine_quantize_group(const float* x, int n, int bits, uint8_t* codes) {
  const float n_bins = float((1 << bits) - 1);
  float w_min = std::numeric_limits<float>::infinity(), w_max = -w_min;
  for (int j = 0; j < n; ++j) {
    w_max = std::max(w_max, x[j]);
    w_min = std::min(w_min, x[j]);
  }
  const bool min_edge = std::abs(w_min) > std::abs(w_max);
  float scale = std::max((w_max - w_min) / n_bins, 1e-7f);
  scale = min_edge ? scale : -scale;
  const float edge = min_edge ? w_min : w_max;
  const float q0 = std::rint(edge / scale);
  float bias = 0;
  if (q0 != 0) {
    scale = edge / q0;
    bias = edge;
  }
  for (int j = 0; j < n; ++j) {
    // rint (ties to even) of the positive values by the 2^23 trick, which vectorizes; values <= 0
    // and NaN (0 / 0 when a huge constant row made the scale 0, which MLX's float-to-integer cast
    // also turns into 0) give code 0, those past 2^bits - 1 the top code.
    const float v = (x[j] - bias) / scale;
    const float r = (std::min(v, 0x1p23f) + 0x1p23f) - 0x1p23f;
    codes[j] = v > 0 ? uint8_t(std::min(r, n_bins)) : uint8_t(0);
  }
  return {scale, bias};
}

}  // namespace lmtune
