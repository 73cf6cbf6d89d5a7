// Decoding's fused quantized products (qgemv.cu's method and tile arithmetic) with the weights
// staged through shared memory: each warp streams its 16-row tile in chunks (64 or 128 bytes of each row,
// plus the chunk's scales and biases) with cp.async into a ring of kStages buffers, so that
// kStages - 1 chunks are in flight while one is used and none of them holds a register. qgemv.cu's
// kernel keeps its loads in registers, which caps the bytes in flight a multiprocessor (bench/NOTES.md,
// session 3). Taken where a chunk holds an even number of groups (64-byte chunks: 4 bits in
// groups of 32 or 64, 8 bits in groups of 32; 128-byte chunks: also 4 bits in groups of 128 and 8
// bits in groups of 64; 2 bits would fit but spill), for an even number of groups a row and
// 4-byte aligned scales; elsewhere the caller runs qgemv.cu's kernel.
#include "backend/cuda/qgemv_async.cuh"

namespace lmtune::qgemv {

namespace {

template <typename T, int BITS, int GS, int CB, bool GROUP>
__global__ void __launch_bounds__(kQWarps * 32, AsyncShape<T, BITS, GS, CB>::template min_blocks<GROUP>())
    qgemv_async_kernel(QgemvParams<T> p) {
  using Sh = MmaShape<BITS, GS>;
  using As = AsyncShape<T, BITS, GS, CB>;
  constexpr int C = As::C, kStages = As::kStages;
  extern __shared__ __align__(16) uint8_t smem[];
  __shared__ float part[kQWarps][4][32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t global_tile = int64_t(blockIdx.x) * (kQWarps / p.S) + warp / p.S;
  const bool valid = global_tile < p.tile_start[p.count];
  const QMatrix<T> mt =
      GROUP ? select_matrix(p, valid ? global_tile : 0) : QMatrix<T>{p.wq, p.scales, p.biases, p.y, p.N, global_tile};
  const int S = p.S, piece = warp % S;
  const int64_t K = p.K, groups = K / GS, n0 = mt.tile * 16;
  // Each piece of K a whole number of chunks.
  const int64_t per = ((groups + S - 1) / S + C - 1) / C * C;
  const int64_t g_begin = min(groups, piece * per), g_end = min(groups, g_begin + per);
  const int64_t chunks = (g_end - g_begin + C - 1) / C;
  uint8_t* ring = smem + warp * As::kWarpBytes;
  auto issue = [&](int64_t i) {
    if (valid && i < chunks)
      copy_chunk<T, BITS, GS, CB, kStages>(ring + (i % kStages) * As::kStageBytes, mt, n0, g_begin + i * C, g_end, K,
                                           lane);
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
    chunk_product<T, BITS, GS, CB, kStages>(ring + (i % kStages) * As::kStageBytes, xq, has_x, g_begin + i * C, g_end,
                                            g, acc);
  }
  cp_async_wait<0>();  // no copy may land after the block is gone
  meet_pieces(part, acc, warp, lane, S, piece);
  if (piece != 0 || !valid) return;
  store_tile(mt, acc, n0, p.M, g, t);
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
    if (!async_scales_fit(group_size, p)) return false;
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
