// Matrix-vector products for decoding: y (M, N) = alpha x (M, K) W (N, K)^T with M <= 4 rows, W
// row-major in bf16/f16, f32 accumulation. Memory-bound: W is read once, so what matters is
// bytes in flight. One warp per row of W; each lane streams 16-byte chunks (8 values) of that
// row, four in flight, past L1 (W is read once), and dots them with x (L1/L2-resident, every
// warp reads the same x). LMTUNE_CUDA_GEMV=0 sends these shapes to cuBLASLt instead.
#include <cstdlib>
#include <cstring>

#include "backend/cuda/cuda_common.cuh"

namespace lmtune {

namespace {

constexpr int kGemvWarps = 8, kGemvUnroll = 4;

__device__ __forceinline__ uint4 load_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ float2 to_f32x2(uint32_t u, bf16) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u));
}
__device__ __forceinline__ float2 to_f32x2(uint32_t u, f16) { return __half22float2(*reinterpret_cast<const __half2*>(&u)); }

template <typename T>
__device__ __forceinline__ float dot8(uint4 a, uint4 b) {
  const uint32_t ua[4] = {a.x, a.y, a.z, a.w}, ub[4] = {b.x, b.y, b.z, b.w};
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 fa = to_f32x2(ua[i], T{}), fb = to_f32x2(ub[i], T{});
    s = fmaf(fa.x, fb.x, s);
    s = fmaf(fa.y, fb.y, s);
  }
  return s;
}

template <typename T, int M>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv_kernel(const T* x, const T* w, T* y, int64_t N, int64_t K,
                                                                 float alpha) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kGemvWarps + warp;
  if (n >= N) return;
  const int64_t chunks = K / 8;
  const uint4* wr = reinterpret_cast<const uint4*>(w + n * K);
  const uint4* xr = reinterpret_cast<const uint4*>(x);
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.f;
  int64_t c = lane;
  for (; c + 32 * (kGemvUnroll - 1) < chunks; c += 32 * kGemvUnroll) {
    uint4 wv[kGemvUnroll];
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) wv[u] = load_stream(wr + c + 32 * u);
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u)
#pragma unroll
      for (int m = 0; m < M; ++m) acc[m] += dot8<T>(wv[u], __ldg(xr + m * chunks + c + 32 * u));
  }
  for (; c < chunks; c += 32) {
    uint4 wv = load_stream(wr + c);
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m] += dot8<T>(wv, __ldg(xr + m * chunks + c));
  }
#pragma unroll
  for (int m = 0; m < M; ++m) {
    float s = warp_sum(acc[m]);
    if (lane == 0) y[m * N + n] = from_f32<T>(alpha * s);
  }
}

template <typename T>
void launch_gemv(const GemmArgs& g) {
  const T* x = static_cast<const T*>(g.a);
  const T* w = static_cast<const T*>(g.b);
  T* y = static_cast<T*>(g.c);
  dim3 grid(unsigned((g.N + kGemvWarps - 1) / kGemvWarps));
  switch (g.M) {
    case 1: return launch("gemv", gemv_kernel<T, 1>, grid, kGemvWarps * 32, 0, x, w, y, g.N, g.K, g.alpha);
    case 2: return launch("gemv", gemv_kernel<T, 2>, grid, kGemvWarps * 32, 0, x, w, y, g.N, g.K, g.alpha);
    case 3: return launch("gemv", gemv_kernel<T, 3>, grid, kGemvWarps * 32, 0, x, w, y, g.N, g.K, g.alpha);
    default: return launch("gemv", gemv_kernel<T, 4>, grid, kGemvWarps * 32, 0, x, w, y, g.N, g.K, g.alpha);
  }
}

bool gemv_enabled() {
  const char* env = std::getenv("LMTUNE_CUDA_GEMV");
  return !(env && std::strcmp(env, "0") == 0);
}

}  // namespace

bool gemv(const GemmArgs& g, DType c_dt) {
  const bool half = g.dtype == DType::bf16 || g.dtype == DType::f16;
  if (!half || c_dt != g.dtype || g.M < 1 || g.M > 4 || g.batch != 1 || g.trans_a || !g.trans_b) return false;
  if (g.beta != 0.f || g.K % 8 != 0 || g.lda != g.K || g.ldb != g.K || g.ldc != g.N) return false;
  if (!aligned16(g.a) || !aligned16(g.b) || g.N > int64_t(65535) * 65535 || !gemv_enabled()) return false;
  if (g.dtype == DType::bf16)
    launch_gemv<bf16>(g);
  else
    launch_gemv<f16>(g);
  return true;
}

}  // namespace lmtune
