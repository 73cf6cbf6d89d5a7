// Products of a few rows: y (M, N) = alpha x (M, K) W (N, K)^T for 5 <= M <= 64 rows of x, W row-major
// in bf16/f16, f32 accumulation: a batched server step's projections (a row per decoding sequence)
// and the verify of speculative rounds taken together. Like gemv.cu's (1-4 rows), these products are
// bound by reading W once. Each warp streams 32 rows of W in 16-byte pieces past L1 and multiplies
// them on the tensor cores (mma m16n8k16) with x's rows, 8 at a time.
//   The k order inside a 32-wide step is the lanes' own: lane (g, t) holds 8 consecutive k of W rows
// g and g + 8 (a 16-byte load each) and of x row g; the first mma takes values 0-3 of each, the
// second 4-7. A dot product does not depend on the order of its terms' k, so A and B only have to
// agree, and they do. LMTUNE_CUDA_GEMM_ROWS=0 turns this off (LMTUNE_CUDA_GEMV=0 too, with gemv.cu): cuBLASLt
// then runs.
#include <type_traits>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/qgemv_mma.cuh"
#include "core/runtime_config.h"

namespace lmtune {

namespace {

constexpr int kRowsWarps = 4;   // warps a block
constexpr int kRowTiles = 2;    // 16-row tiles of W a warp
constexpr int kRowsUnroll = 2;  // 32-wide steps whose loads are issued together
constexpr int kRowsMinM = 5, kRowsMaxM = 64;

template <typename T>
struct RowsParams {
  const T* x;
  const T* w;
  T* y;
  int64_t M, N, K;
  float alpha;
  int S;  // warps a group of 32 rows (1, 2 or 4), each over every S-th 32-wide step of K
};

__device__ __forceinline__ uint4 stream16(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// NT: tiles of 8 rows of x (M <= 8 NT).
template <typename T, int NT>
__global__ void __launch_bounds__(kRowsWarps * 32) gemm_rows_kernel(RowsParams<T> p) {
  __shared__ float part[kRowsWarps][kRowTiles * NT * 4][32];
  pdl_enter();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int S = p.S, piece = warp % S;
  const int64_t n0 = (int64_t(blockIdx.x) * (kRowsWarps / S) + warp / S) * (16 * kRowTiles);
  const int64_t N = p.N, K = p.K, steps = K / 32;
  float acc[kRowTiles][NT][4];
#pragma unroll
  for (int r = 0; r < kRowTiles; ++r)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[r][j][i] = 0.f;
  if (n0 < N) {
    // W rows n0 + 16 r + g + 8 h (rows past N read row N - 1 and are never stored); x rows 8 j + g
    // (rows past M read row 0 and their columns are never stored).
    const T* wr[kRowTiles][2];
#pragma unroll
    for (int r = 0; r < kRowTiles; ++r)
#pragma unroll
      for (int h = 0; h < 2; ++h) wr[r][h] = p.w + min(n0 + 16 * r + g + 8 * h, N - 1) * K + 8 * t;
    const T* xr[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) xr[j] = p.x + (8 * j + g < p.M ? 8 * j + g : 0) * K + 8 * t;
    auto step = [&](const uint4(&wv)[kRowTiles][2], int64_t s) {
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const uint4 xv = __ldg(reinterpret_cast<const uint4*>(xr[j] + s * 32));
#pragma unroll
        for (int r = 0; r < kRowTiles; ++r) {
          qgemv::mma16816<T>(acc[r][j], wv[r][0].x, wv[r][1].x, wv[r][0].y, wv[r][1].y, xv.x, xv.y);
          qgemv::mma16816<T>(acc[r][j], wv[r][0].z, wv[r][1].z, wv[r][0].w, wv[r][1].w, xv.z, xv.w);
        }
      }
    };
    int64_t s = piece;
    for (; s + int64_t(S) * (kRowsUnroll - 1) < steps; s += int64_t(S) * kRowsUnroll) {
      uint4 wv[kRowsUnroll][kRowTiles][2];
#pragma unroll
      for (int u = 0; u < kRowsUnroll; ++u)
#pragma unroll
        for (int r = 0; r < kRowTiles; ++r)
#pragma unroll
          for (int h = 0; h < 2; ++h) wv[u][r][h] = stream16(wr[r][h] + (s + int64_t(S) * u) * 32);
#pragma unroll
      for (int u = 0; u < kRowsUnroll; ++u) step(wv[u], s + int64_t(S) * u);
    }
    for (; s < steps; s += S) {
      uint4 wv[kRowTiles][2];
#pragma unroll
      for (int r = 0; r < kRowTiles; ++r)
#pragma unroll
        for (int h = 0; h < 2; ++h) wv[r][h] = stream16(wr[r][h] + s * 32);
      step(wv, s);
    }
  }
  // The S pieces of a row group meet in piece order: pieces 1.. write, piece 0 adds.
  if (S > 1) {
    if (piece != 0) {
#pragma unroll
      for (int r = 0; r < kRowTiles; ++r)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int i = 0; i < 4; ++i) part[warp][(r * NT + j) * 4 + i][lane] = acc[r][j][i];
    }
    __syncthreads();
    if (piece != 0) return;
    for (int q = 1; q < S; ++q)
#pragma unroll
      for (int r = 0; r < kRowTiles; ++r)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[r][j][i] += part[warp + q][(r * NT + j) * 4 + i][lane];
  }
  if (n0 >= N) return;
    // acc[r][j]: i = 0, 1 are (x row 8 j + 2 t + i, W row n0 + 16 r + g); i = 2, 3 the same x rows, W row + 8.
#pragma unroll
  for (int r = 0; r < kRowTiles; ++r)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t m = 8 * j + 2 * t + (i & 1), n = n0 + 16 * r + g + 8 * (i >> 1);
        if (m < p.M && n < N) p.y[m * N + n] = from_f32<T>(p.alpha * acc[r][j][i]);
      }
}

template <typename T, int NT>
void launch_rows(RowsParams<T> p) {
  // Enough warps for about 8 a multiprocessor, each piece with at least 8 steps of K.
  const int64_t groups = (p.N + 16 * kRowTiles - 1) / (16 * kRowTiles), steps = p.K / 32;
  const int64_t want = int64_t(cuda_impl().sm_count()) * 8;
  p.S = 1;
  while (p.S < kRowsWarps && groups * p.S < want && steps / (2 * p.S) >= 8) p.S *= 2;
  const int64_t per_block = kRowsWarps / p.S;
  launch("gemm_rows", gemm_rows_kernel<T, NT>, dim3(unsigned((groups + per_block - 1) / per_block)), kRowsWarps * 32, 0,
         p);
}

template <typename T>
void dispatch_rows(const RowsParams<T>& p) {
  switch ((p.M + 7) / 8) {
    case 1: return launch_rows<T, 1>(p);
    case 2: return launch_rows<T, 2>(p);
    case 3: return launch_rows<T, 3>(p);
    case 4: return launch_rows<T, 4>(p);
    case 5: return launch_rows<T, 5>(p);
    case 6: return launch_rows<T, 6>(p);
    case 7: return launch_rows<T, 7>(p);
    default: return launch_rows<T, 8>(p);
  }
}

}  // namespace

bool gemm_rows(const GemmArgs& g, DType c_dt) {
  if (c_dt != g.dtype || (g.dtype != DType::bf16 && g.dtype != DType::f16) || g.batch != 1 || g.trans_a || !g.trans_b ||
      g.beta != 0.f || !runtime_config().cuda_gemv || !runtime_config().cuda_gemm_rows)
    return false;
  if (g.M < kRowsMinM || g.M > kRowsMaxM || g.K % 32 != 0 || g.lda != g.K || g.ldb != g.K || g.ldc != g.N ||
      !aligned16(g.a) || !aligned16(g.b))
    return false;
  auto run = [&](auto tag) {
    using T = typename decltype(tag)::type;
    RowsParams<T> p{
        static_cast<const T*>(g.a), static_cast<const T*>(g.b), static_cast<T*>(g.c), g.M, g.N, g.K, g.alpha, 1};
    dispatch_rows<T>(p);
  };
  if (g.dtype == DType::bf16)
    run(TypeTag<bf16>{});
  else
    run(TypeTag<f16>{});
  return true;
}

bool CudaBackend::gemm_rows(const GemmArgs& g) {
  return g.M != 0 && g.N != 0 && g.K != 0 && lmtune::gemm_rows(g, g.dtype);
}

}  // namespace lmtune
