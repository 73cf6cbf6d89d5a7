// CPU kernel for MLX's affine quantization (the KV cache's --kv-bits) over raw pointers: the same
// group quantizer as quant/affine.cpp (core/affine_group.h), which tests compare with mx.quantize
// bit for bit; tests also check the two are byte-identical.
#include <algorithm>
#include <cmath>
#include <limits>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/profile.h"
#include "core/affine_group.h"
#include "core/error.h"

namespace lmtune {

namespace {

// Storage <-> f32; store() writes MLX's NaNs (bf16 0x7fc0, f16 sign | 0x7d00) as quant/ does.
struct F32 {
  using T = float;
  static float load(T v) { return v; }
  static T store(float x) { return x; }
};
struct Bf16 {
  using T = uint16_t;
  static float load(T v) { return bf16_to_f32(v); }
  static T store(float x) { return std::isnan(x) ? uint16_t(0x7fc0) : f32_to_bf16(x); }
};
struct F16 {
  using T = uint16_t;
  static float load(T v) { return f16_to_f32(v); }
  static T store(float x) { return std::isnan(x) ? uint16_t((std::signbit(x) ? 0x8000 : 0) | 0x7d00) : f32_to_f16(x); }
};

template <typename D>
void quantize_rows(const void* w_, uint32_t* wq, void* scales_, void* biases_, int64_t rows, int64_t in, int bits,
                   int group_size) {
  using T = typename D::T;
  const T* w = static_cast<const T*>(w_);
  T* scales = static_cast<T*>(scales_);
  T* biases = static_cast<T*>(biases_);
  const int64_t groups = in / group_size, words = in * bits / 32;
  float x[128];
  uint8_t codes[128];
  for (int64_t r = 0; r < rows; ++r) {
    uint32_t* out = wq + r * words;
    uint64_t acc = 0;  // LSB-first bit stream of the row (a group fills whole words)
    int n = 0;
    for (int64_t g = 0; g < groups; ++g) {
      const T* src = w + r * in + g * group_size;
      for (int j = 0; j < group_size; ++j) x[j] = D::load(src[j]);
      const AffineGroup q = affine_quantize_group(x, group_size, bits, codes);
      for (int j = 0; j < group_size; ++j) {
        acc |= uint64_t(codes[j]) << n;
        n += bits;
        if (n >= 32) {
          *out++ = uint32_t(acc);
          acc >>= 32;
          n -= 32;
        }
      }
      scales[r * groups + g] = D::store(q.scale);
      biases[r * groups + g] = D::store(q.bias);
    }
  }
}

}  // namespace

void CpuBackend::quantize_affine(const void* w, uint32_t* wq, void* scales, void* biases, int64_t rows, int64_t in,
                                 int bits, int group_size, DType dt) {
  LMT_CPU_PROFILE("quantize_affine");
  LMT_CHECK(group_size <= 128 && in % group_size == 0 && group_size * bits % 32 == 0,
            "[quantize_affine] cpu: group size ", group_size, " with ", bits, " bits over ", in, " inputs");
  switch (dt) {
    case DType::f32: return quantize_rows<F32>(w, wq, scales, biases, rows, in, bits, group_size);
    case DType::bf16: return quantize_rows<Bf16>(w, wq, scales, biases, rows, in, bits, group_size);
    case DType::f16: return quantize_rows<F16>(w, wq, scales, biases, rows, in, bits, group_size);
    default: fail("[quantize_affine] cpu: unsupported dtype ", dtype_name(dt));
  }
}

}  // namespace lmtune
