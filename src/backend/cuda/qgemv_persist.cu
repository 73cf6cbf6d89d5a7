// Decoding's fused quantized products as a persistent launch (LMTUNE_CUDA_QGEMV_VARIANT=5): as
// many blocks as the card holds at once, each looping over its share of the 16-row tiles, every
// warp streaming its chunks (qgemv_async.cuh: 64 bytes of each of 16 rows and their scales and
// biases) through one cp.async ring that runs on across tile boundaries. qgemv_async.cu's warps
// own 2-4 chunks each, so each one loads, waits a full memory latency and computes, and the next
// blocks start only when a wave ends; reads alone at the same sizes stream at 3.3-3.9 TB/s
// (bench_stream) against 1.5-1.9 for those kernels (bench/NOTES.md, session 4). Same arithmetic
// per group as qgemv.cu, so equal results for equal splits of K.
#include "backend/cuda/qgemv_async.cuh"

namespace lmtune::qgemv {

namespace {

// STAGES chunks a warp's ring, MINB blocks a multiprocessor: 4 and 4 where the launch fills the
// card, 8 and 2 (twice the bytes in flight a warp) where it cannot (few tall tiles, as down_proj).
template <typename T, int BITS, int GS, int STAGES, int MINB, bool GROUP>
__global__ void __launch_bounds__(kQWarps * 32, MINB)
    qgemv_persist_kernel(QgemvParams<T> p, int64_t block_items, int cpp) {
  using Sh = MmaShape<BITS, GS>;
  using As = AsyncShape<T, BITS, GS, 64, STAGES>;
  constexpr int C = As::C;
  extern __shared__ __align__(16) uint8_t smem[];
  __shared__ float part[kQWarps][4][32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int S = p.S, piece = warp % S, tiles_per_item = kQWarps / S;
  const int64_t tiles = p.tile_start[p.count], K = p.K, groups = K / GS;
  const int64_t g_begin = min(groups, int64_t(piece) * cpp * C), g_end = min(groups, g_begin + int64_t(cpp) * C);
  // The block's items are block-items blockIdx.x, + gridDim.x, ...; an item is tiles_per_item
  // tiles, S warps a tile. Every warp of a block runs the same number of chunks (items * cpp),
  // so the pieces of a tile meet at the same step.
  const int64_t items = (block_items - blockIdx.x + gridDim.x - 1) / gridDim.x;
  const int64_t total = items * cpp;
  auto tile_of = [&](int64_t j) { return (int64_t(blockIdx.x) + j * gridDim.x) * tiles_per_item + warp / S; };
  auto matrix = [&](int64_t tile) {
    return GROUP ? select_matrix(p, tile) : QMatrix<T>{p.wq, p.scales, p.biases, p.y, p.N, tile};
  };
  uint8_t* ring = smem + warp * As::kWarpBytes;
  // The copy front: chunk `issued` of the warp's sequence, which is chunk ic of item ij.
  int64_t issued = 0, ij = 0;
  int ic = 0, istage = 0;
  auto issue = [&]() {
    if (issued < total) {
      const int64_t tile = tile_of(ij);
      if (tile < tiles) {
        const QMatrix<T> mt = matrix(tile);
        copy_chunk<T, BITS, GS, 64, STAGES>(ring + istage * As::kStageBytes, mt, mt.tile * 16,
                                            g_begin + int64_t(ic) * C, g_end, K, lane);
      }
      if (++ic == cpp) ic = 0, ++ij;
    }
    ++issued;
    if (++istage == STAGES) istage = 0;
    cp_async_commit();  // empty groups past the end keep the counts uniform
  };
  pdl_trigger();
#pragma unroll
  for (int i = 0; i < STAGES - 1; ++i) issue();  // weights only: before the wait, as qgemv.cu
  pdl_wait();
  const bool has_x = g < p.M;
  const T* xq = p.x + int64_t(has_x ? g : 0) * K + t * Sh::QV;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  int64_t j = 0;
  int c = 0, stage = 0;
  for (int64_t i = 0; i < total; ++i) {
    cp_async_wait<STAGES - 2>();  // this lane's copies of chunk i have landed
    __syncwarp();                 // and every lane's; the stage used last round is free again
    issue();
    const int64_t tile = tile_of(j);
    if (tile < tiles)
      chunk_product<T, BITS, GS, 64, STAGES>(ring + stage * As::kStageBytes, xq, has_x, g_begin + int64_t(c) * C, g_end,
                                             g, acc);
    if (++stage == STAGES) stage = 0;
    if (++c < cpp) continue;
    // Item j done: the S pieces of each tile meet in shared memory, piece 0 writes the tile.
    if (S > 1) {
#pragma unroll
      for (int q = 0; q < 4; ++q) part[warp][q][lane] = acc[q];
      __syncthreads();
      if (piece == 0)
        for (int k = 1; k < S; ++k)
#pragma unroll
          for (int q = 0; q < 4; ++q) acc[q] += part[warp + k][q][lane];
    }
    if (piece == 0 && tile < tiles) {
      const QMatrix<T> mt = matrix(tile);
      store_tile(mt, acc, mt.tile * 16, p.M, g, t);
    }
    if (S > 1) __syncthreads();  // part is written again by the next item
#pragma unroll
    for (int q = 0; q < 4; ++q) acc[q] = 0.f;
    c = 0, ++j;
  }
  cp_async_wait<0>();  // no copy may land after the block is gone
}

// The split of K (S) and grid for a launch of at most `resident` blocks: the S in 1, 2, 4, 8
// (at least two chunks a piece) with the fewest chunks a warp on the busiest block, ties to the
// larger S (more warps streaming).
struct PersistPlan {
  int S = 1, cpp = 0;
  int64_t block_items = 0, grid = 0, path = 0;
};
PersistPlan plan_persist(int64_t tiles, int64_t groups, int C, int64_t resident) {
  PersistPlan best;
  for (int S = 1; S <= kQWarps; S *= 2) {
    if (S > 1 && groups < int64_t(2) * S * C) break;
    PersistPlan pl;
    pl.S = S;
    pl.cpp = int((((groups + S - 1) / S) + C - 1) / C);
    pl.block_items = (tiles + kQWarps / S - 1) / (kQWarps / S);
    pl.grid = std::min(pl.block_items, resident);
    pl.path = (pl.block_items + pl.grid - 1) / pl.grid * pl.cpp;
    if (best.cpp == 0 || pl.path <= best.path) best = pl;
  }
  return best;
}

template <typename T, int BITS, int GS, int STAGES, int MINB>
void launch_persist_config(QgemvParams<T> p, const PersistPlan& pl) {
  using As = AsyncShape<T, BITS, GS, 64, STAGES>;
  static const bool sized = [&] {  // more than 48 KB of shared memory a block needs the opt-in
    for (auto k : {qgemv_persist_kernel<T, BITS, GS, STAGES, MINB, true>,
                   qgemv_persist_kernel<T, BITS, GS, STAGES, MINB, false>})
      LMT_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, As::kBlockBytes));
    return true;
  }();
  (void)sized;
  p.S = pl.S;
  auto kernel = p.count > 1 ? qgemv_persist_kernel<T, BITS, GS, STAGES, MINB, true>
                            : qgemv_persist_kernel<T, BITS, GS, STAGES, MINB, false>;
  launch("quantized_gemv", kernel, dim3(unsigned(pl.grid)), kQWarps * 32, size_t(As::kBlockBytes), p, pl.block_items,
         pl.cpp);
}

template <typename T, int BITS, int GS>
void launch_persist_shape(QgemvParams<T> p) {
  constexpr int C = AsyncShape<T, BITS, GS, 64>::C;
  const int64_t tiles = p.tile_start[p.count], groups = p.K / GS, sms = cuda_impl().sm_count();
  // Four blocks a multiprocessor with 4-chunk rings where the launch fills them; where it fills
  // fewer than three quarters, two blocks with 8-chunk rings.
  const PersistPlan wide = plan_persist(tiles, groups, C, sms * 4);
  if (wide.grid * 4 >= sms * 4 * 3) return launch_persist_config<T, BITS, GS, 4, 4>(p, wide);
  launch_persist_config<T, BITS, GS, 8, 2>(p, plan_persist(tiles, groups, C, sms * 2));
}

}  // namespace

template <typename T>
bool launch_persist(int bits, int group_size, QgemvParams<T> p) {
  if (!async_scales_fit(group_size, p)) return false;
  switch (bits * 1000 + group_size) {
    case 4032: launch_persist_shape<T, 4, 32>(p); return true;
    case 4064: launch_persist_shape<T, 4, 64>(p); return true;
    case 8032: launch_persist_shape<T, 8, 32>(p); return true;
    default: return false;
  }
}

template bool launch_persist<bf16>(int, int, QgemvParams<bf16>);
template bool launch_persist<f16>(int, int, QgemvParams<f16>);

}  // namespace lmtune::qgemv
