// Decoding's fused quantized products (qgemv.cu's method and tile arithmetic) with the weights
// staged through shared memory: each warp streams its 16-row tile in chunks (64 or 128 bytes of each row,
// plus the chunk's scales and biases) with cp.async into a ring of kStages buffers, so that
// kStages - 1 chunks are in flight while one is used and none of them holds a register. qgemv.cu's
// kernel keeps its loads in registers, which caps the bytes in flight a multiprocessor (bench/NOTES.md,
// session 3). Taken where a chunk holds an even number of groups (64-byte chunks: 4 bits in
// groups of 32 or 64, 8 bits in groups of 32; 128-byte chunks: also 4 bits in groups of 128 and 8
// bits in groups of 64; 2 bits would fit but spill), for an even number of groups a row and
// 4-byte aligned scales; elsewhere the caller runs qgemv.cu's kernel.
#include "backend/cuda/qgemv_mma.cuh"

namespace lmtune::qgemv {

namespace {

// CB: bytes of each row a chunk holds, 64 (4 stages, ~49 KB of shared memory a block, 4 blocks a
// multiprocessor at 64 registers) or 128 (whole 128-byte lines; 3 stages, ~65 KB, 3 blocks). A
// grouped launch's matrix selection needs more registers: 3 blocks (80; at 64 they spill).

template <typename T, int BITS, int GS, int CB>
struct AsyncShape {
  static constexpr int kChunkRowBytes = CB;
  static constexpr int kRowStride = CB + 16;  // padded: lane (g, t)'s reads hit distinct banks
  static constexpr int kStages = CB == 64 ? 4 : 3;
  template <bool GROUP>
  static constexpr int min_blocks() {
    return CB == 64 && !GROUP ? 4 : 3;
  }
  static constexpr int kGroupBytes = GS * BITS / 8;
  static constexpr int C = kChunkRowBytes / kGroupBytes;           // groups a chunk
  static constexpr int kWeightBytes = 16 * kRowStride;             // a chunk's 16 rows
  static constexpr int kScaleBytes = 2 * 16 * C * int(sizeof(T));  // its scales, then biases
  static constexpr int kStageBytes = kWeightBytes + kScaleBytes;
  static constexpr int kWarpBytes = kStages * kStageBytes;
  static constexpr int kBlockBytes = kQWarps * kWarpBytes;  // dynamic shared memory
  static constexpr int kPieces = 16 * kChunkRowBytes / 16;  // 16-byte weight pieces a chunk
  static constexpr int kScalePieces = 2 * 16 * C / 2;       // 4-byte scale/bias pieces
  static_assert(C >= 2 && C % 2 == 0 && kPieces % 32 == 0 && kScalePieces % 32 == 0, "chunk shape");
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }
// 16 bytes from global to shared, the last 16 - src_bytes of them zero (src_bytes 0 or 16).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
// 4 bytes, the last 4 - src_bytes of them zero (src_bytes 0, 2 or 4).
__device__ __forceinline__ void cp_async4(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

template <typename T, int BITS, int GS, int CB, bool GROUP>
__global__ void __launch_bounds__(kQWarps * 32, AsyncShape<T, BITS, GS, CB>::template min_blocks<GROUP>())
    qgemv_async_kernel(QgemvParams<T> p) {
  using Sh = MmaShape<BITS, GS>;
  using As = AsyncShape<T, BITS, GS, CB>;
  constexpr int H = Sh::H, QW = Sh::QW, C = As::C, kStages = As::kStages, kChunkRowBytes = CB,
                kRowStride = As::kRowStride;
  constexpr bool kBf16 = std::is_same_v<T, bf16>, kSplit8 = kBf16 && BITS == 8;
  constexpr float kOffset = !kBf16 ? 0.f : BITS == 8 ? 2176.f : 128.f;
  extern __shared__ __align__(16) uint8_t smem[];
  __shared__ float part[kQWarps][4][32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t global_tile = int64_t(blockIdx.x) * (kQWarps / p.S) + warp / p.S;
  const bool valid = global_tile < p.tile_start[p.count];
  const QMatrix<T> mt =
      GROUP ? select_matrix(p, valid ? global_tile : 0) : QMatrix<T>{p.wq, p.scales, p.biases, p.y, p.N, global_tile};
  const int S = p.S, piece = warp % S;
  const int64_t N = mt.N, K = p.K, groups = K / GS, n0 = mt.tile * 16;
  // Each piece of K a whole number of chunks.
  const int64_t per = ((groups + S - 1) / S + C - 1) / C * C;
  const int64_t g_begin = min(groups, piece * per), g_end = min(groups, g_begin + per);
  const int64_t chunks = (g_end - g_begin + C - 1) / C;
  uint8_t* ring = smem + warp * As::kWarpBytes;
  const int64_t row_bytes = K * BITS / 8;
  const uint8_t* wbase = reinterpret_cast<const uint8_t*>(mt.wq);
  // Chunk i into its stage: lane l copies weight pieces l, l + 32, ... (row piece / 4, 16-byte
  // column piece % 4) and scale pieces likewise (scales then biases, row, pair of groups). Rows
  // past N read row N - 1 (never written out); groups past g_end are zero-filled and never used.
  auto issue = [&](int64_t i) {
    if (valid && i < chunks) {
      uint8_t* st = ring + (i % kStages) * As::kStageBytes;
      const int64_t G0 = g_begin + i * C;
#pragma unroll
      for (int k = 0; k < As::kPieces / 32; ++k) {
        const int pc = lane + 32 * k, row = pc / (kChunkRowBytes / 16), col = pc % (kChunkRowBytes / 16);
        const int64_t r = min(n0 + row, N - 1);
        const int64_t G = G0 + col * 16 / As::kGroupBytes;
        const bool in = G < g_end;
        cp_async16(st + row * kRowStride + col * 16,
                   in ? wbase + r * row_bytes + G0 * As::kGroupBytes + col * 16 : wbase, in ? 16 : 0);
      }
      uint8_t* ss = st + As::kWeightBytes;
#pragma unroll
      for (int k = 0; k < As::kScalePieces / 32; ++k) {
        const int pc = lane + 32 * k, pair = pc % (C / 2), row = (pc / (C / 2)) % 16, which = pc / (C / 2) / 16;
        const int64_t r = min(n0 + row, N - 1), G = G0 + 2 * pair;
        const T* src = (which ? mt.biases : mt.scales) + r * groups + G;
        const int bytes = G + 1 < g_end ? 4 : G < g_end ? 2 : 0;
        cp_async4(ss + ((which * 16 + row) * C + 2 * pair) * int(sizeof(T)), bytes ? src : mt.scales, bytes);
      }
    }
    cp_async_commit();  // an empty group past the last chunk keeps the counts uniform
  };
  pdl_trigger();
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) issue(i);  // weights only: before the wait, as qgemv.cu
  pdl_wait();
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  const bool has_x = g < p.M;
  const T* xq = p.x + int64_t(has_x ? g : 0) * K + t * Sh::QV;
  for (int64_t i = 0; i < chunks; ++i) {
    cp_async_wait<kStages - 2>();  // this lane's copies of chunk i have landed
    __syncwarp();                  // and every lane's; the stage used last round is free again
    issue(i + kStages - 1);
    if (!valid) continue;
    const uint8_t* st = ring + (i % kStages) * As::kStageBytes;
    const T* ss = reinterpret_cast<const T*>(st + As::kWeightBytes);
    const int64_t G0 = g_begin + i * C;
#pragma unroll
    for (int u = 0; u < C; ++u) {
      if (G0 + u >= g_end) break;
      uint32_t wa[QW], wb[QW], xw[Sh::XW];
      const uint32_t* ra = reinterpret_cast<const uint32_t*>(st + g * kRowStride + u * As::kGroupBytes) + t * QW;
      const uint32_t* rb = reinterpret_cast<const uint32_t*>(st + (g + 8) * kRowStride + u * As::kGroupBytes) + t * QW;
      if constexpr (QW == 2) {
        const uint2 va = *reinterpret_cast<const uint2*>(ra), vb = *reinterpret_cast<const uint2*>(rb);
        wa[0] = va.x, wa[1] = va.y, wb[0] = vb.x, wb[1] = vb.y;
      } else {
#pragma unroll
        for (int j = 0; j < QW; ++j) wa[j] = ra[j], wb[j] = rb[j];
      }
      if (has_x) {
        load_x(xq + (G0 + u) * GS, xw);
      } else {
#pragma unroll
        for (int j = 0; j < Sh::XW; ++j) xw[j] = 0u;
      }
      float cq[4] = {0.f, 0.f, 0.f, 0.f}, cx[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int mm = 0; mm < Sh::MMAS; ++mm) {
        const int P0 = 2 * mm, P1 = 2 * mm + 1;
        const uint32_t x0 = x_pair<BITS>(xw, P0), x1 = x_pair<BITS>(xw, P1);
        mma16816<T>(cq, code_pair<T, BITS>(wa[P0 / H], P0 % H), code_pair<T, BITS>(wb[P0 / H], P0 % H),
                    code_pair<T, BITS>(wa[P1 / H], P1 % H), code_pair<T, BITS>(wb[P1 / H], P1 % H), x0, x1);
        if constexpr (kSplit8)
          mma16816<T>(cq, code_pair_hi8(wa[P0 / H], P0 % H), code_pair_hi8(wb[P0 / H], P0 % H),
                      code_pair_hi8(wa[P1 / H], P1 % H), code_pair_hi8(wb[P1 / H], P1 % H), x0, x1);
        constexpr uint32_t one = Magic<T>::kOne;
        mma16816<T>(cx, one, one, one, one, x0, x1);
      }
      const float sc0 = to_f32(ss[g * C + u]), sc1 = to_f32(ss[(g + 8) * C + u]);
      const float bi0 = fmaf(-kOffset, sc0, to_f32(ss[(16 + g) * C + u]));
      const float bi1 = fmaf(-kOffset, sc1, to_f32(ss[(24 + g) * C + u]));
      acc[0] = fmaf(sc0, cq[0], fmaf(bi0, cx[0], acc[0]));
      acc[1] = fmaf(sc0, cq[1], fmaf(bi0, cx[1], acc[1]));
      acc[2] = fmaf(sc1, cq[2], fmaf(bi1, cx[0], acc[2]));
      acc[3] = fmaf(sc1, cq[3], fmaf(bi1, cx[1], acc[3]));
    }
  }
  cp_async_wait<0>();  // no copy may land after the block is gone
  if (S > 1) {
#pragma unroll
    for (int c = 0; c < 4; ++c) part[warp][c][lane] = acc[c];
    __syncthreads();
    if (piece == 0)
      for (int i = 1; i < S; ++i)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[c] += part[warp + i][c][lane];
  }
  if (piece != 0 || !valid) return;
  const int m0 = 2 * t, m1 = 2 * t + 1;
  const int64_t na = n0 + g, nb = n0 + g + 8;
  if (m0 < p.M) {
    if (na < N) mt.y[m0 * N + na] = from_f32<T>(acc[0]);
    if (nb < N) mt.y[m0 * N + nb] = from_f32<T>(acc[2]);
  }
  if (m1 < p.M) {
    if (na < N) mt.y[m1 * N + na] = from_f32<T>(acc[1]);
    if (nb < N) mt.y[m1 * N + nb] = from_f32<T>(acc[3]);
  }
}

template <typename T, int BITS, int GS, int CB>
void launch_async_shape(QgemvParams<T> p) {
  using As = AsyncShape<T, BITS, GS, CB>;
  const bool group = p.count > 1;
  // Split K over S warps until the card has about a full set of blocks a multiprocessor, keeping
  // at least two chunks a piece.
  const int64_t tiles = p.tile_start[p.count], groups = p.K / GS;
  const int64_t want = int64_t(cuda_impl().sm_count()) * 8 * As::template min_blocks<false>();
  p.S = 1;
  while (p.S < kQWarps && tiles * p.S < want && groups >= int64_t(2 * p.S) * As::C) p.S *= 2;
  const int64_t tiles_per_block = kQWarps / p.S;
  const dim3 grid(unsigned((tiles + tiles_per_block - 1) / tiles_per_block));
  auto kernel = group ? qgemv_async_kernel<T, BITS, GS, CB, true> : qgemv_async_kernel<T, BITS, GS, CB, false>;
  static const bool sized = [&] {  // more than 48 KB of shared memory a block needs the opt-in
    for (auto k : {qgemv_async_kernel<T, BITS, GS, CB, true>, qgemv_async_kernel<T, BITS, GS, CB, false>})
      LMT_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, As::kBlockBytes));
    return true;
  }();
  (void)sized;
  launch("quantized_gemv", kernel, grid, kQWarps * 32, size_t(As::kBlockBytes), p);
}

}  // namespace

template <typename T>
bool launch_async(int bits, int group_size, int chunk_row_bytes, QgemvParams<T> p) {
  {
    // The scales' 4-byte pieces need an even number of groups a row and 4-byte aligned bases.
    if ((p.K / group_size) % 2 != 0) return false;
    for (int i = 0; i < p.count; ++i) {
      const T* sc = i == 0 ? p.scales : p.scaless[i];
      const T* bi = i == 0 ? p.biases : p.biasess[i];
      if (reinterpret_cast<uintptr_t>(sc) % 4 != 0 || reinterpret_cast<uintptr_t>(bi) % 4 != 0) return false;
    }
    if (chunk_row_bytes == 64) {
      switch (bits * 1000 + group_size) {
        case 4032: launch_async_shape<T, 4, 32, 64>(p); return true;
        case 4064: launch_async_shape<T, 4, 64, 64>(p); return true;
        case 8032: launch_async_shape<T, 8, 32, 64>(p); return true;
        default: return false;
      }
    }
    switch (bits * 1000 + group_size) {
      case 4032: launch_async_shape<T, 4, 32, 128>(p); return true;
      case 4064: launch_async_shape<T, 4, 64, 128>(p); return true;
      case 4128: launch_async_shape<T, 4, 128, 128>(p); return true;
      case 8032: launch_async_shape<T, 8, 32, 128>(p); return true;
      case 8064: launch_async_shape<T, 8, 64, 128>(p); return true;
      default: return false;
    }
  }
}

template bool launch_async<bf16>(int, int, int, QgemvParams<bf16>);
template bool launch_async<f16>(int, int, int, QgemvParams<f16>);

}  // namespace lmtune::qgemv
