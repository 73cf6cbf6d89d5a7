// The small float formats of MLX's fp quantization modes, encoded and decoded exactly as MLX's CPU
// backend does (mlx/backend/cpu/unary_ops.h ToFP8/FromFP8, ops.cpp's fp4 table): E2M1 codes
// (mxfp4, nvfp4), E4M3 codes and scales (mxfp8 codes, nvfp4 scales), E8M0 scales (mxfp4, mxfp8).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/dtype.h"

namespace lmtune {

// E2M1 code -> value: sign bit 3, then magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6.
inline constexpr float kE2m1Values[16] = {+0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
                                          -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// E4M3 (bias 7, no infinities, 0x7f / 0xff NaN; max 448) -> f32, exact.
inline float e4m3_to_f32(uint8_t x) {
  // MLX moves the 7 magnitude bits into an f16 (bias 15) and multiplies by 2^8; 0x7f becomes an
  // f16 NaN through the carry into bit 14.
  const uint16_t v = x & 127;
  const uint16_t h = uint16_t((v << 7) | (((v + 1) >> 7) << 14) | (uint16_t(x >> 7) << 15));
  return f16_to_f32(h) * 256.0f;
}

// f32 -> E4M3, rounding to nearest even; |x| >= 448, infinities and NaN saturate to +-448 (0x7e).
inline uint8_t f32_to_e4m3(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  uint8_t r;
  if (bits >= (543u << 21)) {  // 448 and above
    r = 0x7e;
  } else if (bits < (121u << 23)) {  // below 2^-6: E4M3 subnormals, rounded by an f32 add of 2^14
    const uint32_t magic_bits = 141u << 23;
    float x, magic;
    std::memcpy(&x, &bits, 4);
    std::memcpy(&magic, &magic_bits, 4);
    const float y = x + magic;
    uint32_t ybits;
    std::memcpy(&ybits, &y, 4);
    r = uint8_t(ybits - magic_bits);
  } else {  // normal: rebias the exponent and round the mantissa to 3 bits, ties to even
    const uint32_t mant_odd = (bits >> 20) & 1;
    bits += (uint32_t(7 - 127) << 23) + 0x7ffffu + mant_odd;
    r = uint8_t(bits >> 20);
  }
  return uint8_t(r | (sign >> 24));
}

// E8M0 scale -> 2^(s - 127) as f32 (255 gives +inf, as MLX's 2^(s - 127) does).
inline float e8m0_to_f32(uint8_t s) { return std::ldexp(1.0f, int(s) - 127); }

}  // namespace lmtune
