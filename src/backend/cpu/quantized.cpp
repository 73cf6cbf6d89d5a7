// CPU kernels for MLX's quantized layout: affine dequantization, rows split over the cores.
#include <algorithm>
#include <thread>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"

namespace lmtune {

namespace {

// Storage <-> f32 for the three float dtypes; round() is the storage type's rounding.
struct F32 {
  using T = float;
  static float load(const T* p, int64_t i) { return p[i]; }
  static T store(float x) { return x; }
  static float round(float x) { return x; }
};
struct Bf16 {
  using T = uint16_t;
  static float load(const T* p, int64_t i) { return bf16_to_f32(p[i]); }
  static T store(float x) { return f32_to_bf16(x); }
  static float round(float x) { return bf16_to_f32(f32_to_bf16(x)); }
};
struct F16 {
  using T = uint16_t;
  static float load(const T* p, int64_t i) { return f16_to_f32(p[i]); }
  static T store(float x) { return f32_to_f16(x); }
  static float round(float x) { return f16_to_f32(f32_to_f16(x)); }
};

template <typename D>
void dequantize_rows(const uint32_t* wq, const void* scales, const void* biases, void* out, int64_t r0, int64_t r1,
                     int64_t in, int bits, int group_size) {
  using T = typename D::T;
  const int64_t words = in * bits / 32, groups = in / group_size;
  const uint32_t mask = bits == 32 ? ~0u : (1u << bits) - 1;
  const T* s = static_cast<const T*>(scales);
  const T* b = static_cast<const T*>(biases);
  T* o = static_cast<T*>(out);
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t* w = wq + r * words;
    for (int64_t g = 0; g < groups; ++g) {
      const float scale = D::load(s, r * groups + g), bias = D::load(b, r * groups + g);
      for (int64_t i = g * group_size; i < (g + 1) * group_size; ++i) {
        const int64_t bit = i * bits, word = bit >> 5;
        const int off = int(bit & 31);
        uint32_t q = w[word] >> off;
        if (off + bits > 32) q |= w[word + 1] << (32 - off);
        o[r * in + i] = D::store(D::round(D::round(scale * float(q & mask)) + bias));
      }
    }
  }
}

}  // namespace

void CpuBackend::dequantize_affine(const uint32_t* wq, const void* scales, const void* biases, void* out, int64_t rows,
                                   int64_t in, int bits, int group_size, DType dt) {
  auto run = [&](int64_t r0, int64_t r1) {
    switch (dt) {
      case DType::f32: return dequantize_rows<F32>(wq, scales, biases, out, r0, r1, in, bits, group_size);
      case DType::bf16: return dequantize_rows<Bf16>(wq, scales, biases, out, r0, r1, in, bits, group_size);
      case DType::f16: return dequantize_rows<F16>(wq, scales, biases, out, r0, r1, in, bits, group_size);
      default: fail("[dequantize_affine] cpu: unsupported dtype ", dtype_name(dt));
    }
  };
  // Threads only where the work dwarfs starting them (a few hundred thousand elements).
  const int64_t n_threads =
      std::min<int64_t>(std::max(1u, std::thread::hardware_concurrency()), std::max<int64_t>(1, rows * in / (1 << 18)));
  if (n_threads <= 1 || rows < 2) return run(0, rows);
  std::vector<std::thread> pool;
  const int64_t per = (rows + n_threads - 1) / n_threads;
  for (int64_t t = 1; t < n_threads; ++t) {
    int64_t r0 = t * per, r1 = std::min(rows, r0 + per);
    if (r0 < r1) pool.emplace_back(run, r0, r1);
  }
  run(0, std::min(rows, per));
  for (std::thread& th : pool) th.join();
}

}  // namespace lmtune
