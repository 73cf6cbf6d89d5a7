// The cp.async pieces of the shared-memory quantized GEMVs (qgemv_async.cu: a warp's slice of a
// tile staged through a ring; qgemv_lean.cu: the same with fewer instructions a chunk): the chunk
// shape, the copies and a chunk's products.
#pragma once
#include "backend/cuda/qgemv_mma.cuh"

namespace lmtune::qgemv {

// CB: bytes of each row a chunk holds, 64 (4 stages, ~49 KB of shared memory a block, 4 blocks a
// multiprocessor at 64 registers) or 128 (whole 128-byte lines; 3 stages, ~65 KB, 3 blocks). A
// grouped launch's matrix selection needs more registers: 3 blocks (80; at 64 they spill).

template <typename T, int BITS, int GS, int CB, int STAGES = (CB == 64 ? 4 : 3)>
struct AsyncShape {
  static constexpr int kChunkRowBytes = CB;
  static constexpr int kRowStride = CB + 16;  // padded: lane (g, t)'s reads hit distinct banks
  static constexpr int kStages = STAGES;
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
// The same to a shared-memory address already converted (smem_addr).
__device__ __forceinline__ void cp_async16_at(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async4_at(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// Whether the shared-memory kernels take p: their scales' 4-byte pieces need an even number of
// groups a row and 4-byte aligned bases.
template <typename T>
inline bool async_scales_fit(int group_size, const QgemvParams<T>& p) {
  if ((p.K / group_size) % 2 != 0) return false;
  for (int i = 0; i < p.count; ++i) {
    const T* sc = i == 0 ? p.scales : p.scaless[i];
    const T* bi = i == 0 ? p.biases : p.biasess[i];
    if (reinterpret_cast<uintptr_t>(sc) % 4 != 0 || reinterpret_cast<uintptr_t>(bi) % 4 != 0) return false;
  }
  return true;
}

// A chunk (groups G0 .. G0 + C - 1 of the 16 rows n0 .. n0 + 15 of mt) into stage st: lane copies
// weight pieces lane, lane + 32, ... (row piece / (CB / 16), 16-byte column piece % (CB / 16))
// and scale pieces likewise (scales then biases, row, pair of groups). Rows past N read row N - 1
// (never written out); groups past g_end are zero-filled and never used. Commits nothing.
template <typename T, int BITS, int GS, int CB, int STAGES>
__device__ __forceinline__ void copy_chunk(uint8_t* st, const QMatrix<T>& mt, int64_t n0, int64_t G0, int64_t g_end,
                                           int64_t K, int lane) {
  using As = AsyncShape<T, BITS, GS, CB, STAGES>;
  const int64_t N = mt.N, groups = K / GS, row_bytes = K * BITS / 8;
  const uint8_t* wbase = reinterpret_cast<const uint8_t*>(mt.wq);
#pragma unroll
  for (int k = 0; k < As::kPieces / 32; ++k) {
    const int pc = lane + 32 * k, row = pc / (CB / 16), col = pc % (CB / 16);
    const int64_t r = min(n0 + row, N - 1);
    const int64_t G = G0 + col * 16 / As::kGroupBytes;
    const bool in = G < g_end;
    cp_async16(st + row * As::kRowStride + col * 16,
               in ? wbase + r * row_bytes + G0 * As::kGroupBytes + col * 16 : wbase, in ? 16 : 0);
  }
  uint8_t* ss = st + As::kWeightBytes;
#pragma unroll
  for (int k = 0; k < As::kScalePieces / 32; ++k) {
    const int pc = lane + 32 * k, pair = pc % (As::C / 2), row = (pc / (As::C / 2)) % 16, which = pc / (As::C / 2) / 16;
    const int64_t r = min(n0 + row, N - 1), G = G0 + 2 * pair;
    const T* src = (which ? mt.biases : mt.scales) + r * groups + G;
    const int bytes = G + 1 < g_end ? 4 : G < g_end ? 2 : 0;
    cp_async4(ss + ((which * 16 + row) * As::C + 2 * pair) * int(sizeof(T)), bytes ? src : mt.scales, bytes);
  }
}

// acc (lane (g, t)'s four outputs, qgemv.cu's layout) += the first `count` groups of the chunk in
// stage st times x; xq is x at the chunk's first group, row g, this lane's quarter (any row when
// !has_x: B's columns >= M are zeros). FULL: all C of them, no count checks. PRESUM: the sums of
// x per group come from xsum (this lane's rows 2t and 2t + 1 at the chunk's first group, the next
// group xsum_stride further) instead of a second mma with A = ones.
template <typename T, int BITS, int GS, int CB, int STAGES, bool FULL, bool PRESUM = false>
__device__ __forceinline__ void chunk_groups(const uint8_t* st, const T* xq, bool has_x, int count, int g,
                                             float (&acc)[4], const float2* xsum = nullptr, int xsum_stride = 0) {
  using Sh = MmaShape<BITS, GS>;
  using As = AsyncShape<T, BITS, GS, CB, STAGES>;
  constexpr int H = Sh::H, QW = Sh::QW, C = As::C, kRowStride = As::kRowStride;
  constexpr bool kBf16 = std::is_same_v<T, bf16>, kSplit8 = kBf16 && BITS == 8;
  constexpr float kOffset = !kBf16 ? 0.f : BITS == 8 ? 2176.f : 128.f;  // what A's codes carry above q
  const int t = threadIdx.x % 4;
  const T* ss = reinterpret_cast<const T*>(st + As::kWeightBytes);
#pragma unroll
  for (int u = 0; u < C; ++u) {
    if (!FULL && u >= count) break;
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
      load_x(xq + u * GS, xw);
    } else {
#pragma unroll
      for (int j = 0; j < Sh::XW; ++j) xw[j] = 0u;
    }
    float cq[4] = {0.f, 0.f, 0.f, 0.f}, cx[4] = {0.f, 0.f, 0.f, 0.f};  // sum (q + offset) x, sum x
#pragma unroll
    for (int mm = 0; mm < Sh::MMAS; ++mm) {
      const int P0 = 2 * mm, P1 = 2 * mm + 1;
      const uint32_t x0 = x_pair<BITS>(xw, P0), x1 = x_pair<BITS>(xw, P1);
      mma16816<T>(cq, code_pair<T, BITS>(wa[P0 / H], P0 % H), code_pair<T, BITS>(wb[P0 / H], P0 % H),
                  code_pair<T, BITS>(wa[P1 / H], P1 % H), code_pair<T, BITS>(wb[P1 / H], P1 % H), x0, x1);
      if constexpr (kSplit8)
        mma16816<T>(cq, code_pair_hi8(wa[P0 / H], P0 % H), code_pair_hi8(wb[P0 / H], P0 % H),
                    code_pair_hi8(wa[P1 / H], P1 % H), code_pair_hi8(wb[P1 / H], P1 % H), x0, x1);
      if constexpr (!PRESUM) {
        constexpr uint32_t one = Magic<T>::kOne;
        mma16816<T>(cx, one, one, one, one, x0, x1);
      }
    }
    if constexpr (PRESUM) {
      const float2 s = xsum[u * xsum_stride];
      cx[0] = s.x, cx[1] = s.y;
    }
    // cx[2], cx[3] (rows g + 8 of the ones) equal cx[0], cx[1].
    const float sc0 = to_f32(ss[g * C + u]), sc1 = to_f32(ss[(g + 8) * C + u]);
    const float bi0 = fmaf(-kOffset, sc0, to_f32(ss[(16 + g) * C + u]));
    const float bi1 = fmaf(-kOffset, sc1, to_f32(ss[(24 + g) * C + u]));
    acc[0] = fmaf(sc0, cq[0], fmaf(bi0, cx[0], acc[0]));
    acc[1] = fmaf(sc0, cq[1], fmaf(bi0, cx[1], acc[1]));
    acc[2] = fmaf(sc1, cq[2], fmaf(bi1, cx[0], acc[2]));
    acc[3] = fmaf(sc1, cq[3], fmaf(bi1, cx[1], acc[3]));
  }
}

// The same for the chunk of groups G0 .. (those at or past g_end skipped), xq at group 0.
template <typename T, int BITS, int GS, int CB, int STAGES>
__device__ __forceinline__ void chunk_product(const uint8_t* st, const T* xq, bool has_x, int64_t G0, int64_t g_end,
                                              int g, float (&acc)[4]) {
  chunk_groups<T, BITS, GS, CB, STAGES, false>(
      st, xq + G0 * GS, has_x, int(min(g_end - G0, int64_t(AsyncShape<T, BITS, GS, CB, STAGES>::C))), g, acc);
}

}  // namespace lmtune::qgemv
