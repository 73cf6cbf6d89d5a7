// Shared by the CUDA-vs-CPU suites (test_cuda_vs_cpu*.cpp): random inputs rounded to a dtype,
// device copies, tolerances, the comparison and the fixtures that skip without a CUDA device.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/runtime_config.h"
#include "core/tensor.h"
#include "tolerance.h"

namespace lmtune {

using Vec = std::vector<float>;

inline Backend& cpu() { return cpu_backend(); }
inline Backend& gpu() { return cuda_backend(); }

inline Vec uniform(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  Vec v(n);
  for (float& x : v) x = d(rng);
  return v;
}

inline std::vector<uint8_t> encode(const Vec& v, DType dt) {
  std::vector<uint8_t> out(v.size() * dtype_size(dt));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dt == DType::f32) {
      std::memcpy(out.data() + 4 * i, &v[i], 4);
    } else if (dt == DType::i32) {
      int32_t x = int32_t(v[i]);
      std::memcpy(out.data() + 4 * i, &x, 4);
    } else {
      uint16_t h = dt == DType::bf16 ? f32_to_bf16(v[i]) : f32_to_f16(v[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

inline Vec decode(const std::vector<uint8_t>& bytes, DType dt) {
  size_t n = bytes.size() / dtype_size(dt);
  Vec v(n);
  for (size_t i = 0; i < n; ++i) {
    if (dt == DType::f32) {
      std::memcpy(&v[i], bytes.data() + 4 * i, 4);
    } else if (dt == DType::i32) {
      int32_t x;
      std::memcpy(&x, bytes.data() + 4 * i, 4);
      v[i] = float(x);
    } else {
      uint16_t h;
      std::memcpy(&h, bytes.data() + 2 * i, 2);
      v[i] = dt == DType::bf16 ? bf16_to_f32(h) : f16_to_f32(h);
    }
  }
  return v;
}

// v rounded to dt's precision, as f32.
inline Vec rounded(const Vec& v, DType dt) { return decode(encode(v, dt), dt); }

inline Tensor on_gpu(const Vec& v, DType dt) {
  Tensor t = Tensor::empty({int64_t(v.size())}, dt, Device::cuda);
  std::vector<uint8_t> host = encode(v, dt);
  gpu().copy_h2d(t.raw(), host.data(), host.size());
  return t;
}
inline Tensor on_gpu_i32(const std::vector<int32_t>& v) {
  Tensor t = Tensor::empty({int64_t(v.size())}, DType::i32, Device::cuda);
  gpu().copy_h2d(t.raw(), v.data(), v.size() * 4);
  return t;
}
inline Tensor gpu_empty(int64_t n, DType dt) { return Tensor::empty({n}, dt, Device::cuda); }
inline Vec read(const Tensor& t) {
  std::vector<uint8_t> host(t.nbytes());
  gpu().copy_d2h(host.data(), t.raw(), host.size());
  return decode(host, t.dtype());
}

inline float* F(Vec& v) { return v.data(); }

struct Tol {
  float rtol;
  float atol_frac;  // atol = atol_frac * max |ref|: error from cancellation scales with the terms, not the result
};
// Elementwise: f32 differs by a few ulp of libm vs CUDA's math; bf16 only by the final rounding (2^-9).
inline Tol tol_elem(DType dt) { return dt == DType::f32 ? Tol{1e-5f, 1e-6f} : Tol{1e-2f, 2e-3f}; }
// Reductions: summation order differs (the CPU often sums in double).
inline Tol tol_reduce(DType dt) { return dt == DType::f32 ? Tol{1e-5f, 1e-5f} : Tol{1e-2f, 4e-3f}; }
// Matrix products: cuBLAS and OpenBLAS block K differently; bf16 products are exact in f32, so
// only accumulation order and the output rounding differ.
inline Tol tol_gemm(DType dt) { return dt == DType::f32 ? Tol{1e-4f, 1e-5f} : Tol{1e-2f, 1e-3f}; }
// Attention: gemms plus softmax; in bf16 P and dS are rounded to bf16 before their products,
// as flash attention does, so errors of 2^-9 relative to the largest terms enter each sum.
inline Tol tol_attn(DType dt) { return dt == DType::f32 ? Tol{1e-4f, 2e-5f} : Tol{1e-2f, 1e-2f}; }

// The project's tolerance check, with atol scaled by the reference's largest finite magnitude
// and matching infinities (lse of fully masked rows) counted as equal.
inline void check_close(const Vec& got, const Vec& ref, Tol tol, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  Vec a = got, r = ref;
  float max_ref = 0.f;
  for (size_t i = 0; i < r.size(); ++i) {
    if (std::isinf(r[i]) && a[i] == r[i]) a[i] = r[i] = 0.f;
    if (std::isfinite(r[i])) max_ref = std::max(max_ref, std::fabs(r[i]));
  }
  expect_close(a, r, double(tol.atol_frac) * max_ref, tol.rtol, what);
  if (std::getenv("LMTUNE_TEST_VERBOSE")) std::printf("%-60s max_rel_error %.3g\n", what.c_str(), max_rel_error(a, r));
}

inline std::string dt_name(const ::testing::TestParamInfo<DType>& info) { return dtype_name(info.param); }

class CudaVsCpu : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device (or lmtune built without CUDA): skipping";
    gpu();  // registers device memory for Tensor::empty(..., Device::cuda)
    dt = GetParam();
  }
  DType dt = DType::f32;
};

class CudaVsCpuOnce : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device (or lmtune built without CUDA): skipping";
    gpu();
  }
};

}  // namespace lmtune
