// Quantized products of a few rows: y (M, N) = x (M, K) dequant(W)^T for 9 <= M <= 64 (a batched
// step of a 4-bit model; qgemv.cu takes 1-8 rows), W in MLX's affine 4-bit layout (u32 words,
// LSB-first codes; scales and biases (N, K / group_size) in dt), bf16/f16. A warp streams 32 rows
// of W, 16 bytes (32 codes) a lane and row per 128-wide step of K, past L1, and multiplies them with
// x's rows, 8 at a time, on the tensor cores (mma m16n8k16); K may be split over up to 4 warps. Each
// code becomes its weight in registers, w = q * scale + bias in one fused multiply-add of dt (one
// rounding to dt, as dequantize + gemm rounds each w to dt), so the packed words are the only
// weight bytes read: about a quarter of the dequantized weight's, which the other path writes and
// reads again.
//   Pairs: the word holding codes k .. k + 7 gives its codes (j, j + 4) as one register (a mask and
// a magic exponent: 128 + q for bf16, 1024 + q for f16, then minus that), so x's values are paired
// (k + j, k + j + 4) to match (two byte permutes per pair of registers). Otherwise the mma's k order
// is the lanes' own: lane (g, t) holds k0 + 32 t .. + 31 of rows g and g + 8 and of x row g, and a dot
// product does not depend on the order of its terms, so A and B only have to agree, which they do.
// LMTUNE_CUDA_QGEMM_ROWS=0 turns it off (dequantize + gemm then run).
#include <type_traits>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/qgemv_mma.cuh"
#include "core/runtime_config.h"

namespace lmtune {

namespace {

constexpr int kQRowsWarps = 4, kQRowTiles = 2, kQRowsMinM = 9, kQRowsMaxM = 64;
constexpr int kQStep = 128;  // K a step: 4 lanes of 32 codes

template <typename T>
struct QRowsParams {
  const T* x;
  const uint32_t* wq;
  const T* scales;
  const T* biases;
  T* y;
  int64_t M, N, K;
  int group_size, S;
};

// a - b and a * b + c on pairs of T (one rounding each).
template <typename T>
__device__ __forceinline__ uint32_t sub2(uint32_t a, uint32_t b) {
  uint32_t d;
  if constexpr (std::is_same_v<T, bf16>)
    asm("sub.rn.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  else
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}
template <typename T>
__device__ __forceinline__ uint32_t fma2(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  if constexpr (std::is_same_v<T, bf16>)
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  else
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

template <typename T>
__device__ __forceinline__ uint32_t twice(T v) {
  const uint16_t u = *reinterpret_cast<const uint16_t*>(&v);
  return uint32_t(u) | (uint32_t(u) << 16);
}

// The weights of codes (j, j + 4) of word w, j < 4, as a pair of T.
template <typename T>
__device__ __forceinline__ uint32_t weight_pair(uint32_t w, int j, uint32_t scale2, uint32_t bias2) {
  constexpr uint32_t magic = qgemv::Magic<T>::kCode;
  const uint32_t q = sub2<T>(qgemv::and_or(w >> (4 * j), 0x000f000fu, magic), magic);
  return fma2<T>(q, scale2, bias2);
}

template <typename T, int NT>
__global__ void __launch_bounds__(kQRowsWarps * 32) qgemm_rows_kernel(QRowsParams<T> p) {
  __shared__ float part[kQRowsWarps][kQRowTiles * NT * 4][32];
  pdl_enter();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int S = p.S, piece = warp % S;
  const int64_t n0 = (int64_t(blockIdx.x) * (kQRowsWarps / S) + warp / S) * (16 * kQRowTiles);
  const int64_t N = p.N, K = p.K, steps = K / kQStep, row_words = K / 8, groups = K / p.group_size;
  float acc[kQRowTiles][NT][4];
#pragma unroll
  for (int r = 0; r < kQRowTiles; ++r)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[r][j][i] = 0.f;
  if (n0 < N) {
    int64_t row[kQRowTiles][2];
#pragma unroll
    for (int r = 0; r < kQRowTiles; ++r)
#pragma unroll
      for (int h = 0; h < 2; ++h) row[r][h] = min(n0 + 16 * r + g + 8 * h, N - 1);
    const T* xr[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) xr[j] = p.x + (8 * j + g < p.M ? 8 * j + g : 0) * K + 32 * t;
    for (int64_t s = piece; s < steps; s += S) {
      const int64_t k0 = s * kQStep + 32 * t;  // the lane's 32 codes: k0 .. k0 + 31, one group
      const int64_t G = k0 / p.group_size;
      uint4 codes[kQRowTiles][2];
      uint32_t scale2[kQRowTiles][2], bias2[kQRowTiles][2];
#pragma unroll
      for (int r = 0; r < kQRowTiles; ++r)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          codes[r][h] = qgemv::ld_stream4(p.wq + row[r][h] * row_words + k0 / 8);
          scale2[r][h] = twice(p.scales[row[r][h] * groups + G]);
          bias2[r][h] = twice(p.biases[row[r][h] * groups + G]);
        }
#pragma unroll
      for (int i = 0; i < 4; ++i) {  // word i of the 4 holds codes k0 + 8 i .. + 7
        uint32_t xp[NT][4];          // x's pairs (k0 + 8 i + j, k0 + 8 i + j + 4), j < 4
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const uint4 xv = __ldg(reinterpret_cast<const uint4*>(xr[j] + s * kQStep + 8 * i));
          xp[j][0] = __byte_perm(xv.x, xv.z, 0x5410), xp[j][1] = __byte_perm(xv.x, xv.z, 0x7632);
          xp[j][2] = __byte_perm(xv.y, xv.w, 0x5410), xp[j][3] = __byte_perm(xv.y, xv.w, 0x7632);
        }
#pragma unroll
        for (int r = 0; r < kQRowTiles; ++r) {
          const uint32_t w0 = i == 0 ? codes[r][0].x : i == 1 ? codes[r][0].y : i == 2 ? codes[r][0].z : codes[r][0].w;
          const uint32_t w1 = i == 0 ? codes[r][1].x : i == 1 ? codes[r][1].y : i == 2 ? codes[r][1].z : codes[r][1].w;
          uint32_t a0[4], a1[4];
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            a0[j] = weight_pair<T>(w0, j, scale2[r][0], bias2[r][0]);
            a1[j] = weight_pair<T>(w1, j, scale2[r][1], bias2[r][1]);
          }
#pragma unroll
          for (int j = 0; j < NT; ++j) {
            qgemv::mma16816<T>(acc[r][j], a0[0], a1[0], a0[1], a1[1], xp[j][0], xp[j][1]);
            qgemv::mma16816<T>(acc[r][j], a0[2], a1[2], a0[3], a1[3], xp[j][2], xp[j][3]);
          }
        }
      }
    }
  }
  if (S > 1) {  // the pieces of a row group meet in piece order
    if (piece != 0) {
#pragma unroll
      for (int r = 0; r < kQRowTiles; ++r)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int i = 0; i < 4; ++i) part[warp][(r * NT + j) * 4 + i][lane] = acc[r][j][i];
    }
    __syncthreads();
    if (piece != 0) return;
    for (int q = 1; q < S; ++q)
#pragma unroll
      for (int r = 0; r < kQRowTiles; ++r)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[r][j][i] += part[warp + q][(r * NT + j) * 4 + i][lane];
  }
  if (n0 >= N) return;
#pragma unroll
  for (int r = 0; r < kQRowTiles; ++r)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t m = 8 * j + 2 * t + (i & 1), n = n0 + 16 * r + g + 8 * (i >> 1);
        if (m < p.M && n < N) p.y[m * N + n] = from_f32<T>(acc[r][j][i]);
      }
}

template <typename T, int NT>
void launch_qrows(QRowsParams<T> p) {
  const int64_t groups = (p.N + 16 * kQRowTiles - 1) / (16 * kQRowTiles), steps = p.K / kQStep;
  const int64_t want = int64_t(cuda_impl().sm_count()) * 8;
  p.S = 1;
  while (p.S < kQRowsWarps && groups * p.S < want && steps / (2 * p.S) >= 4) p.S *= 2;
  const int64_t per_block = kQRowsWarps / p.S;
  launch("quantized_gemm_rows", qgemm_rows_kernel<T, NT>, dim3(unsigned((groups + per_block - 1) / per_block)),
         kQRowsWarps * 32, 0, p);
}

template <typename T>
void dispatch_qrows(const QRowsParams<T>& p) {
  switch ((p.M + 7) / 8) {
    case 2: return launch_qrows<T, 2>(p);
    case 3: return launch_qrows<T, 3>(p);
    case 4: return launch_qrows<T, 4>(p);
    case 5: return launch_qrows<T, 5>(p);
    case 6: return launch_qrows<T, 6>(p);
    case 7: return launch_qrows<T, 7>(p);
    default: return launch_qrows<T, 8>(p);
  }
}

}  // namespace

bool CudaBackend::quantized_gemm_rows(const void* x, const uint32_t* wq, const void* scales, const void* biases,
                                      void* y, int64_t M, int64_t N, int64_t K, int bits, int group_size, DType dt) {
  if (bits != 4 || (group_size != 32 && group_size != 64 && group_size != 128) ||
      (dt != DType::bf16 && dt != DType::f16))
    return false;
  if (M < kQRowsMinM || M > kQRowsMaxM || N < 1 || K < kQStep || K % kQStep != 0 || !aligned16(x) || !aligned16(wq) ||
      !runtime_config().cuda_gemv || !runtime_config().cuda_qgemm_rows)
    return false;
  auto run = [&](auto tag) {
    using T = typename decltype(tag)::type;
    QRowsParams<T> p{static_cast<const T*>(x),
                     wq,
                     static_cast<const T*>(scales),
                     static_cast<const T*>(biases),
                     static_cast<T*>(y),
                     M,
                     N,
                     K,
                     group_size,
                     1};
    dispatch_qrows<T>(p);
  };
  if (dt == DType::bf16)
    run(TypeTag<bf16>{});
  else
    run(TypeTag<f16>{});
  return true;
}

}  // namespace lmtune
