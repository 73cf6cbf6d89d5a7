// CPU kernels for MLX's quantized layout: dequantization and the fused decoding GEMV of the affine
// mode and of the fp modes (mxfp4, nvfp4, mxfp8), rows split over the cores.
#include <algorithm>
#include <array>
#include <cmath>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <type_traits>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/parallel.h"
#include "backend/cpu/profile.h"
#include "core/error.h"
#include "core/fp_formats.h"

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

// y (M, N) = x (M, K) W^T for W in MLX's affine layout, all f32: per group, scale * (q . x) +
// bias * sum(x), as MLX's quantized matmul accumulates it (not dequantize-then-dot, so it differs
// from dense products by f32 rounding only). BITS is a compile-time constant so that the code
// extraction unrolls (word by word where codes do not straddle words); the dots keep 8 partial
// sums so that they vectorize without reassociation flags. Rows n in [n0, n1).
template <int BITS>
[[gnu::always_inline]] inline void qgemv_body(const float* x, const uint32_t* wq, const float* scales,
                                              const float* biases, float* y, int64_t M, int64_t N, int64_t K,
                                              int group_size, const float* xsum, int64_t n0, int64_t n1) {
  constexpr uint32_t kMask = (1u << BITS) - 1;
  const int64_t words = K * BITS / 32, groups = K / group_size;
  alignas(32) float codes[128];
  float acc[8];
  for (int64_t n = n0; n < n1; ++n) {
    const uint32_t* w = wq + n * words;
    for (int64_t m = 0; m < M; ++m) acc[m] = 0.f;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t i0 = g * group_size;
      if constexpr (32 % BITS == 0) {
        constexpr int kPer = 32 / BITS;
        const uint32_t* wg = w + i0 / kPer;
        for (int u = 0; u < group_size / kPer; ++u) {
          const uint32_t word = wg[u];
          for (int k = 0; k < kPer; ++k) codes[u * kPer + k] = float((word >> (k * BITS)) & kMask);
        }
      } else {
        for (int j = 0; j < group_size; ++j) {
          const int64_t bit = (i0 + j) * BITS, word = bit >> 5;
          const int off = int(bit & 31);
          uint32_t q = w[word] >> off;
          if (off + BITS > 32) q |= w[word + 1] << (32 - off);
          codes[j] = float(q & kMask);
        }
      }
      const float scale = scales[n * groups + g], bias = biases[n * groups + g];
      for (int64_t m = 0; m < M; ++m) {
        const float* xm = x + m * K + i0;
        float part[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        for (int j = 0; j < group_size; j += 8)
          for (int l = 0; l < 8; ++l) part[l] += codes[j + l] * xm[j + l];
        const float dot = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
        acc[m] += scale * dot + bias * xsum[m * groups + g];
      }
    }
    for (int64_t m = 0; m < M; ++m) y[m * N + n] = acc[m];
  }
}

using QgemvFn = void (*)(const float*, const uint32_t*, const float*, const float*, float*, int64_t, int64_t, int64_t,
                         int, const float*, int64_t, int64_t);

template <int BITS>
void qgemv_plain(const float* x, const uint32_t* wq, const float* s, const float* b, float* y, int64_t M, int64_t N,
                 int64_t K, int g, const float* xsum, int64_t n0, int64_t n1) {
  qgemv_body<BITS>(x, wq, s, b, y, M, N, K, g, xsum, n0, n1);
}

// The same code compiled for AVX2 + FMA, chosen at run time where the processor has them (the
// binary itself targets the x86-64 baseline).
template <int BITS>
__attribute__((target("avx2,fma"))) void qgemv_avx2(const float* x, const uint32_t* wq, const float* s, const float* b,
                                                    float* y, int64_t M, int64_t N, int64_t K, int g, const float* xsum,
                                                    int64_t n0, int64_t n1) {
  qgemv_body<BITS>(x, wq, s, b, y, M, N, K, g, xsum, n0, n1);
}

#if defined(__x86_64__)
// 4 and 8 bits in groups of 32, 64 or 128 with AVX2 written out: a group's codes become GS / 8
// vectors of 8 floats (4 bits: a word broadcast, shifted lane by lane and masked; 8 bits: 8 bytes
// widened), then each x row's dot keeps the same 8 partial sums, in the same order, as
// qgemv_body's vectorized loop, so the results are the same; the codes are unpacked once for all
// M rows of x and never go through memory. About 5x qgemv_body's speed at 4 bits.
template <int BITS, int GS>
__attribute__((target("avx2,fma"))) void qgemv_simd(const float* x, const uint32_t* wq, const float* scales,
                                                    const float* biases, float* y, int64_t M, int64_t N, int64_t K, int,
                                                    const float* xsum, int64_t n0, int64_t n1) {
  static_assert(BITS == 4 || BITS == 8, "whole codes a word");
  constexpr int kVecs = GS / 8, kGroupWords = GS * BITS / 32;
  const int64_t words = K * BITS / 32, groups = K / GS;
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28), mask = _mm256_set1_epi32(0xF);
  for (int64_t n = n0; n < n1; ++n) {
    const uint32_t* w = wq + n * words;
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int64_t g = 0; g < groups; ++g) {
      const uint32_t* wg = w + g * kGroupWords;
      __m256 c[kVecs];
      for (int v = 0; v < kVecs; ++v) {
        __m256i q;
        if constexpr (BITS == 4)
          q = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(wg[v])), shifts), mask);
        else
          q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(wg + 2 * v)));
        c[v] = _mm256_cvtepi32_ps(q);
      }
      const float scale = scales[n * groups + g], bias = biases[n * groups + g];
      for (int64_t m = 0; m < M; ++m) {
        const float* xm = x + m * K + g * GS;
        __m256 part = _mm256_mul_ps(c[0], _mm256_loadu_ps(xm));
        for (int v = 1; v < kVecs; ++v) part = _mm256_fmadd_ps(c[v], _mm256_loadu_ps(xm + 8 * v), part);
        alignas(32) float p[8];
        _mm256_store_ps(p, part);
        const float dot = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
        acc[m] += scale * dot + bias * xsum[m * groups + g];
      }
    }
    for (int64_t m = 0; m < M; ++m) y[m * N + n] = acc[m];
  }
}
#endif

template <int BITS>
QgemvFn qgemv_for(int group_size) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) {
    if constexpr (BITS == 4 || BITS == 8) {
      if (group_size == 32) return qgemv_simd<BITS, 32>;
      if (group_size == 64) return qgemv_simd<BITS, 64>;
      if (group_size == 128) return qgemv_simd<BITS, 128>;
    }
    return qgemv_avx2<BITS>;
  }
#endif
  (void)group_size;
  return qgemv_plain<BITS>;
}

// Runs f(r0, r1) over [0, rows) split across the cores (parallel.h's pool), on this thread alone
// when `work` is below 1 (units chosen by each caller so that 1 repays waking the pool).
template <typename F>
void split_rows(int64_t rows, int64_t work, F&& f) {
  cpu::parallel_rows(rows, work, f);
}

}  // namespace

void CpuBackend::dequantize_affine(const uint32_t* wq, const void* scales, const void* biases, void* out, int64_t rows,
                                   int64_t in, int bits, int group_size, DType dt) {
  LMT_CPU_PROFILE("dequantize_affine");
  auto run = [&](int64_t r0, int64_t r1) {
    switch (dt) {
      case DType::f32: return dequantize_rows<F32>(wq, scales, biases, out, r0, r1, in, bits, group_size);
      case DType::bf16: return dequantize_rows<Bf16>(wq, scales, biases, out, r0, r1, in, bits, group_size);
      case DType::f16: return dequantize_rows<F16>(wq, scales, biases, out, r0, r1, in, bits, group_size);
      default: fail("[dequantize_affine] cpu: unsupported dtype ", dtype_name(dt));
    }
  };
  split_rows(rows, rows * in / (1 << 18), run);
}

}  // namespace lmtune

namespace lmtune {

bool CpuBackend::quantized_gemv(const void* x, const uint32_t* wq, const void* scales, const void* biases, void* y,
                                int64_t M, int64_t N, int64_t K, int bits, int group_size, DType dt) {
  LMT_CPU_PROFILE("quantized_gemv");
  if (dt != DType::f32 || M < 1 || M > 8 || group_size > 128) return false;
  const float* xf = static_cast<const float*>(x);
  const int64_t groups = K / group_size;
  std::vector<float> xsum(size_t(M * groups));  // sum of x over each group, shared by every row
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < groups; ++g) {
      float s = 0.f;
      for (int64_t i = g * group_size; i < (g + 1) * group_size; ++i) s += xf[m * K + i];
      xsum[size_t(m * groups + g)] = s;
    }
  const QgemvFn kernel = bits == 2   ? qgemv_for<2>(group_size)
                         : bits == 3 ? qgemv_for<3>(group_size)
                         : bits == 4 ? qgemv_for<4>(group_size)
                         : bits == 5 ? qgemv_for<5>(group_size)
                         : bits == 6 ? qgemv_for<6>(group_size)
                         : bits == 8 ? qgemv_for<8>(group_size)
                                     : nullptr;
  LMT_CHECK(kernel, "[quantized_gemv] cpu: bits ", bits);
  auto run = [&](int64_t n0, int64_t n1) {
    kernel(xf, wq, static_cast<const float*>(scales), static_cast<const float*>(biases), static_cast<float*>(y), M, N,
           K, group_size, xsum.data(), n0, n1);
  };
  split_rows(N, N * K / (1 << 16), run);
  return true;
}

}  // namespace lmtune

// MLX's fp modes (mxfp4, nvfp4, mxfp8): u8 scales and floating-point codes, no biases.
namespace lmtune {

namespace {

constexpr int fp_bits(QuantMode m) { return m == QuantMode::mxfp8 ? 8 : 4; }
constexpr int fp_group(QuantMode m) { return m == QuantMode::nvfp4 ? 16 : 32; }

// Every code's value in f32 (E2M1: 16, E4M3: 256) and every scale's (E4M3 for nvfp4, else E8M0).
const float* fp_code_values(int bits) {
  static const auto e4m3 = [] {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c) t[size_t(c)] = e4m3_to_f32(uint8_t(c));
    return t;
  }();
  return bits == 4 ? kE2m1Values : e4m3.data();
}
const float* fp_scale_values(QuantMode m) {
  static const auto tables = [] {
    std::array<std::array<float, 256>, 2> t{};
    for (int c = 0; c < 256; ++c) t[0][size_t(c)] = e8m0_to_f32(uint8_t(c)), t[1][size_t(c)] = e4m3_to_f32(uint8_t(c));
    return t;
  }();
  return tables[m == QuantMode::nvfp4 ? 1 : 0].data();
}

// D::store, writing MLX's own NaNs (bf16 0x7fc0, f16 sign | 0x7d00: quant/quant_impl.h) so that even
// 0 * inf (code 0 under scale 255) matches mx.dequantize bit for bit.
template <typename D>
typename D::T store_mlx(float x) {
  if constexpr (!std::is_same_v<typename D::T, float>) {
    if (std::isnan(x)) {
      if constexpr (std::is_same_v<D, Bf16>) return uint16_t(0x7fc0);
      return uint16_t((std::signbit(x) ? 0x8000 : 0) | 0x7d00);
    }
  }
  return D::store(x);
}

// out (rows, in) = round_D(round_D(v) * round_D(s)) per code, rows [r0, r1). An fp4 group is a
// 16-entry table of its products, looked up per code.
template <typename D>
void dequantize_fp_rows(const uint32_t* wq, const uint8_t* scales, void* out, int64_t r0, int64_t r1, int64_t in,
                        QuantMode mode) {
  using T = typename D::T;
  const int bits = fp_bits(mode), group_size = fp_group(mode);
  const int64_t words = in * bits / 32, groups = in / group_size, group_words = group_size * bits / 32;
  const float* values = fp_code_values(bits);
  const float* scale_values = fp_scale_values(mode);
  float rounded[256];
  for (int c = 0; c < (1 << bits); ++c) rounded[c] = D::round(values[c]);
  T* o = static_cast<T*>(out);
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t* w = wq + r * words;
    for (int64_t g = 0; g < groups; ++g) {
      const float s = D::round(scale_values[scales[r * groups + g]]);
      const uint32_t* wg = w + g * group_words;
      T* dst = o + r * in + g * group_size;
      if (bits == 4) {
        T table[16];
        for (int c = 0; c < 16; ++c) table[c] = store_mlx<D>(rounded[c] * s);
        for (int64_t u = 0; u < group_words; ++u)
          for (int k = 0; k < 8; ++k) dst[u * 8 + k] = table[(wg[u] >> (4 * k)) & 15u];
      } else {
        for (int64_t u = 0; u < group_words; ++u)
          for (int k = 0; k < 4; ++k) dst[u * 4 + k] = store_mlx<D>(rounded[(wg[u] >> (8 * k)) & 255u] * s);
      }
    }
  }
}

// y (M, N) = x (M, K) W^T, all f32, for W in fp mode MODE: per group, s * (v . x), the codes' values
// looked up and the dot kept in 8 partial sums (as qgemv_body). Rows n in [n0, n1).
template <QuantMode MODE>
[[gnu::always_inline]] inline void qgemv_fp_body(const float* x, const uint32_t* wq, const uint8_t* scales, float* y,
                                                 int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1) {
  constexpr int kBits = fp_bits(MODE), kGroup = fp_group(MODE), kPer = 32 / kBits;
  constexpr uint32_t kMask = (1u << kBits) - 1;
  const float* values = fp_code_values(kBits);
  const float* scale_values = fp_scale_values(MODE);
  const int64_t words = K * kBits / 32, groups = K / kGroup;
  alignas(32) float codes[kGroup];
  float acc[8];
  for (int64_t n = n0; n < n1; ++n) {
    const uint32_t* w = wq + n * words;
    for (int64_t m = 0; m < M; ++m) acc[m] = 0.f;
    for (int64_t g = 0; g < groups; ++g) {
      const uint32_t* wg = w + g * (kGroup / kPer);
      for (int u = 0; u < kGroup / kPer; ++u) {
        const uint32_t word = wg[u];
        for (int k = 0; k < kPer; ++k) codes[u * kPer + k] = values[(word >> (k * kBits)) & kMask];
      }
      const float s = scale_values[scales[n * groups + g]];
      for (int64_t m = 0; m < M; ++m) {
        const float* xm = x + m * K + g * kGroup;
        float part[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        for (int j = 0; j < kGroup; j += 8)
          for (int l = 0; l < 8; ++l) part[l] += codes[j + l] * xm[j + l];
        acc[m] += s * (((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7])));
      }
    }
    for (int64_t m = 0; m < M; ++m) y[m * N + n] = acc[m];
  }
}

using QgemvFpFn = void (*)(const float*, const uint32_t*, const uint8_t*, float*, int64_t, int64_t, int64_t, int64_t,
                           int64_t);

template <QuantMode MODE>
void qgemv_fp_plain(const float* x, const uint32_t* wq, const uint8_t* s, float* y, int64_t M, int64_t N, int64_t K,
                    int64_t n0, int64_t n1) {
  qgemv_fp_body<MODE>(x, wq, s, y, M, N, K, n0, n1);
}

template <QuantMode MODE>
__attribute__((target("avx2,fma"))) void qgemv_fp_avx2(const float* x, const uint32_t* wq, const uint8_t* s, float* y,
                                                       int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1) {
  qgemv_fp_body<MODE>(x, wq, s, y, M, N, K, n0, n1);
}

template <QuantMode MODE>
QgemvFpFn qgemv_fp_for() {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) return qgemv_fp_avx2<MODE>;
#endif
  return qgemv_fp_plain<MODE>;
}

}  // namespace

void CpuBackend::dequantize_fp(const uint32_t* wq, const uint8_t* scales, void* out, int64_t rows, int64_t in,
                               QuantMode mode, DType dt) {
  LMT_CPU_PROFILE("dequantize_fp");
  LMT_CHECK(mode != QuantMode::affine, "[dequantize_fp] cpu: mode affine has its own kernel");
  auto run = [&](int64_t r0, int64_t r1) {
    switch (dt) {
      case DType::f32: return dequantize_fp_rows<F32>(wq, scales, out, r0, r1, in, mode);
      case DType::bf16: return dequantize_fp_rows<Bf16>(wq, scales, out, r0, r1, in, mode);
      case DType::f16: return dequantize_fp_rows<F16>(wq, scales, out, r0, r1, in, mode);
      default: fail("[dequantize_fp] cpu: unsupported dtype ", dtype_name(dt));
    }
  };
  split_rows(rows, rows * in / (1 << 18), run);
}

bool CpuBackend::quantized_gemv_fp(const void* x, const uint32_t* wq, const uint8_t* scales, void* y, int64_t M,
                                   int64_t N, int64_t K, QuantMode mode, DType dt) {
  LMT_CPU_PROFILE("quantized_gemv_fp");
  if (dt != DType::f32 || M < 1 || M > 8 || mode == QuantMode::affine) return false;
  const QgemvFpFn kernel = mode == QuantMode::mxfp4   ? qgemv_fp_for<QuantMode::mxfp4>()
                           : mode == QuantMode::nvfp4 ? qgemv_fp_for<QuantMode::nvfp4>()
                                                      : qgemv_fp_for<QuantMode::mxfp8>();
  split_rows(N, N * K / (1 << 16), [&](int64_t n0, int64_t n1) {
    kernel(static_cast<const float*>(x), wq, scales, static_cast<float*>(y), M, N, K, n0, n1);
  });
  return true;
}

}  // namespace lmtune
