// The device's decoders of MLX's fp quantization codes (core/fp_formats.h's, written for the device):
// E2M1 (mxfp4 / nvfp4 values), E4M3 (mxfp8 values, nvfp4 scales) and E8M0 (mx scales), each exact in f32.
// Shared by the dequantization kernels (quantized_fp.cu) and the fused products (qgemv_fp.cu).
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

namespace lmtune {

// E2M1 magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6; bit 3 is the sign.
__device__ __forceinline__ float e2m1_value(uint32_t c) {
  const uint32_t m = c & 7u;
  // 0.5 * m for m < 4 (0, 0.5, 1, 1.5), then 2, 3, 4, 6.
  const float mag = m < 4u ? 0.5f * float(m) : (m == 4u ? 2.f : m == 5u ? 3.f : m == 6u ? 4.f : 6.f);
  return c & 8u ? -mag : mag;
}

// E4M3 (bias 7, no infinities, magnitude 0x7f NaN) -> f32, exactly, without branches. The magnitude's seven bits at
// bits 7..13 of an IEEE half make it the value times 2^-8: exponent field e (bias 15 for E4M3's 7) and mantissa m << 7,
// so (1 + m / 8) 2^(e - 15) for e > 0 and the half subnormal (m / 8) 2^-14 for e = 0 (E4M3's subnormal (m / 8) 2^-6).
// The half -> f32 conversion is exact (half subnormals included) and so is the product with 2^8: for 0x01..0x7e the f32
// is at least 2^-9, a normal.
__device__ __forceinline__ float e4m3_value(uint32_t c) {
  const uint32_t bits = c & 127u;
  const float v = __half2float(__ushort_as_half(uint16_t(bits << 7))) * 256.f;
  const float mag = bits == 127u ? __int_as_float(0x7fc00000) : v;
  return c & 128u ? -mag : mag;
}

// E8M0 -> 2^(s - 127): 0 is the f32 subnormal 2^-127, 255 is +inf (as MLX's 2^(s - 127)). s << 23 is the f32 bits
// of 2^(s - 127) for s = 1..254 and of +inf for 255 (exponent field all ones, mantissa 0); for s = 0 it is 0, below
// every other, so the max with 2^-127's bits picks that one alone, without branches.
__device__ __forceinline__ float e8m0_value(uint32_t s) { return __uint_as_float(max(s << 23, 0x00400000u)); }

}  // namespace lmtune
