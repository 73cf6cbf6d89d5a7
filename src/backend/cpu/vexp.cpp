// The array kernels of vexp.h. Built without trapping math (GCC will not if-convert exp_poly's
// clamps otherwise, and the loops stay scalar; no code reads the FP exception flags), and cloned
// for AVX2 + FMA on x86-64 (the clone is picked once, at load time).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include "backend/cpu/vexp.h"

#include <limits>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LMT_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define LMT_CPU_CLONES
#endif

namespace lmtune::cpu {

LMT_CPU_CLONES float max_of(const float* x, int64_t n) {
  float m[8];
  for (float& v : m) v = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) m[k] = x[i + k] > m[k] ? x[i + k] : m[k];
  for (; i < n; ++i) m[0] = x[i] > m[0] ? x[i] : m[0];
  float r = m[0];
  for (int k = 1; k < 8; ++k) r = m[k] > r ? m[k] : r;
  return r;
}

LMT_CPU_CLONES double exp_sub_sum(const float* x, float sub, float* y, int64_t n) {
  double acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) {
      y[i + k] = exp_poly(x[i + k] - sub);
      acc[k] += double(y[i + k]);
    }
  for (; i < n; ++i) {
    y[i] = exp_poly(x[i] - sub);
    acc[0] += double(y[i]);
  }
  double s = 0;
  for (double v : acc) s += v;
  return s;
}

LMT_CPU_CLONES void exp_sub_scale(const float* x, float sub, float scale, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = exp_poly(x[i] - sub) * scale;
}

LMT_CPU_CLONES double sum_squares(const float* x, int64_t n) {
  double acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += double(x[i + k]) * x[i + k];
  for (; i < n; ++i) acc[0] += double(x[i]) * x[i];
  double s = 0;
  for (double v : acc) s += v;
  return s;
}

LMT_CPU_CLONES void swiglu_rows(const float* g, const float* u, float* o, int64_t n) {
  for (int64_t i = 0; i < n; ++i) o[i] = g[i] / (1.f + exp_poly(-g[i])) * u[i];
}

LMT_CPU_CLONES void swiglu_backward_rows(const float* g, const float* u, const float* d, float* dg, float* du,
                                         int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float s = 1.f / (1.f + exp_poly(-g[i]));
    float silu = g[i] * s;
    du[i] = d[i] * silu;
    dg[i] = d[i] * u[i] * s * (1.f + g[i] * (1.f - s));
  }
}

}  // namespace lmtune::cpu
