// CUDA kernels for MLX's fp quantization modes (mxfp4: E2M1 codes, E8M0 scales, groups of 32;
// nvfp4: E2M1 codes, E4M3 scales, groups of 16; mxfp8: E4M3 codes, E8M0 scales, groups of 32):
// element-wise dequantization into a dense scratch matrix, which the GEMM / GEMV then reads. The
// decoders are core/fp_formats.h's, written for the device; test_cuda_vs_cpu holds them to the CPU.
#include <type_traits>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/fp_codes.cuh"

namespace lmtune {

namespace {

// MLX's NaNs (quant/quant_impl.h): bf16 0x7fc0 whatever the sign, f16 sign | 0x7d00; f32 as computed.
template <typename T>
__device__ __forceinline__ T store_mlx(float x) {
  if constexpr (std::is_same_v<T, bf16>) {
    if (isnan(x)) return __ushort_as_bfloat16(0x7fc0);
  } else if constexpr (std::is_same_v<T, f16>) {
    if (isnan(x)) return __ushort_as_half(uint16_t((signbit(x) ? 0x8000 : 0) | 0x7d00));
  }
  return from_f32<T>(x);
}

// x rounded to T and back, a NaN kept with its sign (as the CPU's conversions keep it; CUDA's
// would make it the canonical positive NaN).
template <typename T>
__device__ __forceinline__ float round_keep_nan(float x) {
  return isnan(x) ? x : to_f32(from_f32<T>(x));
}

// v * s with the NaN an x86 multiply gives (the CPU backend's, and MLX's on x86): a NaN operand's
// own (v's first), and for 0 * inf the "default" NaN, whose sign bit is set; CUDA's product
// would give its canonical positive NaN, which f16's sign | 0x7d00 store then tells apart.
__device__ __forceinline__ float x86_product(float v, float s) {
  const float p = __fmul_rn(v, s);
  if (!isnan(p)) return p;
  return isnan(v) ? v : isnan(s) ? s : __int_as_float(int(0xffc00000u));
}

// round_T(round_T(v) * round_T(s)) as mx.dequantize computes in T. One thread per packed word (8
// fp4 codes or 4 fp8 codes), so neighbouring threads read neighbouring words and write
// neighbouring runs of outputs.
template <typename T, int BITS, int GROUP, bool E4M3_SCALE>
__global__ void dequantize_fp_kernel(const uint32_t* __restrict__ wq, const uint8_t* __restrict__ scales,
                                     T* __restrict__ out, int64_t rows, int64_t in) {
  pdl_enter();
  constexpr int kPer = 32 / BITS;
  const int64_t words = in / kPer, groups = in / GROUP;
  for (int64_t e = global_tid(); e < rows * words; e += grid_stride()) {
    const int64_t r = e / words, u = e - r * words;
    const uint32_t word = wq[e];
    const uint32_t sc = scales[r * groups + u * kPer / GROUP];
    const float s = round_keep_nan<T>(E4M3_SCALE ? e4m3_value(sc) : e8m0_value(sc));
    T* dst = out + r * in + u * kPer;
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const uint32_t c = (word >> (k * BITS)) & ((1u << BITS) - 1);
      const float v = round_keep_nan<T>(BITS == 4 ? e2m1_value(c) : e4m3_value(c));
      dst[k] = store_mlx<T>(x86_product(v, s));
    }
  }
}

}  // namespace

void CudaBackend::dequantize_fp(const uint32_t* wq, const uint8_t* scales, void* out, int64_t rows, int64_t in,
                                QuantMode mode, DType dt) {
  dispatch_float(dt, "dequantize_fp", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const unsigned grid = grid_for(rows * in * (mode == QuantMode::mxfp8 ? 8 : 4) / 32);
    T* o = static_cast<T*>(out);
    switch (mode) {
      case QuantMode::mxfp4:
        launch("dequantize_fp", dequantize_fp_kernel<T, 4, 32, false>, grid, kThreads, 0, wq, scales, o, rows, in);
        return;
      case QuantMode::nvfp4:
        launch("dequantize_fp", dequantize_fp_kernel<T, 4, 16, true>, grid, kThreads, 0, wq, scales, o, rows, in);
        return;
      case QuantMode::mxfp8:
        launch("dequantize_fp", dequantize_fp_kernel<T, 8, 32, false>, grid, kThreads, 0, wq, scales, o, rows, in);
        return;
      case QuantMode::affine: break;
    }
    fail("[dequantize_fp] cuda: mode ", quant_mode_name(mode), " has its own kernel");
  });
}

}  // namespace lmtune
