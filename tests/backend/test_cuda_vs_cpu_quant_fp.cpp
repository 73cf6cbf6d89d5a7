// MLX's fp quantization modes (mxfp4, nvfp4, mxfp8) on CUDA against the CPU, through the ops that
// every quantized layer runs: ops::dequantize (src/backend/cuda/quantized_fp.cu against the CPU's
// kernel, which tests/quant holds to mx.dequantize bit for bit) and ops::quantized_linear (decoding's
// rows through the fused product, qgemv_fp.cu; more rows through the dequantized scratch weight and
// the dense product). Skips where no CUDA device is present.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"
#include "core/runtime_config.h"
#include "ops/ops.h"
#include "quant/quant.h"
#include "tolerance.h"

namespace lmtune {
namespace {

std::string dt_name(const ::testing::TestParamInfo<DType>& info) { return dtype_name(info.param); }

class CudaVsCpuQuantFp : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device (or lmtune built without CUDA): skipping";
    cuda_backend();  // registers device memory for Tensor::empty(..., Device::cuda)
    dt = GetParam();
  }
  DType dt = DType::f32;
};

const QuantMode kModes[] = {QuantMode::mxfp4, QuantMode::nvfp4, QuantMode::mxfp8};

// Every packed word and every u8 scale drawn at random, so that every code (E4M3's NaN 0x7f too)
// and every scale (0: 2^-127, 255: inf, so 0 * inf = NaN) occurs: the outputs must be equal bit for
// bit, NaNs apart in f32 (CUDA's products make the canonical NaN, x86's keep the operand's).
TEST_P(CudaVsCpuQuantFp, DequantizeBitExact) {
  for (QuantMode mode : kModes) {
    const QuantFormat f = default_quant_format(mode);
    const int64_t rows = 37, in = 512, words = in * f.bits / 32, groups = in / f.group_size;
    Tensor wq = Tensor::empty({rows, words}, DType::u32), sc = Tensor::empty({rows, groups}, DType::u8);
    uint32_t x = 0x9E3779B9u + uint32_t(mode);
    for (int64_t i = 0; i < wq.numel(); ++i) wq.data<uint32_t>()[i] = (x = x * 1664525u + 1013904223u);
    for (int64_t i = 0; i < sc.numel(); ++i) sc.data<uint8_t>()[i] = uint8_t((x = x * 1664525u + 1013904223u) >> 24);
    Tensor cpu = ops::dequantize(wq, sc, {}, f, dt, "layer");
    Tensor gpu =
        ops::to(ops::dequantize(ops::to(wq, Device::cuda), ops::to(sc, Device::cuda), {}, f, dt, "layer"), Device::cpu);
    ASSERT_EQ(gpu.shape(), cpu.shape());
    std::vector<float> a = gpu.to_f32_vector(), r = cpu.to_f32_vector();
    const size_t es = dtype_size(dt);
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < cpu.numel(); ++i) {
      const bool same = std::memcmp(static_cast<const char*>(gpu.raw()) + i * es,
                                    static_cast<const char*>(cpu.raw()) + i * es, es) == 0;
      if (!same && !(dt == DType::f32 && std::isnan(a[size_t(i)]) && std::isnan(r[size_t(i)]))) {
        if (first < 0) first = i;
        ++bad;
      }
    }
    EXPECT_EQ(bad, 0) << quant_mode_name(mode) << " " << dtype_name(dt) << ": first at " << first << ": cuda "
                      << (first >= 0 ? a[size_t(first)] : 0.f) << ", cpu " << (first >= 0 ? r[size_t(first)] : 0.f);
  }
}

// A weight quantized by quant::quantize, x in dt: CUDA's product (dt, f32 accumulation) against
// the CPU's in f32 on the same dt-rounded x, for decoding rows (1, 4) and a prefill (33).
TEST_P(CudaVsCpuQuantFp, QuantizedLinear) {
  for (QuantMode mode : kModes) {
    const QuantFormat f = default_quant_format(mode);
    const int64_t N = 45, K = 384;
    quant::QuantizedWeight q = quant::quantize(ops::randn({N, K}, 3, 0.05f), f);
    Tensor gw = ops::to(q.wq, Device::cuda), gs = ops::to(q.scales, Device::cuda);
    for (int64_t M : {1, 4, 33}) {
      Tensor x = ops::cast(ops::randn({M, K}, uint64_t(M)), dt);
      Tensor want = ops::quantized_linear(ops::cast(x, DType::f32), q.wq, q.scales, {}, f);
      Tensor got =
          ops::cast(ops::to(ops::quantized_linear(ops::to(x, Device::cuda), gw, gs, {}, f), Device::cpu), DType::f32);
      std::vector<float> a = got.to_f32_vector(), r = want.to_f32_vector();
      float max_ref = 0.f;
      for (float v : r) max_ref = std::max(max_ref, std::fabs(v));
      const double rtol = dt == DType::f32 ? 1e-4 : 1e-2, atol = (dt == DType::f32 ? 1e-5 : 4e-3) * max_ref;
      expect_close(a, r, atol, rtol, std::string(quant_mode_name(mode)) + " M " + std::to_string(M));
    }
  }
}

// The fused product (qgemv_fp.cu) against the dequantized weight's exact product: every value and
// scale is exact in f32, so the sums may differ only in their order (at most ~1e-5 of sum |w x| over
// these K, in f32) and in the output's rounding to dt. One wrong code in a row is ~1e-4 of that sum:
// caught. Sizes: rows not a multiple of a block's 8 warps, groups not a multiple of a warp's 32
// lanes (and fewer than 32), every M of 1..8's kinds.
TEST_P(CudaVsCpuQuantFp, FusedProductEqualsDequantizedProduct) {
  RuntimeConfig rc = runtime_config();
  rc.cuda_gemv = true;
  ScopedRuntimeConfig scoped(rc);
  const double out_rounding = dt == DType::bf16 ? 1.0 / 256 : dt == DType::f16 ? 1.0 / 2048 : 0.0;
  for (QuantMode mode : kModes) {
    const QuantFormat f = default_quant_format(mode);
    for (int64_t K : {int64_t(f.group_size) * 7, int64_t(f.group_size) * 131}) {
      const int64_t N = 45;
      quant::QuantizedWeight q = quant::quantize(ops::randn({N, K}, uint64_t(K), 0.05f), f);
      const std::vector<float> w = quant::dequantize(q, DType::f32).to_f32_vector();
      const Tensor gw = ops::to(q.wq, Device::cuda), gs = ops::to(q.scales, Device::cuda);
      for (int64_t M : {1, 3, 8}) {
        const Tensor x = ops::cast(ops::randn({M, K}, uint64_t(M + K)), dt);
        const std::vector<float> xv = x.to_f32_vector();
        const Tensor gx = ops::to(x, Device::cuda);
        Tensor gy = Tensor::empty({M, N}, dt, Device::cuda);
        ASSERT_TRUE(cuda_backend().quantized_gemv_fp(gx.raw(), static_cast<const uint32_t*>(gw.raw()),
                                                     static_cast<const uint8_t*>(gs.raw()), gy.raw(), M, N, K, mode,
                                                     dt))
            << "the fused product declined " << quant_mode_name(mode) << " K " << K << " M " << M;
        const std::vector<float> got = ops::to(gy, Device::cpu).to_f32_vector();
        int64_t bad = 0;
        std::string first;
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n) {
            double want = 0, mag = 0;
            for (int64_t k = 0; k < K; ++k) {
              const double p = double(w[size_t(n * K + k)]) * double(xv[size_t(m * K + k)]);
              want += p, mag += std::fabs(p);
            }
            const double g = got[size_t(m * N + n)];
            if (!(std::fabs(g - want) <= out_rounding * std::fabs(want) + 1e-5 * mag)) {
              if (bad++ == 0)
                first = "(" + std::to_string(m) + ", " + std::to_string(n) + "): got " + std::to_string(g) + ", want " +
                        std::to_string(want) + ", sum |w x| " + std::to_string(mag);
            }
          }
        EXPECT_EQ(bad, 0) << quant_mode_name(mode) << " " << dtype_name(dt) << " K " << K << " M " << M << ": first at "
                          << first;
      }
    }
  }
}

// Where it declines, callers dequantize and use the dense product: LMTUNE_CUDA_GEMV=0, more than 8
// rows, x at an address the 16-byte loads cannot read, K not whole groups.
TEST_P(CudaVsCpuQuantFp, FusedProductDeclines) {
  const QuantFormat f = default_quant_format(QuantMode::mxfp4);
  const int64_t N = 16, K = 256;
  quant::QuantizedWeight q = quant::quantize(ops::randn({N, K}, 5, 0.05f), f);
  const Tensor gw = ops::to(q.wq, Device::cuda), gs = ops::to(q.scales, Device::cuda);
  const Tensor gx = ops::to(ops::cast(ops::randn({9, K + 8}, 6), dt), Device::cuda);
  Tensor gy = Tensor::empty({9, N}, dt, Device::cuda);
  const auto* w = static_cast<const uint32_t*>(gw.raw());
  const auto* s = static_cast<const uint8_t*>(gs.raw());
  Backend& b = cuda_backend();
  RuntimeConfig rc = runtime_config();
  rc.cuda_gemv = true;
  {
    ScopedRuntimeConfig on(rc);
    EXPECT_TRUE(b.quantized_gemv_fp(gx.raw(), w, s, gy.raw(), 1, N, K, QuantMode::mxfp4, dt));
    EXPECT_FALSE(b.quantized_gemv_fp(gx.raw(), w, s, gy.raw(), 9, N, K, QuantMode::mxfp4, dt));
    EXPECT_FALSE(b.quantized_gemv_fp(static_cast<const char*>(gx.raw()) + dtype_size(dt), w, s, gy.raw(), 1, N, K,
                                     QuantMode::mxfp4, dt));
    EXPECT_FALSE(b.quantized_gemv_fp(gx.raw(), w, s, gy.raw(), 1, N, K - 16, QuantMode::mxfp4, dt));
    EXPECT_FALSE(b.quantized_gemv_fp(gx.raw(), w, s, gy.raw(), 1, N, K, QuantMode::affine, dt));
  }
  rc.cuda_gemv = false;
  ScopedRuntimeConfig off(rc);
  EXPECT_FALSE(b.quantized_gemv_fp(gx.raw(), w, s, gy.raw(), 1, N, K, QuantMode::mxfp4, dt));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaVsCpuQuantFp, ::testing::Values(DType::f32, DType::bf16, DType::f16), dt_name);

}  // namespace
}  // namespace lmtune
