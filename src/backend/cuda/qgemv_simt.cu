// Decoding's one-row 4-bit products on the CUDA cores (LMTUNE_CUDA_QGEMV_VARIANT=9, opt-in). Variants 5-8 run
// mma.m16n8k16 with x as one of its eight columns, and every attempt to bring them near the stream rate failed on the
// latency of a warp's chain (bench/NOTES.md, sessions 3-21). Here a warp takes R rows (R = 2; one when the rows are
// few, and gate's row with up's for swiglu) and its lanes stream 16-byte chunks of 32 codes, chunk c at lane c % 32, B
// chunks a lane in flight before any is used; the warps walk the tasks grid-stride, so every multiprocessor gets an
// even share however many rows there are. x is staged once a block into shared memory as f32, with its sum over each
// chunk; a chunk's dot and the epilogues are qgemv_simt.cuh's. Rounding: f32 sums of exact products, as variants
// 5-8; the order differs, so the values are not theirs bit for bit.
// M = 1, 4 bits and K <= 12288 only; the caller falls back to variant 7 elsewhere.
#include <algorithm>
#include <atomic>

#include "backend/backend.h"
#include "backend/cuda/qgemv_simt.cuh"
#include "core/runtime_config.h"

namespace lmtune {
namespace {
std::atomic<int64_t> early_launches{0}, wide_launches{0};
}  // namespace
int64_t cuda_qgemv_simt_early_launches() { return early_launches.load(); }
int64_t cuda_qgemv_simt_wide_launches() { return wide_launches.load(); }
}  // namespace lmtune

namespace lmtune::qgemv {

namespace {

constexpr int kSimtWarps = 8;  // warps a block
constexpr int kSimtB = 2;      // chunks a lane loads before using any (4 for one-row tasks with cuda_qgemv_simt_wide)
// K <= 12288: longer rows (Mistral's down, K = 14336) would hold a multiprocessor to three blocks, and measured slower
// than variant 7 (bench/NOTES.md): they go there. x as f32 and its chunk sums take at most kSimtMaxSmem.
constexpr int64_t kSimtMaxK = 12288;
constexpr int kSimtMaxSmem = int(simt::x_bytes(kSimtMaxK, true));

// B chunks a lane a round. EARLY: the warp's first round of its first task is loaded before x is staged (and before
// the wait on the previous kernel: weights are constant), so that its DRAM latency runs under the staging rather than
// after it. A lane adds its chunks in the order c = lane, lane + 32, ... whatever B is, so B and EARLY change no sum.
template <typename T, int GS, int R, int B, bool SWIGLU, bool SPREAD, bool EARLY>
__global__ void __launch_bounds__(kSimtWarps * 32, 4) qgemv_simt_kernel(QgemvParams<T> p, int64_t tasks) {
  using namespace simt;
  extern __shared__ float4 smem_simt[];
  const int64_t K = p.K, C = K / 32, groups = K / GS, row_words = K / 8;
  float4* xs = smem_simt;                                   // K / 4 units
  float* sx = reinterpret_cast<float*>(smem_simt + K / 4);  // C chunk sums (and C more with SPREAD)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t first = int64_t(blockIdx.x) * kSimtWarps + warp;
  Round<R, B> rd;
  Rows<T, R> rs;
  if (EARLY && first < tasks) {
    rs = rows_of<T, R, SWIGLU>(p, first, row_words, groups);
    load_round<T, GS, R, B>(rs, lane, C, rd);
  }
  pdl_enter();
  stage_x<T, SPREAD>(p.x, K, xs, sx, p.norm_w, p.norm_eps);
  run_tasks<T, GS, R, B, SWIGLU, SPREAD>(p, tasks, first, int64_t(gridDim.x) * kSimtWarps, xs, sx, EARLY, rs, rd);
}

template <typename T, int GS, int R, int B, bool SWIGLU, bool SPREAD, bool EARLY>
void launch_simt_kernel(const QgemvParams<T>& p, int64_t tasks, size_t smem) {
  auto k = qgemv_simt_kernel<T, GS, R, B, SWIGLU, SPREAD, EARLY>;
  static const bool sized = [&] {  // more than 48 KB of shared memory a block needs the opt-in
    LMT_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, kSimtMaxSmem));
    return true;
  }();
  (void)sized;
  const dim3 grid = simt::grid_for(reinterpret_cast<const void*>(k), kSimtWarps, smem, tasks,
                                   int(runtime_config().cuda_qgemv_simt_tasks));
  launch("quantized_gemv_simt", k, grid, kSimtWarps * 32, smem, p, tasks);
  if (EARLY) early_launches.fetch_add(1);
  if (B != kSimtB) wide_launches.fetch_add(1);
}

template <typename T, int GS, bool SPREAD, bool EARLY>
bool launch_simt_shape(QgemvParams<T> p) {
  if (p.K > kSimtMaxK) return false;
  const size_t smem = simt::x_bytes(p.K, SPREAD);
  if (p.swiglu) {
    launch_simt_kernel<T, GS, 2, kSimtB, true, SPREAD, EARLY>(p, p.N, smem);
    return true;
  }
  const bool two = p.rope_inv_freq || simt::rows_a_task(p) == 2;  // the rope epilogue's task is a pair
  const int64_t tasks = simt::number_tasks(p, two ? 2 : 1);
  if (two)
    launch_simt_kernel<T, GS, 2, kSimtB, false, SPREAD, EARLY>(p, tasks, smem);
  else if (runtime_config().cuda_qgemv_simt_wide)  // one row's B chunks cost the registers two rows' kSimtB take
    launch_simt_kernel<T, GS, 1, 2 * kSimtB, false, SPREAD, EARLY>(p, tasks, smem);
  else
    launch_simt_kernel<T, GS, 1, kSimtB, false, SPREAD, EARLY>(p, tasks, smem);
  return true;
}

template <typename T, int GS>
bool launch_simt_shape(const QgemvParams<T>& p) {
  // SPREAD only where variant 9 is the chosen one: variant 10 takes this kernel for its fused rope, and its sums must
  // stay those of its own kernel, which has no SPREAD layout. EARLY likewise (the same sums either way).
  const RuntimeConfig& rc = runtime_config();
  const bool nine = rc.cuda_qgemv_variant == 9, spread = rc.cuda_qgemv_simt_spread && nine,
             early = rc.cuda_qgemv_simt_early && nine;
  if (spread) return early ? launch_simt_shape<T, GS, true, true>(p) : launch_simt_shape<T, GS, true, false>(p);
  return early ? launch_simt_shape<T, GS, false, true>(p) : launch_simt_shape<T, GS, false, false>(p);
}

}  // namespace

template <typename T>
bool launch_simt(int bits, int group_size, QgemvParams<T> p) {
  return simt::takes(bits, p) &&
         simt::by_group_size(group_size, [&](auto gs) { return launch_simt_shape<T, decltype(gs)::value>(p); });
}

template bool launch_simt<bf16>(int, int, QgemvParams<bf16>);
template bool launch_simt<f16>(int, int, QgemvParams<f16>);

}  // namespace lmtune::qgemv
