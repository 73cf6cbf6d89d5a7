// Decoding's fused quantized products, qgemv_async.cu's method with fewer instructions a chunk
// (LMTUNE_CUDA_QGEMV_VARIANT=5): a warp's 16-row tile slice streamed in 64-byte row chunks through
// a 4-stage cp.async ring, each lane's copy addresses worked out once (a chunk adds a constant to
// them) and full chunks computed without per-group bound checks. qgemv_async.cu's warps spend ~150
// instructions a group, qgemv.cu's ~90, where reads alone at the same sizes run 2.4x faster
// (bench_stream; bench/NOTES.md, session 4). Same arithmetic per group and the same split of K as
// qgemv_async.cu's 64-byte variant, so the same results bit for bit.
#include "backend/cuda/qgemv_async.cuh"

namespace lmtune::qgemv {

namespace {

template <typename T, int BITS, int GS, bool GROUP>
__global__ void __launch_bounds__(kQWarps * 32, AsyncShape<T, BITS, GS, 64>::template min_blocks<GROUP>())
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
  const QMatrix<T> mt =
      GROUP ? select_matrix(p, valid ? global_tile : 0) : QMatrix<T>{p.wq, p.scales, p.biases, p.y, p.N, global_tile};
  const int S = p.S, piece = warp % S;
  const int64_t N = mt.N, K = p.K, groups = K / GS, n0 = mt.tile * 16;
  const int64_t per = ((groups + S - 1) / S + C - 1) / C * C;  // each piece a whole number of chunks
  const int64_t g_begin = min(groups, piece * per);
  const int ng = int(min(groups, g_begin + per) - g_begin), chunks = (ng + C - 1) / C;
  // This lane's copies, as in copy_chunk: chunk i's weight piece k comes from wsrc[k] + 64 i into
  // ring + stage + wdst[k]; its scale piece k from ssrc[k] + C i into ring + stage + sdst[k].
  const uint32_t ring = smem_addr(smem + warp * As::kWarpBytes);
  const uint8_t* wsrc[KP];
  uint32_t wdst[KP];
  int wgo[KP];  // the piece's first group within its chunk
#pragma unroll
  for (int k = 0; k < KP; ++k) {
    const int pc = lane + 32 * k, row = pc / 4, col = pc % 4;
    const int64_t r = min(n0 + row, N - 1);
    wsrc[k] = reinterpret_cast<const uint8_t*>(mt.wq) + r * (K * BITS / 8) + g_begin * As::kGroupBytes + col * 16;
    wdst[k] = ring + row * As::kRowStride + col * 16;
    wgo[k] = col * 16 / As::kGroupBytes;
  }
  const T* ssrc[KS];
  uint32_t sdst[KS];
  int sgo[KS];
#pragma unroll
  for (int k = 0; k < KS; ++k) {
    const int pc = lane + 32 * k, pair = pc % (C / 2), row = (pc / (C / 2)) % 16, which = pc / (C / 2) / 16;
    const int64_t r = min(n0 + row, N - 1);
    ssrc[k] = (which ? mt.biases : mt.scales) + r * groups + g_begin + 2 * pair;
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
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  const bool has_x = g < p.M;
  const T* xq = p.x + int64_t(has_x ? g : 0) * K + t * Sh::QV + g_begin * GS;
  const uint8_t* ring_ptr = smem + warp * As::kWarpBytes;
  for (int i = 0; i < chunks; ++i) {
    cp_async_wait<kStages - 2>();  // this lane's copies of chunk i have landed
    __syncwarp();                  // and every lane's; the stage used last round is free again
    issue(i + kStages - 1);
    if (!valid) continue;
    const uint8_t* st = ring_ptr + (i & 3) * As::kStageBytes;
    if ((i + 1) * C <= ng)
      chunk_groups<T, BITS, GS, 64, kStages, true>(st, xq + int64_t(i) * C * GS, has_x, C, g, acc);
    else
      chunk_groups<T, BITS, GS, 64, kStages, false>(st, xq + int64_t(i) * C * GS, has_x, ng - i * C, g, acc);
  }
  cp_async_wait<0>();  // no copy may land after the block is gone
  meet_pieces(part, acc, warp, lane, S, piece);
  if (piece != 0 || !valid) return;
  store_tile(mt, acc, n0, p.M, g, t);
}

template <typename T, int BITS, int GS>
void launch_lean_shape(QgemvParams<T> p) {
  using As = AsyncShape<T, BITS, GS, 64>;
  // qgemv_async.cu's split of K (the same S, so the same sums).
  const int64_t tiles = p.tile_start[p.count], groups = p.K / GS;
  const int64_t want = int64_t(cuda_impl().sm_count()) * 8 * As::template min_blocks<false>();
  p.S = 1;
  while (p.S < kQWarps && tiles * p.S < want && groups >= int64_t(2 * p.S) * As::C) p.S *= 2;
  const int64_t tiles_per_block = kQWarps / p.S;
  const dim3 grid(unsigned((tiles + tiles_per_block - 1) / tiles_per_block));
  static const bool sized = [&] {  // more than 48 KB of shared memory a block needs the opt-in
    for (auto k : {qgemv_lean_kernel<T, BITS, GS, true>, qgemv_lean_kernel<T, BITS, GS, false>})
      LMT_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, As::kBlockBytes));
    return true;
  }();
  (void)sized;
  launch("quantized_gemv", p.count > 1 ? qgemv_lean_kernel<T, BITS, GS, true> : qgemv_lean_kernel<T, BITS, GS, false>,
         grid, kQWarps * 32, size_t(As::kBlockBytes), p);
}

}  // namespace

template <typename T>
bool launch_lean(int bits, int group_size, QgemvParams<T> p) {
  if (!async_scales_fit(group_size, p)) return false;
  switch (bits * 1000 + group_size) {
    case 4032: launch_lean_shape<T, 4, 32>(p); return true;
    case 4064: launch_lean_shape<T, 4, 64>(p); return true;
    case 8032: launch_lean_shape<T, 8, 32>(p); return true;
    default: return false;
  }
}

template bool launch_lean<bf16>(int, int, QgemvParams<bf16>);
template bool launch_lean<f16>(int, int, QgemvParams<f16>);

}  // namespace lmtune::qgemv
