// The device's decoders of MLX's fp quantization codes (core/fp_formats.h's, written for the device):
// E2M1 (mxfp4 / nvfp4 values), E4M3 (mxfp8 values, nvfp4 scales) and E8M0 (mx scales), each exact in f32.
// Shared by the dequantization kernels (quantized_fp.cu) and the fused products (qgemv_fp.cu).
#pragma once

#include <cstdint>

namespace lmtune {

// E2M1 magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6; bit 3 is the sign.
__device__ __forceinline__ float e2m1_value(uint32_t c) {
  const uint32_t m = c & 7u;
  // 0.5 * m for m < 4 (0, 0.5, 1, 1.5), then 2, 3, 4, 6.
  const float mag = m < 4u ? 0.5f * float(m) : (m == 4u ? 2.f : m == 5u ? 3.f : m == 6u ? 4.f : 6.f);
  return c & 8u ? -mag : mag;
}

// E4M3 (bias 7, no infinities, magnitude 0x7f NaN) -> f32, exactly.
__device__ __forceinline__ float e4m3_value(uint32_t c) {
  const uint32_t e = (c >> 3) & 15u, m = c & 7u;
  float mag;
  if ((c & 127u) == 127u)
    mag = __int_as_float(0x7fc00000);
  else if (e == 0)
    mag = float(m) * 0.001953125f;  // m * 2^-9: subnormals
  else
    mag = __int_as_float(int((e + 120u) << 23 | m << 20));  // (1 + m / 8) * 2^(e - 7)
  return c & 128u ? -mag : mag;
}

// E8M0 -> 2^(s - 127): 0 is the f32 subnormal 2^-127, 255 is +inf (as MLX's 2^(s - 127)).
__device__ __forceinline__ float e8m0_value(uint32_t s) {
  return s == 0 ? __int_as_float(0x00400000) : s == 255 ? __int_as_float(0x7f800000) : __int_as_float(int(s << 23));
}

}  // namespace lmtune
