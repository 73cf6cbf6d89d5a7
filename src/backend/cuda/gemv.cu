// Matrix-vector products for decoding: y (M, N) = alpha x (M, K) W (N, K)^T with M <= 4 rows, W
// row-major in bf16/f16, f32 accumulation. Memory-bound: W is read once, so what matters is
// bytes in flight. Warps own rows of W (or pieces of a row); each lane streams 16-byte chunks
// (8 values), four in flight, past L1 (W is read once), and dots them with x (L1/L2-resident,
// every warp reads the same x). LMTUNE_CUDA_GEMV=0 sends these shapes to cuBLASLt instead.
#include <initializer_list>

#include "backend/cuda/cuda_common.cuh"
#include "core/runtime_config.h"

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
__device__ __forceinline__ float2 to_f32x2(uint32_t u, f16) {
  return __half22float2(*reinterpret_cast<const __half2*>(&u));
}

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

// Up to three weights that share x (decoding's q, k and v) run as one launch: their rows are
// numbered one after another and each warp finds its matrix. With kSwiglu the two weights are
// gate and up of the same shape, each warp dots both rows n and writes silu(g) u, both rounded
// to T first exactly as the separate products and ops::swiglu would.
template <typename T>
struct GemvParams {
  const T* x;
  const T* w[3];
  T* y[3];
  int64_t start[4];  // matrix i owns rows [start[i], start[i + 1])
  int count;
  int64_t K;
  float alpha;
  int S;  // warps per row: 1, 2, 4 or 8 (8 / S rows a block)
};

// arr[i] for a run-time i < 4 without indexing the kernel's parameters dynamically (that copies
// them to local memory in every thread: 112 bytes each, which halved the bandwidth once).
template <typename A>
__device__ __forceinline__ A pick(const A* arr, int i) {
  return i == 0 ? arr[0] : i == 1 ? arr[1] : i == 2 ? arr[2] : arr[3];
}

// Each row is split over S warps of the block, which take interleaved 512-byte stretches of it,
// so that a short W (k_proj's 1024 rows) still puts enough loads in flight across the card;
// their partial sums meet in shared memory.
template <typename T, int M, bool kSwiglu>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv_kernel(GemvParams<T> p) {
  pdl_enter();
  constexpr int kW = kSwiglu ? 2 : 1;  // rows dotted per warp
  __shared__ float part[kGemvWarps][kW][M];
  const int S = p.S, warp = threadIdx.x / 32, lane = threadIdx.x % 32, piece = warp % S;
  const int64_t n = int64_t(blockIdx.x) * (kGemvWarps / S) + warp / S;
  const int64_t total = kSwiglu ? p.start[1] : pick(p.start, p.count), chunks = p.K / 8, stride = 32 * int64_t(S);
  int mat = 0;
  if (!kSwiglu) mat = (p.count > 1 && n >= p.start[1]) + (p.count > 2 && n >= p.start[2]);
  const int64_t row = n - pick(p.start, mat);
  float acc[kW][M];
#pragma unroll
  for (int r = 0; r < kW; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = 0.f;
  if (n < total) {
    const uint4* wr[kW];
#pragma unroll
    for (int r = 0; r < kW; ++r) wr[r] = reinterpret_cast<const uint4*>(pick(p.w, kSwiglu ? r : mat) + row * p.K);
    const uint4* xr = reinterpret_cast<const uint4*>(p.x);
    int64_t c = lane + 32 * int64_t(piece);
    for (; c + stride * (kGemvUnroll - 1) < chunks; c += stride * kGemvUnroll) {
      uint4 wv[kW][kGemvUnroll];
#pragma unroll
      for (int r = 0; r < kW; ++r)
#pragma unroll
        for (int u = 0; u < kGemvUnroll; ++u) wv[r][u] = load_stream(wr[r] + c + stride * u);
#pragma unroll
      for (int u = 0; u < kGemvUnroll; ++u)
#pragma unroll
        for (int m = 0; m < M; ++m) {
          const uint4 xv = __ldg(xr + m * chunks + c + stride * u);
#pragma unroll
          for (int r = 0; r < kW; ++r) acc[r][m] += dot8<T>(wv[r][u], xv);
        }
    }
    for (; c < chunks; c += stride) {
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const uint4 xv = __ldg(xr + m * chunks + c);
#pragma unroll
        for (int r = 0; r < kW; ++r) acc[r][m] += dot8<T>(load_stream(wr[r] + c), xv);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kW; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float v = warp_sum(acc[r][m]);
      if (lane == 0) part[warp][r][m] = v;
    }
  __syncthreads();
  if (piece != 0 || lane >= M || n >= total) return;
  float v[kW];
#pragma unroll
  for (int r = 0; r < kW; ++r) {
    v[r] = 0.f;
    for (int i = 0; i < S; ++i) v[r] += part[warp + i][r][lane];
    v[r] = to_f32(from_f32<T>(p.alpha * v[r]));  // the product as stored
  }
  const int64_t rows = pick(p.start, mat + 1) - pick(p.start, mat);
  if (kSwiglu)
    p.y[0][int64_t(lane) * rows + row] = from_f32<T>(v[0] * (1.f / (1.f + expf(-v[0]))) * v[kW - 1]);
  else
    pick(p.y, mat)[int64_t(lane) * rows + row] = from_f32<T>(v[0]);
}

template <typename T, bool kSwiglu>
void launch_gemv(GemvParams<T> p, int64_t M) {
  // Enough warps to fill the card (64 resident a multiprocessor), each with at least 4 chunks
  // of a row per lane.
  const int64_t N = kSwiglu ? p.start[1] : p.start[p.count];
  const int64_t want = int64_t(cuda_impl().sm_count()) * 64;
  p.S = 1;
  while (p.S < kGemvWarps && N * p.S < want && p.K / 8 / (64 * p.S) >= 4) p.S *= 2;
  dim3 grid(unsigned((N + kGemvWarps / p.S - 1) / (kGemvWarps / p.S)));
  switch (M) {
    case 1: return launch("gemv", gemv_kernel<T, 1, kSwiglu>, grid, kGemvWarps * 32, 0, p);
    case 2: return launch("gemv", gemv_kernel<T, 2, kSwiglu>, grid, kGemvWarps * 32, 0, p);
    case 3: return launch("gemv", gemv_kernel<T, 3, kSwiglu>, grid, kGemvWarps * 32, 0, p);
    default: return launch("gemv", gemv_kernel<T, 4, kSwiglu>, grid, kGemvWarps * 32, 0, p);
  }
}

bool gemv_enabled() { return runtime_config().cuda_gemv; }

}  // namespace

namespace {
// What every gemv launch needs: bf16/f16, 1-4 rows, K a multiple of 8, 16-byte aligned operands.
bool gemv_covers(DType dt, int64_t M, int64_t K, std::initializer_list<const void*> ptrs) {
  if ((dt != DType::bf16 && dt != DType::f16) || M < 1 || M > 4 || K % 8 != 0 || !gemv_enabled()) return false;
  for (const void* q : ptrs)
    if (!aligned16(q)) return false;
  return true;
}

template <bool kSwiglu>
void dispatch_gemv(DType dt, const void* x, const void* const* ws, void* const* ys, const int64_t* ns, int count,
                   int64_t M, int64_t K, float alpha) {
  auto run = [&](auto tag) {
    using T = typename decltype(tag)::type;
    GemvParams<T> p{};
    p.x = static_cast<const T*>(x);
    p.count = count;
    p.K = K;
    p.alpha = alpha;
    p.start[0] = 0;
    for (int i = 0; i < count; ++i) {
      p.w[i] = static_cast<const T*>(ws[i]);
      p.y[i] = static_cast<T*>(ys[kSwiglu ? 0 : i]);
      p.start[i + 1] = kSwiglu ? ns[0] : p.start[i] + ns[i];
    }
    launch_gemv<T, kSwiglu>(p, M);
  };
  if (dt == DType::bf16)
    run(TypeTag<bf16>{});
  else
    run(TypeTag<f16>{});
}
}  // namespace

bool gemv(const GemmArgs& g, DType c_dt) {
  if (c_dt != g.dtype || g.batch != 1 || g.trans_a || !g.trans_b || g.beta != 0.f) return false;
  if (g.lda != g.K || g.ldb != g.K || g.ldc != g.N || !gemv_covers(g.dtype, g.M, g.K, {g.a, g.b})) return false;
  dispatch_gemv<false>(g.dtype, g.a, &g.b, &g.c, &g.N, 1, g.M, g.K, g.alpha);
  return true;
}

bool CudaBackend::gemv_group(const void* x, const void* const* ws, void* const* ys, const int64_t* ns, int count,
                             int64_t M, int64_t K, DType dt) {
  if (count < 1 || count > 3 || !gemv_covers(dt, M, K, {x})) return false;
  for (int i = 0; i < count; ++i)
    if (!aligned16(ws[i])) return false;
  dispatch_gemv<false>(dt, x, ws, ys, ns, count, M, K, 1.f);
  return true;
}

bool CudaBackend::gemv_swiglu(const void* x, const void* w_gate, const void* w_up, void* out, int64_t M, int64_t N,
                              int64_t K, DType dt) {
  if (!gemv_covers(dt, M, K, {x, w_gate, w_up})) return false;
  const void* ws[2] = {w_gate, w_up};
  void* ys[1] = {out};
  const int64_t ns[1] = {N};
  dispatch_gemv<true>(dt, x, ws, ys, ns, 2, M, K, 1.f);
  return true;
}

}  // namespace lmtune
