// Decoding's one-row 4-bit products on the CUDA cores, fed through a ring (LMTUNE_CUDA_QGEMV_VARIANT=10, opt-in).
// Variant 9 (qgemv_simt.cu) loads a round of chunks into registers, waits for them and only then computes, and all the
// warps of a multiprocessor leave x's staging together and stay in phase: its gate product measured ~7 us of issue
// plus ~9.5 us of reads, added up, not overlapped. Keeping the next round in registers cost occupancy (bench/NOTES.md).
// Here each warp owns a ring of kStages stages in shared memory and copies them with cp.async, which holds no
// registers: a stage is kSegChunks chunks of each of the task's R rows (two a lane) with their scales and biases, the
// warp's stages run task after task (its tasks grid-stride, as variant 9's), and while a stage is computed the next
// kStages - 1 are in flight. The first stages are asked for before the wait on the previous kernel (the weights are
// constant; x is not), so the ring fills while x is staged.
//   Each lane copies and reads back its own chunks, so only the scales (copied by a few lanes, read by all) need the
// warp's barrier. Sums, rounding and epilogues are variant 9's (qgemv_simt.cuh): the same values bit for bit.
// M = 1, 4 bits, K <= 28672, a whole number of 16-byte scale pieces a row (groups % 8 == 0) and 16-byte aligned
// scales and biases; the caller falls back to variant 9, then 7, elsewhere.
#include <algorithm>
#include <atomic>

#include "backend/backend.h"
#include "backend/cuda/qgemv_async.cuh"
#include "backend/cuda/qgemv_simt.cuh"

namespace lmtune {
namespace {
std::atomic<int64_t> simt_ring_launches{0};
}  // namespace
int64_t cuda_qgemv_simt_ring_launches() { return simt_ring_launches.load(); }
}  // namespace lmtune

namespace lmtune::qgemv {

namespace {

constexpr int kRingWarps = 8;   // warps a block
constexpr int kStages = 3;      // a warp's ring
constexpr int kSegChunks = 64;  // chunks of a row a stage: two a lane, 2048 codes
constexpr int64_t kRingMaxK = 28672;

// One stage of a warp, in bytes: R rows' codes, then their scales, then their biases.
template <typename T, int GS, int R>
struct Stage {
  static constexpr int kGroups = kSegChunks * 32 / GS;  // groups of a row a stage
  static constexpr int kCodeBytes = R * kSegChunks * 16;
  static constexpr int kScaleBytes = R * kGroups * int(sizeof(T));
  static constexpr int kBytes = kCodeBytes + 2 * kScaleBytes;
  static constexpr int kRowPieces = kGroups * int(sizeof(T)) / 16;  // 16-byte pieces of a row's scales (or biases)
  static_assert(kRowPieces >= 1 && 2 * R * kRowPieces <= 32, "one scale piece a lane at most");
  static_assert(kBytes % 16 == 0, "stages stay 16-byte aligned");
};

template <typename T, int GS, int R>
constexpr size_t ring_bytes() {
  return size_t(kRingWarps) * kStages * Stage<T, GS, R>::kBytes;
}

// Lane `lane`'s copies of stage (task, seg) into the stage at shared address st.
template <typename T, int GS, int R, bool SWIGLU>
__device__ __forceinline__ void copy_stage(const QgemvParams<T>& p, uint32_t st, int64_t task, int64_t seg, int lane,
                                           int64_t C, int64_t groups) {
  using S = Stage<T, GS, R>;
  const simt::Rows<T, R> rs = simt::rows_of<T, R, SWIGLU>(p, task, C * 4, groups);
#pragma unroll
  for (int b = 0; b < 2; ++b) {
    const int j = lane + 32 * b;
    const int64_t c = seg * kSegChunks + j;
    if (c < C) {
#pragma unroll
      for (int r = 0; r < R; ++r) cp_async16_at(st + uint32_t((r * kSegChunks + j) * 16), rs.w[r] + c * 4, 16);
    }
  }
#pragma unroll
  for (int a = 0; a < 2; ++a) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int piece = lane - (a * R + r) * S::kRowPieces;
      const int64_t g0 = seg * S::kGroups + piece * (16 / int(sizeof(T)));
      if (piece >= 0 && piece < S::kRowPieces && g0 < groups)
        cp_async16_at(st + uint32_t(S::kCodeBytes + a * S::kScaleBytes + r * S::kGroups * int(sizeof(T)) + piece * 16),
                      (a == 0 ? rs.sc[r] : rs.bi[r]) + g0, 16);
    }
  }
}

template <typename T, int GS, int R, bool SWIGLU>
__global__ void __launch_bounds__(kRingWarps * 32, 3) qgemv_simt_ring_kernel(QgemvParams<T> p, int64_t tasks) {
  using namespace simt;
  using S = Stage<T, GS, R>;
  extern __shared__ float4 smem_simt_ring[];
  const int64_t K = p.K, C = K / 32, groups = K / GS, nseg = (C + kSegChunks - 1) / kSegChunks;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  unsigned char* ring = reinterpret_cast<unsigned char*>(smem_simt_ring) + size_t(warp) * kStages * S::kBytes;
  const uint32_t ring_at = smem_addr(ring);
  float4* xs = reinterpret_cast<float4*>(reinterpret_cast<unsigned char*>(smem_simt_ring) + ring_bytes<T, GS, R>());
  float* sx = reinterpret_cast<float*>(xs + K / 4);

  // The next stage to ask for: its task and segment. An exhausted warp still commits (empty) groups, so every wait
  // below counts the same.
  const int64_t stride = int64_t(gridDim.x) * kRingWarps;
  int64_t next_task = int64_t(blockIdx.x) * kRingWarps + warp, next_seg = 0;
  auto ask = [&](int slot) {
    if (next_task < tasks) {
      copy_stage<T, GS, R, SWIGLU>(p, ring_at + uint32_t(slot * S::kBytes), next_task, next_seg, lane, C, groups);
      if (++next_seg == nseg) next_seg = 0, next_task += stride;
    }
    cp_async_commit();
  };
  pdl_trigger();
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) ask(s);
  pdl_wait();
  stage_x(p.x, K, xs, sx, p.norm_w, p.norm_eps);

  int slot = 0;
  for (int64_t task = int64_t(blockIdx.x) * kRingWarps + warp; task < tasks; task += stride) {
    float y[R];
#pragma unroll
    for (int r = 0; r < R; ++r) y[r] = 0.f;
    for (int64_t seg = 0; seg < nseg; ++seg) {
      __syncwarp();  // every lane is done with the stage the next copies overwrite (the one computed last)
      ask(slot == 0 ? kStages - 1 : slot - 1);
      cp_async_wait<kStages - 1>();
      __syncwarp();  // every lane's copies of this stage have landed (the scales are read across lanes)
      const unsigned char* st = ring + slot * S::kBytes;
      const uint4* cw = reinterpret_cast<const uint4*>(st);
      const T* ssc = reinterpret_cast<const T*>(st + S::kCodeBytes);
      const T* sbi = reinterpret_cast<const T*>(st + S::kCodeBytes + S::kScaleBytes);
#pragma unroll
      for (int b = 0; b < 2; ++b) {
        const int j = lane + 32 * b;
        const int64_t c = seg * kSegChunks + j;
        if (c >= C) break;
        const int gl = j * 32 / GS;
        uint4 w[R];
        float scale[R], bias[R];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          w[r] = cw[r * kSegChunks + j];
          scale[r] = to_f32(ssc[r * S::kGroups + gl]);
          bias[r] = to_f32(sbi[r * S::kGroups + gl]);
        }
        chunk_dot<R>(xs, sx, sx, c, w, scale, bias, y);
      }
      slot = slot + 1 == kStages ? 0 : slot + 1;
    }
#pragma unroll
    for (int r = 0; r < R; ++r) y[r] = warp_sum(y[r]);
    if (lane == 0) store_task<T, R, SWIGLU>(p, task, y);
  }
}

template <typename T, int GS, int R, bool SWIGLU>
void launch_ring_kernel(const QgemvParams<T>& p, int64_t tasks) {
  auto k = qgemv_simt_ring_kernel<T, GS, R, SWIGLU>;
  const size_t smem = ring_bytes<T, GS, R>() + simt::x_bytes(p.K);
  static const bool sized = [&] {  // more than 48 KB of shared memory a block needs the opt-in
    const size_t most = ring_bytes<T, GS, R>() + simt::x_bytes(kRingMaxK);
    LMT_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(most)));
    return true;
  }();
  (void)sized;
  const dim3 grid = simt::grid_for(reinterpret_cast<const void*>(k), kRingWarps, smem, tasks);
  launch("quantized_gemv_simt_ring", k, grid, kRingWarps * 32, smem, p, tasks);
  simt_ring_launches.fetch_add(1, std::memory_order_relaxed);
}

template <typename T, int GS>
bool launch_ring_shape(QgemvParams<T> p) {
  if (p.K > kRingMaxK || (p.K / GS) % 8 != 0) return false;
  const int n = p.swiglu ? 2 : p.count;
  for (int i = 0; i < n; ++i) {
    const bool first = i == 0 && !p.swiglu;
    const void* sc = first ? p.scales : p.scaless[i];
    const void* bi = first ? p.biases : p.biasess[i];
    const void* wq = first ? p.wq : p.wqs[i];
    if (!aligned16(sc) || !aligned16(bi) || !aligned16(wq)) return false;
  }
  if (p.swiglu) {
    launch_ring_kernel<T, GS, 2, true>(p, p.N);
    return true;
  }
  const bool two = simt::rows_a_task(p) == 2;  // as variant 9
  const int64_t tasks = simt::number_tasks(p, two ? 2 : 1);
  if (two)
    launch_ring_kernel<T, GS, 2, false>(p, tasks);
  else
    launch_ring_kernel<T, GS, 1, false>(p, tasks);
  return true;
}

}  // namespace

template <typename T>
bool launch_simt_ring(int bits, int group_size, QgemvParams<T> p) {
  return simt::takes(bits, p) &&
         simt::by_group_size(group_size, [&](auto gs) { return launch_ring_shape<T, decltype(gs)::value>(p); });
}

template bool launch_simt_ring<bf16>(int, int, QgemvParams<bf16>);
template bool launch_simt_ring<f16>(int, int, QgemvParams<f16>);

}  // namespace lmtune::qgemv
