// Fused products for decoding in MLX's fp quantization modes: y (M, N) = x (M, K) @ dequant(W)^T,
// M = 1..8, W packed as mxfp4 (E2M1 codes, E8M0 scales, groups of 32), nvfp4 (E2M1, E4M3 scales,
// groups of 16) or mxfp8 (E4M3 codes, E8M0 scales, groups of 32). The packed weight is read once;
// nothing dense is written (the dequantize + GEMV path wrote and read a dense copy every token).
//
// One warp a row, one group a lane at a time: the lane loads the group's words (16, 8 or 32 bytes)
// and its scale byte, and adds s * sum(v * x) over the group to its f32 sums, as the CPU's kernel
// does. Every code value and every scale is exact in f32, and so are their products in bf16 (E2M1 x
// E8M0 and E4M3 x E8M0 are powers of two times a short mantissa; E2M1 x E4M3 has at most 5
// significant bits), so the sums differ from dequantize-then-GEMV's only in their order.
#include <type_traits>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/fp_codes.cuh"
#include "backend/cuda/qgemv_mma.cuh"
#include "core/runtime_config.h"

namespace lmtune {

namespace {

using qgemv::kQWarps;
using qgemv::load_words;

// Eight consecutive x values as f32 (16 bytes of bf16 / f16, 32 of f32; p 16-byte aligned).
template <typename T>
__device__ __forceinline__ void load_x8(const T* p, float (&v)[8]) {
  if constexpr (std::is_same_v<T, float>) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p)), b = __ldg(reinterpret_cast<const float4*>(p) + 1);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      T lo, hi;
      const uint16_t a = uint16_t(w[i] & 0xffffu), b = uint16_t(w[i] >> 16);
      if constexpr (std::is_same_v<T, bf16>) {
        lo = __ushort_as_bfloat16(a), hi = __ushort_as_bfloat16(b);
      } else {
        lo = __ushort_as_half(a), hi = __ushort_as_half(b);
      }
      v[2 * i] = to_f32(lo), v[2 * i + 1] = to_f32(hi);
    }
  }
}

template <int BITS>
__device__ __forceinline__ float code_value(uint32_t c) {
  if constexpr (BITS == 4)
    return e2m1_value(c);
  else
    return e4m3_value(c);
}

template <typename T, int BITS, int GROUP, bool E4M3_SCALE>
__global__ void __launch_bounds__(kQWarps * 32)
    qgemv_fp_kernel(const T* __restrict__ x, const uint32_t* __restrict__ wq, const uint8_t* __restrict__ scales,
                    T* __restrict__ y, int M, int64_t N, int64_t K) {
  pdl_enter();
  constexpr int kWords = GROUP * BITS / 32, kPer = 32 / BITS;  // words a group (4, 2, 8); codes a word
  static_assert(GROUP % 8 == 0 && (kWords == 2 || kWords % 4 == 0), "a group is whole 16-byte x loads");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kQWarps + warp;
  if (n >= N) return;  // whole warps
  const int64_t groups = K / GROUP;
  const uint32_t* w = wq + n * groups * kWords;
  const uint8_t* sc = scales + n * groups;
  float acc[8];
#pragma unroll
  for (int m = 0; m < 8; ++m) acc[m] = 0.f;
  for (int64_t g = lane; g < groups; g += 32) {
    uint32_t words[kWords];
    load_words<kWords>(w + g * kWords, words);
    const uint32_t s8 = __ldg(sc + g);
    const float s = E4M3_SCALE ? e4m3_value(s8) : e8m0_value(s8);
    float v[GROUP];
#pragma unroll
    for (int j = 0; j < GROUP; ++j)
      v[j] = code_value<BITS>((words[j / kPer] >> ((j % kPer) * BITS)) & ((1u << BITS) - 1));
#pragma unroll
    for (int m = 0; m < 8; ++m) {
      if (m < M) {  // M is the same for the whole grid
        const T* xg = x + m * K + g * GROUP;
        float part = 0.f;
#pragma unroll
        for (int j = 0; j < GROUP; j += 8) {
          float xv[8];
          load_x8(xg + j, xv);
#pragma unroll
          for (int l = 0; l < 8; ++l) part = fmaf(v[j + l], xv[l], part);
        }
        acc[m] = fmaf(s, part, acc[m]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < 8; ++m) {
    if (m < M) {
      const float r = warp_sum(acc[m]);
      if (lane == 0) y[m * N + n] = from_f32<T>(r);
    }
  }
}

}  // namespace

// LMTUNE_CUDA_GEMV=0 turns this off as it does the affine products (callers then dequantize and use
// gemm); so do unaligned x or wq (views at odd offsets), which the 16-byte loads cannot read.
bool CudaBackend::quantized_gemv_fp(const void* x, const uint32_t* wq, const uint8_t* scales, void* y, int64_t M,
                                    int64_t N, int64_t K, QuantMode mode, DType dt) {
  const int group = mode == QuantMode::nvfp4 ? 16 : 32;
  if (mode == QuantMode::affine || M < 1 || M > 8 || K < 1 || N < 0 || K % group != 0 || !runtime_config().cuda_gemv ||
      !aligned16(x) || reinterpret_cast<uintptr_t>(wq) % (mode == QuantMode::nvfp4 ? 8 : 16))
    return false;
  if (dt != DType::f32 && dt != DType::bf16 && dt != DType::f16) return false;
  if (N == 0) return true;
  const dim3 grid(unsigned((N + kQWarps - 1) / kQWarps));
  dispatch_float(dt, "quantized_gemv_fp", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xt = static_cast<const T*>(x);
    T* yt = static_cast<T*>(y);
    const int m = int(M);
    switch (mode) {
      case QuantMode::mxfp4:
        launch("quantized_gemv_fp", qgemv_fp_kernel<T, 4, 32, false>, grid, kQWarps * 32, 0, xt, wq, scales, yt, m, N,
               K);
        return;
      case QuantMode::nvfp4:
        launch("quantized_gemv_fp", qgemv_fp_kernel<T, 4, 16, true>, grid, kQWarps * 32, 0, xt, wq, scales, yt, m, N,
               K);
        return;
      case QuantMode::mxfp8:
        launch("quantized_gemv_fp", qgemv_fp_kernel<T, 8, 32, false>, grid, kQWarps * 32, 0, xt, wq, scales, yt, m, N,
               K);
        return;
      case QuantMode::affine: break;
    }
  });
  return true;
}

}  // namespace lmtune
