// exp over float arrays in a form the compiler vectorizes (std::exp is a scalar libm call: the
// CPU attention and swiglu spent most of their non-product time in it). exp_poly: Cody-Waite
// reduction x = k ln2 + r, |r| <= ln2 / 2, and Cephes' degree-6 polynomial for exp(r), within 2
// ulp of the exact value over the normal range (1.4 ulp measured); below -88 (past the f32 normal
// range) the result is 0, so exp(-inf) = 0; above 88.72, inf. The array kernels (vexp.cpp) are
// built for AVX2 + FMA too and picked at run time; their sums run in 8 double lanes in a fixed
// order, so a result does not change from run to run.
#pragma once
#include <bit>
#include <cstdint>

namespace lmtune::cpu {

inline float exp_poly(float x) {
  x = x < -88.f ? -88.f : x;
  x = x > 88.7228f ? 88.7228f : x;
  // Round x / ln2 to the nearest integer by the 1.5 * 2^23 trick (no libm call, vectorizes).
  const float kf = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
  float r = x - kf * 0.693359375f;
  r = r - kf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.f;
  // 2^k as an f32 bit pattern; k = -127 (x = -88) gives the bits of 0. A NaN x stays NaN through y;
  // its k is taken as 0, since converting NaN to an integer is undefined (UBSan found it: NaN weights).
  const float kd = kf == kf ? kf : 0.f;
  return y * std::bit_cast<float>((int32_t(kd) + 127) << 23);
}

// The largest of x[0, n) (-inf for n = 0).
float max_of(const float* x, int64_t n);
// y[i] = exp(x[i] - sub) for i in [0, n) (y may be x); returns the sum of the y in double.
double exp_sub_sum(const float* x, float sub, float* y, int64_t n);
// y[i] = exp(x[i] - sub) * scale.
void exp_sub_scale(const float* x, float sub, float scale, float* y, int64_t n);
// The sum of x[i]^2 in double.
double sum_squares(const float* x, int64_t n);
// o[i] = silu(g[i]) * u[i].
void swiglu_rows(const float* g, const float* u, float* o, int64_t n);
// du = d * silu(g), dg = d * u * silu'(g).
void swiglu_backward_rows(const float* g, const float* u, const float* d, float* dg, float* du, int64_t n);

}  // namespace lmtune::cpu
