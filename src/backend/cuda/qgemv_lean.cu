// Decoding's fused quantized products, qgemv_async.cu's method with fewer instructions a chunk
// (LMTUNE_CUDA_QGEMV_VARIANT=5): a warp's 16-row tile slice streamed in 64-byte row chunks through
// a 4-stage cp.async ring, each lane's copy addresses worked out once (a chunk adds a constant to
// them) and full chunks computed without per-group bound checks. qgemv_async.cu's warps spend ~150
// instructions a group, qgemv.cu's ~90, where reads alone at the same sizes run 2.4x faster
// (bench_stream; bench/NOTES.md, session 4). Same arithmetic per group and the same split of K as
// qgemv_async.cu's 64-byte variant, so the same results bit for bit.
//   Variant 6 (PRESUM) sums x over each group once per block instead of once per tile (the second
// mma of every group), which changes the f32 rounding of those sums, not the method. Both run
// decoding's fused epilogues: swiglu of gate and up (a tile of 8 rows of each) and a residual add.
#include "backend/cuda/qgemv_async.cuh"

namespace lmtune::qgemv {

namespace {

// What a launch computes: one product (or a few grouped, select_matrix), or gate and up as one
// tile (8 rows of each, p.swiglu) with swiglu in the epilogue.
enum Mode { kSingle, kGroup, kSwiglu };

// Bytes of the per-group sums of x (PRESUM) after the ring: groups x MP floats, MP = M rounded up
// to 2, 4 or 8 (lane t reads rows 2t and 2t + 1 as a float2).
__host__ __device__ inline int presum_rows(int M) { return M <= 2 ? 2 : M <= 4 ? 4 : 8; }
constexpr int64_t kMaxPresumBytes = 32 * 1024;

// Blocks a multiprocessor (registers): 3 (80) where 4 (64) spills: grouped matrices' selection,
// and swiglu's two matrices with the second mma.
template <int MODE, bool PRESUM>
constexpr bool lean_needs_80() {
  return MODE == kGroup || (MODE == kSwiglu && !PRESUM);
}

template <typename T, int BITS, int GS, int MODE, bool PRESUM>
__global__ void __launch_bounds__(kQWarps * 32,
                                  AsyncShape<T, BITS, GS, 64>::template min_blocks<lean_needs_80<MODE, PRESUM>()>())
    qgemv_lean_kernel(QgemvParams<T> p) {
  using Sh = MmaShape<BITS, GS>;
  using As = AsyncShape<T, BITS, GS, 64>;
  constexpr int C = As::C, kStages = As::kStages, KP = As::kPieces / 32, KS = As::kScalePieces / 32;
  static_assert(kStages == 4, "the stage index below is i & 3");
  extern __shared__ __align__(16) uint8_t smem[];
  __shared__ float part[kQWarps][4][32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t global_tile = int64_t(blockIdx.x) * (kQWarps / p.S) + warp / p.S;
  const bool valid = global_tile < p.tile_start[p.count];
  const QMatrix<T> mt = MODE == kGroup ? select_matrix(p, valid ? global_tile : 0)
                                       : QMatrix<T>{p.wq, p.scales, p.biases, p.y, p.N, global_tile};
  const int S = p.S, piece = warp % S;
  const int64_t N = mt.N, K = p.K, groups = K / GS;
  // A tile's first row: 16 rows of one matrix, or (kSwiglu) rows n0 .. n0 + 7 of gate (A's rows
  // 0-7) and of up (A's rows 8-15).
  const int64_t n0 = mt.tile * (MODE == kSwiglu ? 8 : 16);
  const int64_t per = ((groups + S - 1) / S + C - 1) / C * C;  // each piece a whole number of chunks
  const int64_t g_begin = min(groups, piece * per);
  const int ng = int(min(groups, g_begin + per) - g_begin), chunks = (ng + C - 1) / C;
  // A's row `row` of this tile: its matrix's packed words, scales and biases, and its row there.
  auto row_of = [&](int row) { return MODE == kSwiglu ? min(n0 + row % 8, N - 1) : min(n0 + row, N - 1); };
  auto second = [&](int row) { return MODE == kSwiglu && row >= 8; };
  // This lane's copies, as in copy_chunk: chunk i's weight piece k comes from wsrc[k] + 64 i into
  // ring + stage + wdst[k]; its scale piece k from ssrc[k] + C i into ring + stage + sdst[k].
  const uint32_t ring = smem_addr(smem + warp * As::kWarpBytes);
  const uint8_t* wsrc[KP];
  uint32_t wdst[KP];
  int wgo[KP];  // the piece's first group within its chunk
#pragma unroll
  for (int k = 0; k < KP; ++k) {
    const int pc = lane + 32 * k, row = pc / 4, col = pc % 4;
    const uint32_t* wq = second(row) ? p.wqs[1] : mt.wq;
    wsrc[k] =
        reinterpret_cast<const uint8_t*>(wq) + row_of(row) * (K * BITS / 8) + g_begin * As::kGroupBytes + col * 16;
    wdst[k] = ring + row * As::kRowStride + col * 16;
    wgo[k] = col * 16 / As::kGroupBytes;
  }
  const T* ssrc[KS];
  uint32_t sdst[KS];
  int sgo[KS];
#pragma unroll
  for (int k = 0; k < KS; ++k) {
    const int pc = lane + 32 * k, pair = pc % (C / 2), row = (pc / (C / 2)) % 16, which = pc / (C / 2) / 16;
    const T* base = which ? (second(row) ? p.biasess[1] : mt.biases) : (second(row) ? p.scaless[1] : mt.scales);
    ssrc[k] = base + row_of(row) * groups + g_begin + 2 * pair;
    sdst[k] = ring + As::kWeightBytes + ((which * 16 + row) * C + 2 * pair) * int(sizeof(T));
    sgo[k] = 2 * pair;
  }
  auto issue = [&](int i) {
    if (valid && i < chunks) {
      const uint32_t so = uint32_t(i & 3) * As::kStageBytes;
      const int rel = i * C;
#pragma unroll
      for (int k = 0; k < KP; ++k) {
        const bool in = rel + wgo[k] < ng;
        cp_async16_at(wdst[k] + so, in ? wsrc[k] + int64_t(i) * 64 : wsrc[k], in ? 16 : 0);
      }
#pragma unroll
      for (int k = 0; k < KS; ++k) {
        const int G = rel + sgo[k], bytes = G + 1 < ng ? 4 : G < ng ? 2 : 0;
        cp_async4_at(sdst[k] + so, bytes ? ssrc[k] + rel : ssrc[k], bytes);
      }
    }
    cp_async_commit();  // an empty group past the last chunk keeps the counts uniform
  };
  pdl_trigger();
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) issue(i);  // weights only: before the wait, as qgemv.cu
  pdl_wait();
  // PRESUM: the block's threads sum x over each group (row m) once, four threads a sum, into
  // xsum[G * MP + m] (rows M .. MP - 1 zero), for every warp's tiles; the mma with A = ones that
  // gave each tile these sums again is gone. A fixed order, so every block has the same sums.
  const int MP = presum_rows(p.M);
  const float* xsum = reinterpret_cast<const float*>(smem + As::kBlockBytes);
  if constexpr (PRESUM) {
    float* xs = reinterpret_cast<float*>(smem + As::kBlockBytes);
    const int q = threadIdx.x % 4;
    const unsigned quad = 0xFu << (lane & ~3);
    for (int64_t i = threadIdx.x / 4; i < groups * MP; i += kQWarps * 32 / 4) {
      const int64_t G = i / MP;
      const int m = int(i % MP);
      float s = 0.f;
      if (m < p.M) {
        const uint4* src = reinterpret_cast<const uint4*>(p.x + int64_t(m) * K + G * GS + q * (GS / 4));
#pragma unroll
        for (int j = 0; j < GS / 4 / 8; ++j) {
          const uint4 v = __ldg(src + j);
          const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
          for (int k = 0; k < 8; ++k) s += to_f32(e[k]);
        }
      }
      s += __shfl_xor_sync(quad, s, 1);
      s += __shfl_xor_sync(quad, s, 2);
      if (q == 0) xs[i] = s;
    }
    __syncthreads();
  }
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  const bool has_x = g < p.M;
  const T* xq = p.x + int64_t(has_x ? g : 0) * K + t * Sh::QV + g_begin * GS;
  const float2* xs2 = reinterpret_cast<const float2*>(xsum) + g_begin * (MP / 2) + (2 * t < MP ? t : 0);
  const uint8_t* ring_ptr = smem + warp * As::kWarpBytes;
  for (int i = 0; i < chunks; ++i) {
    cp_async_wait<kStages - 2>();  // this lane's copies of chunk i have landed
    __syncwarp();                  // and every lane's; the stage used last round is free again
    issue(i + kStages - 1);
    if (!valid) continue;
    const uint8_t* st = ring_ptr + (i & 3) * As::kStageBytes;
    const float2* xsc = xs2 + int64_t(i) * C * (MP / 2);
    if ((i + 1) * C <= ng)
      chunk_groups<T, BITS, GS, 64, kStages, true, PRESUM>(st, xq + int64_t(i) * C * GS, has_x, C, g, acc, xsc, MP / 2);
    else
      chunk_groups<T, BITS, GS, 64, kStages, false, PRESUM>(st, xq + int64_t(i) * C * GS, has_x, ng - i * C, g, acc,
                                                            xsc, MP / 2);
  }
  cp_async_wait<0>();  // no copy may land after the block is gone
  meet_pieces(part, acc, warp, lane, S, piece);
  if (piece != 0 || !valid) return;
  if constexpr (MODE == kSwiglu) {
    // acc[0], acc[1]: gate row n0 + g for x rows 2t, 2t + 1; acc[2], acc[3]: up's, the same row.
    const int64_t n = n0 + g;
    if (n >= N) return;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = 2 * t + h;
      if (m >= p.M) break;
      const float gv = to_f32(from_f32<T>(acc[h])), uv = to_f32(from_f32<T>(acc[2 + h]));
      p.y[m * N + n] = from_f32<T>(gv * (1.f / (1.f + expf(-gv))) * uv);  // elementwise.cu's SwigluF
    }
  } else if (MODE == kSingle && p.residual) {
    float sum[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t n = min(n0 + g + (c & 2 ? 8 : 0), N - 1);
      const int m = min(2 * t + (c & 1), p.M - 1);
      sum[c] = to_f32(p.residual[m * N + n]) + to_f32(from_f32<T>(acc[c]));
    }
    store_tile(mt, sum, n0, p.M, g, t);
  } else {
    store_tile(mt, acc, n0, p.M, g, t);
  }
}

template <typename T, int BITS, int GS, int MODE, bool PRESUM>
void launch_lean_kernel(const QgemvParams<T>& p, dim3 grid) {
  using As = AsyncShape<T, BITS, GS, 64>;
  auto k = qgemv_lean_kernel<T, BITS, GS, MODE, PRESUM>;
  static const bool sized = [&] {  // more than 48 KB of shared memory a block needs the opt-in
    LMT_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        As::kBlockBytes + (PRESUM ? int(kMaxPresumBytes) : 0)));
    return true;
  }();
  (void)sized;
  const size_t presum = PRESUM ? size_t(p.K / GS) * size_t(presum_rows(p.M)) * sizeof(float) : 0;
  launch("quantized_gemv", k, grid, kQWarps * 32, size_t(As::kBlockBytes) + presum, p);
}

template <typename T, int BITS, int GS, bool PRESUM>
void launch_lean_shape(QgemvParams<T> p) {
  using As = AsyncShape<T, BITS, GS, 64>;
  // qgemv_async.cu's split of K (the same S, so the same sums).
  const int64_t tiles = p.tile_start[p.count], groups = p.K / GS;
  const int64_t want = int64_t(cuda_impl().sm_count()) * 8 * As::template min_blocks<false>();
  p.S = 1;
  // swiglu's tiles hold 8 rows of gate and of up: split K as the plain gate product of 16-row
  // tiles would, so that the sums (and the values) are the plain path's.
  const int64_t split_tiles = p.swiglu ? (p.N + 15) / 16 : tiles;
  while (p.S < kQWarps && split_tiles * p.S < want && groups >= int64_t(2 * p.S) * As::C) p.S *= 2;
  const int64_t tiles_per_block = kQWarps / p.S;
  const dim3 grid(unsigned((tiles + tiles_per_block - 1) / tiles_per_block));
  if (p.swiglu) return launch_lean_kernel<T, BITS, GS, kSwiglu, PRESUM>(p, grid);
  if (p.count > 1) return launch_lean_kernel<T, BITS, GS, kGroup, PRESUM>(p, grid);
  launch_lean_kernel<T, BITS, GS, kSingle, PRESUM>(p, grid);
}

template <typename T, bool PRESUM>
bool launch_lean_for(int bits, int group_size, const QgemvParams<T>& p) {
  switch (bits * 1000 + group_size) {
    case 4032: launch_lean_shape<T, 4, 32, PRESUM>(p); return true;
    case 4064: launch_lean_shape<T, 4, 64, PRESUM>(p); return true;
    case 8032: launch_lean_shape<T, 8, 32, PRESUM>(p); return true;
    default: return false;
  }
}

}  // namespace

template <typename T>
bool launch_lean(int bits, int group_size, QgemvParams<T> p, bool presum) {
  if (!async_scales_fit(group_size, p) || (p.residual && (p.count > 1 || p.swiglu))) return false;
  const int64_t presum_bytes = (p.K / group_size) * presum_rows(p.M) * int64_t(sizeof(float));
  if (presum && presum_bytes <= kMaxPresumBytes) return launch_lean_for<T, true>(bits, group_size, p);
  return launch_lean_for<T, false>(bits, group_size, p);
}

template bool launch_lean<bf16>(int, int, QgemvParams<bf16>, bool);
template bool launch_lean<f16>(int, int, QgemvParams<f16>, bool);

}  // namespace lmtune::qgemv
