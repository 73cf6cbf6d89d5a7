// f16 values at byte addresses inside ggml blocks, shared by ggml_blocks.cpp and ggml_kquants.cpp.
#pragma once
#include <cstdint>
#include <cstring>

#include "core/fp_formats.h"

namespace lmtune::quant::ggml {

inline void put_f16(char* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

inline float get_f16(const char* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

}  // namespace lmtune::quant::ggml
