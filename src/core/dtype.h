// Element types and devices, and the bf16/f16 <-> f32 conversions used on the CPU.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace lmtune {

enum class DType : uint8_t { f32, bf16, f16, i32, u32, i64, i8, u8 };
enum class Device : uint8_t { cpu, cuda };

size_t dtype_size(DType dt);
const char* dtype_name(DType dt);   // "f32", "bf16", ...
const char* device_name(Device d);  // "cpu", "cuda"
bool is_float(DType dt);
DType parse_dtype(std::string_view name);  // accepts f32/float32/bf16/bfloat16/f16/float16

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, as torch and CUDA do; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t((bits + rounding) >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

}  // namespace lmtune
