// Decoding's quantized products as one stream a block (LMTUNE_CUDA_QGEMV_VARIANT=8, opt-in). The
// kernels before it (qgemv_lean.cu, qgemv_tma.cu) give each warp one stretch of one tile: its copies
// go out at the start, the warp waits for them, computes, and the block ends. The premise here was
// that all the blocks on a multiprocessor are then in the same phase, so that the memory idles while
// they compute (bench/NOTES.md, session 19: a gate-sized product's ~4.2 M warp instructions need
// ~4.6 us of issue on the H200 next to ~8.9 us of reads, and the two added up match its ~20 us).
// Measured on an H100 it is not faster: the small products gain ~6-8%, the large ones lose 1-27%, and
// a stage takes ~1.3 us whatever the shape, not yet explained (RESULTS.md "Session 19").
//   One warp of a block (the producer) brings stages of weights by bulk tensor copies into a
// ring of 8, each stage 16 rows x 512 bytes of codes with their scales and biases, for all the
// block's tiles one after another, while 8 consumer warps compute the stage before: a warp takes
// G / 8 groups of each stage (the arithmetic per group is qgemv_tma.cu's), keeps its sums across
// the stages of a tile, and at a tile's end the 8 partial sums meet in shared memory in warp order
// (one barrier of the consumers; the meeting buffer is double so that the next tile need not
// wait). The order of a row's sum depends only on the group index, never on which rows share the
// tile, so a product alone, in a group, in swiglu's tile of 8 gate and 8 up rows or with the
// residual gives the same values a row.
//   The grid is two blocks a multiprocessor (83-91 KB of shared memory each, and x's copy where it is made),
// or one a tile where there are fewer tiles; block b takes q + (b < r) consecutive tiles, q and r the
// quotient and remainder of tiles / blocks (session 20's ncu: ceil(tiles / blocks) a block left 40 of 132
// multiprocessors with one block, and the busiest with 8 tiles where 6.8 is even).
#include <atomic>

#include "backend/backend.h"
#include "backend/cuda/qgemv_mma.cuh"
#include "backend/cuda/qgemv_tma.cuh"
#include "core/runtime_config.h"

namespace lmtune {
namespace {
std::atomic<int64_t> ring_launches{0};
}  // namespace
int64_t cuda_qgemv_ring_launches() { return ring_launches.load(); }
}  // namespace lmtune

namespace lmtune::qgemv {

namespace {

enum RingMode { kRingSingle, kRingGroup, kRingSwiglu };

constexpr int kConsumers = 8;                        // warps that compute
constexpr int kRingThreads = (kConsumers + 1) * 32;  // and one that brings the weights
constexpr int kRingStages = 8;

template <typename T, int BITS, int GS>
struct RingShape {
  static constexpr int kGroupBytes = GS * BITS / 8;
  static constexpr int kBoxBytes = 128;                       // a code box's row (the swizzle span)
  static constexpr int kBoxes = 4;                            // code boxes a stage: 512 bytes a row
  static constexpr int kBoxSmem = 16 * kBoxBytes;             // 2 KB
  static constexpr int G = kBoxes * kBoxBytes / kGroupBytes;  // groups a stage
  static constexpr int GW = G / kConsumers;                   // a consumer's groups a stage
  static constexpr int kCodeStage = kBoxes * kBoxSmem;        // 8 KB, 1024-aligned
  static constexpr int kScaleRow = G * int(sizeof(T));
  static constexpr int kScaleStage = 2 * 16 * kScaleRow;  // scales, then biases
  static constexpr int kStageBytes = kCodeStage + kScaleStage;
  static constexpr int kQuarter = kGroupBytes / 4;       // bytes of a group a lane reads a row
  static constexpr int kMeet = kConsumers * 4 * 32 * 4;  // one tile's partial sums
  static constexpr int kSmem = 1024 + kRingStages * kStageBytes + 2 * kMeet;
  // x (M, K) kept in shared memory after the meeting buffers when it is at most this big (XS):
  // every group's x then comes from there, not through L1 from a memory system busy with the
  // weights' stream.
  static constexpr int kMaxX = 28 * 1024;
  static_assert(GW >= 1 && G % kConsumers == 0 && kScaleRow % 16 == 0, "whole groups a consumer, 16-byte boxes");
  static_assert(kBoxBytes % kGroupBytes == 0 && kQuarter >= 4, "groups tile the code box");
};

// mbar_wait with a bound: a stage that never lands (a copy refused, a count of bytes wrong) stops the
// kernel with an error after ~2^24 tries (seconds), where an unbounded wait would hang the process.
__device__ __forceinline__ void ring_wait(uint32_t bar, uint32_t parity) {
  for (uint32_t n = 0;; ++n) {
    uint32_t done;
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
    if (done) return;
    if (n == (1u << 24)) __trap();
  }
}

__device__ __forceinline__ int ring_box_row(int g) { return g < 4 ? 2 * g : 2 * g - 7; }

// Lane (g, t)'s four sums of tile `tile` into y: rows ra, rb of the tile, x rows 2t, 2t + 1 (swiglu: gate's and
// up's row ra), those past N or M left out.
template <typename T, int MODE>
__device__ __forceinline__ void ring_store(const QgemvParams<T>& p, int64_t tile, const float (&sum)[4], int ra, int rb,
                                           int t) {
  if constexpr (MODE == kRingSwiglu) {
    // sum[0], sum[1]: gate row n for x rows 2t, 2t + 1; sum[2], sum[3]: up's, the same row.
    const int64_t N = p.N, n = tile * 8 + ra;
    if (n >= N) return;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = 2 * t + h;
      if (m >= p.M) break;
      const float gv = to_f32(from_f32<T>(sum[h])), uv = to_f32(from_f32<T>(sum[2 + h]));
      p.y[m * N + n] = from_f32<T>(gv * (1.f / (1.f + expf(-gv))) * uv);  // elementwise.cu's SwigluF
    }
  } else {
    const QMatrix<T> mt =
        MODE == kRingGroup ? select_matrix(p, tile) : QMatrix<T>{p.wq, p.scales, p.biases, p.y, p.N, tile};
    const int64_t N = mt.N, na = mt.tile * 16 + ra, nb = mt.tile * 16 + rb;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t n = c & 2 ? nb : na;
      const int m = 2 * t + (c & 1);
      if (n >= N || m >= p.M) continue;
      float out = sum[c];
      if (MODE == kRingSingle && p.residual) out = to_f32(p.residual[m * N + n]) + to_f32(from_f32<T>(sum[c]));
      mt.y[m * N + n] = from_f32<T>(out);
    }
  }
}

template <typename T, int BITS, int GS, int MODE, bool XS>
__global__ void __launch_bounds__(kRingThreads, 2)
    qgemv_ring_kernel(const __grid_constant__ TmaMaps maps, QgemvParams<T> p) {
  using Sh = MmaShape<BITS, GS>;
  using Rs = RingShape<T, BITS, GS>;
  constexpr int G = Rs::G, GW = Rs::GW, QW = Sh::QW, H = Sh::H, ST = kRingStages;
  constexpr bool kBf16 = std::is_same_v<T, bf16>, kSplit8 = kBf16 && BITS == 8;
  constexpr float kOffset = !kBf16 ? 0.f : BITS == 8 ? 2176.f : 128.f;
  extern __shared__ uint8_t smem_raw[];
  __shared__ __align__(8) uint64_t full[ST], empty[ST];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t tiles = p.tile_start[p.count], K = p.K, groups = K / GS;
  // Block b takes q + (b < r) consecutive tiles (q, r: tiles / blocks and its remainder): the r blocks with an
  // extra tile are the first to start, one a multiprocessor while r is at most their count.
  const int64_t q = tiles / gridDim.x, r = tiles % gridDim.x, b = blockIdx.x;
  const int64_t first = b * q + min(b, r), last = first + q + (b < r ? 1 : 0);
  const int per_tile = int((groups + G - 1) / G), total = int(last - first) * per_tile;
  const uint32_t base = (uint32_t(__cvta_generic_to_shared(smem_raw)) + 1023u) & ~1023u;
  uint8_t* const aligned = smem_raw + (base - uint32_t(__cvta_generic_to_shared(smem_raw)));
  const uint32_t full0 = uint32_t(__cvta_generic_to_shared(&full[0]));
  const uint32_t empty0 = uint32_t(__cvta_generic_to_shared(&empty[0]));
  constexpr int kScales = ST * Rs::kCodeStage;  // the scale stages follow the code stages
  if (threadIdx.x == 0) {
    for (int s = 0; s < ST; ++s) {
      mbar_init(full0 + 8 * s, 1);
      mbar_init(empty0 + 8 * s, kConsumers);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  }
  __syncthreads();
  pdl_trigger();

  if (warp == kConsumers) {  // the producer: weights only, so it need not wait for the kernel before
    if (lane != 0) return;
    for (int i = 0; i < total; ++i) {
      const int s = i % ST, j = i % per_tile;
      if (i >= ST) ring_wait(empty0 + 8 * s, uint32_t(i / ST - 1) & 1u);
      const int64_t tile = first + i / per_tile;
      const uint32_t bar = full0 + 8 * s, cst = base + uint32_t(s * Rs::kCodeStage),
                     sst = base + uint32_t(kScales + s * Rs::kScaleStage);
      // Code boxes wholly past the row's end (a last stage cut short by K) are not asked for: the
      // consumers read no group past K. Boxes in part past it (rows past N too) come zero-filled.
      const int gx = j * G, row_bytes = int(K * BITS / 8);
      const int boxes = min(Rs::kBoxes, (row_bytes - gx * Rs::kGroupBytes + Rs::kBoxBytes - 1) / Rs::kBoxBytes);
      mbar_expect_tx(bar, uint32_t(Rs::kScaleStage + boxes * Rs::kBoxSmem));
      if constexpr (MODE == kRingSwiglu) {
        const int y = int(tile * 8);
#pragma unroll
        for (int m = 0; m < 2; ++m) {
#pragma unroll
          for (int b = 0; b < Rs::kBoxes; ++b)
            if (b < boxes)
              tma_2d(cst + b * Rs::kBoxSmem + m * 8 * Rs::kBoxBytes, &maps.codes[m],
                     gx * Rs::kGroupBytes + b * Rs::kBoxBytes, y, bar);
          tma_2d(sst + m * 8 * Rs::kScaleRow, &maps.scales[m], gx, y, bar);
          tma_2d(sst + (16 + m * 8) * Rs::kScaleRow, &maps.biases[m], gx, y, bar);
        }
      } else {
        const int mi = MODE != kRingGroup ? 0 : tile < p.tile_start[1] ? 0 : tile < p.tile_start[2] ? 1 : 2;
        const int y = int((tile - p.tile_start[mi]) * 16);
#pragma unroll
        for (int b = 0; b < Rs::kBoxes; ++b)
          if (b < boxes)
            tma_2d(cst + b * Rs::kBoxSmem, &maps.codes[mi], gx * Rs::kGroupBytes + b * Rs::kBoxBytes, y, bar);
        tma_2d(sst, &maps.scales[mi], gx, y, bar);
        tma_2d(sst + 16 * Rs::kScaleRow, &maps.biases[mi], gx, y, bar);
      }
    }
    return;
  }

  pdl_wait();  // x and the residual come from the kernels before
  const T* xsrc = p.x;
  if constexpr (XS) {  // the consumers copy x in once, then meet
    uint8_t* xs = aligned + ST * Rs::kStageBytes + 2 * Rs::kMeet;
    const int n16 = int(int64_t(p.M) * K * int64_t(sizeof(T)) / 16);
    const uint4* src = reinterpret_cast<const uint4*>(p.x);
    uint4* dst = reinterpret_cast<uint4*>(xs);
    int k = int(threadIdx.x);
    for (; k + 3 * kConsumers * 32 < n16; k += 4 * kConsumers * 32) {
      const uint4 a = __ldg(src + k), b = __ldg(src + k + kConsumers * 32), c = __ldg(src + k + 2 * kConsumers * 32),
                  d = __ldg(src + k + 3 * kConsumers * 32);
      dst[k] = a, dst[k + kConsumers * 32] = b, dst[k + 2 * kConsumers * 32] = c, dst[k + 3 * kConsumers * 32] = d;
    }
    for (; k < n16; k += kConsumers * 32) dst[k] = __ldg(src + k);
    asm volatile("bar.sync 1, %0;" ::"n"(kConsumers * 32) : "memory");
    xsrc = reinterpret_cast<const T*>(xs);
  }
  const int g = lane / 4, t = lane % 4;
  const bool has_x = g < p.M;
  const T* const xrow = xsrc + int64_t(has_x ? g : 0) * K + t * Sh::QV;
  const int ra = ring_box_row(g), rb = 8 + ra;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  int meet_buf = 0;
  for (int i = 0; i < total; ++i) {
    const int s = i % ST, j = i % per_tile;
    ring_wait(full0 + 8 * s, uint32_t(i / ST) & 1u);
    __syncwarp();  // the mmas want the whole warp, whatever the stores before did
    const uint8_t* cst = aligned + s * Rs::kCodeStage;
    const T* ss = reinterpret_cast<const T*>(aligned + kScales + s * Rs::kScaleStage);
    const int u0 = warp * GW;                                              // this warp's first group of the stage
    const int64_t g0 = int64_t(j) * G + u0;                                // ... of the row
    const int here = int(max(int64_t(0), min(int64_t(GW), groups - g0)));  // past K: zeros, not read
    const T* xc = xrow + g0 * GS;
    auto group = [&](int v) {  // the warp's group v of the stage into acc
      const int u = u0 + v;
      const int off = (u * Rs::kGroupBytes) % Rs::kBoxBytes + t * Rs::kQuarter;
      const uint8_t* bx = cst + (u * Rs::kGroupBytes / Rs::kBoxBytes) * Rs::kBoxSmem;
      const int pa = ((off >> 4) ^ (ra & 7)) * 16 + (off & 15);
      const int pb = ((off >> 4) ^ (rb & 7)) * 16 + (off & 15);
      uint32_t wa[QW], wb[QW], xw[Sh::XW];
      if constexpr (QW == 2) {
        const uint2 va = *reinterpret_cast<const uint2*>(bx + ra * Rs::kBoxBytes + pa);
        const uint2 vb = *reinterpret_cast<const uint2*>(bx + rb * Rs::kBoxBytes + pb);
        wa[0] = va.x, wa[1] = va.y, wb[0] = vb.x, wb[1] = vb.y;
      } else {
        static_assert(QW == 1, "a quarter of one or two words");
        wa[0] = *reinterpret_cast<const uint32_t*>(bx + ra * Rs::kBoxBytes + pa);
        wb[0] = *reinterpret_cast<const uint32_t*>(bx + rb * Rs::kBoxBytes + pb);
      }
      if (has_x) {
        if constexpr (XS) {
          const uint4* q = reinterpret_cast<const uint4*>(xc + v * GS);
#pragma unroll
          for (int k = 0; k < Sh::XW / 4; ++k) {
            const uint4 w = q[k];
            xw[4 * k] = w.x, xw[4 * k + 1] = w.y, xw[4 * k + 2] = w.z, xw[4 * k + 3] = w.w;
          }
        } else {
          load_x(xc + v * GS, xw);
        }
      } else {
#pragma unroll
        for (int k = 0; k < Sh::XW; ++k) xw[k] = 0u;
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
      const float sc0 = to_f32(ss[ra * G + u]), sc1 = to_f32(ss[rb * G + u]);
      const float bi0 = fmaf(-kOffset, sc0, to_f32(ss[(16 + ra) * G + u]));
      const float bi1 = fmaf(-kOffset, sc1, to_f32(ss[(16 + rb) * G + u]));
      acc[0] = fmaf(sc0, cq[0], fmaf(bi0, cx[0], acc[0]));
      acc[1] = fmaf(sc0, cq[1], fmaf(bi0, cx[1], acc[1]));
      acc[2] = fmaf(sc1, cq[2], fmaf(bi1, cx[0], acc[2]));
      acc[3] = fmaf(sc1, cq[3], fmaf(bi1, cx[1], acc[3]));
    };
    if (here == GW) {  // no checks between the groups, so that their chains may overlap
#pragma unroll
      for (int v = 0; v < GW; ++v) group(v);
    } else {
#pragma unroll
      for (int v = 0; v < GW; ++v) {
        if (v >= here) break;
        group(v);
      }
    }
    // Every lane is done with stage s, so its slot may be refilled: the arrival orders the reads before the
    // producer's next copy (no proxy fence, as in CUTLASS's TMA pipelines).
    __syncwarp();
    if (lane == 0) mbar_arrive(empty0 + 8 * s);
    if (j != per_tile - 1) continue;

    // The tile's end: the consumers' partial sums meet in warp order; the warp tile % 8 stores.
    const int64_t tile = first + i / per_tile;
    float* meet = reinterpret_cast<float*>(aligned + ST * Rs::kStageBytes + meet_buf * Rs::kMeet);
#pragma unroll
    for (int c = 0; c < 4; ++c) meet[(warp * 4 + c) * 32 + lane] = acc[c];
    asm volatile("bar.sync 1, %0;" ::"n"(kConsumers * 32) : "memory");
    meet_buf ^= 1;
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[c] = 0.f;
    if (warp == int(tile % kConsumers)) {
      float sum[4];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        sum[c] = meet[c * 32 + lane];
        for (int w = 1; w < kConsumers; ++w) sum[c] += meet[(w * 4 + c) * 32 + lane];
      }
      ring_store<T, MODE>(p, tile, sum, ra, rb, t);
    }
  }
}

template <typename T, int BITS, int GS>
bool launch_ring_shape(const QgemvParams<T>& p) {
  using Rs = RingShape<T, BITS, GS>;
  TmaMaps maps;
  if (!make_maps(p, BITS, GS, Rs::G, &maps)) return false;
  const int64_t tiles = p.tile_start[p.count];
  const int64_t slots = int64_t(cuda_impl().sm_count()) * 2;
  const dim3 grid(unsigned(std::min(tiles, slots)));
  auto go = [&](auto mode) {
    constexpr int MODE = decltype(mode)::value;
    const int64_t x_bytes = int64_t(p.M) * p.K * int64_t(sizeof(T));
    const bool xs = x_bytes <= Rs::kMaxX && runtime_config().cuda_qgemv_ring_x_smem;
    auto k = xs ? qgemv_ring_kernel<T, BITS, GS, MODE, true> : qgemv_ring_kernel<T, BITS, GS, MODE, false>;
    static const bool sized = [&] {
      for (auto f : {qgemv_ring_kernel<T, BITS, GS, MODE, true>, qgemv_ring_kernel<T, BITS, GS, MODE, false>})
        LMT_CUDA_CHECK(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, Rs::kSmem + Rs::kMaxX));
      return true;
    }();
    (void)sized;
    const size_t smem = size_t(Rs::kSmem + (xs ? x_bytes : 0));
    launch("quantized_gemv", k, grid, kRingThreads, smem, maps, p);
  };
  if (p.swiglu)
    go(std::integral_constant<int, kRingSwiglu>{});
  else if (p.count > 1)
    go(std::integral_constant<int, kRingGroup>{});
  else
    go(std::integral_constant<int, kRingSingle>{});
  ring_launches.fetch_add(1, std::memory_order_relaxed);
  return true;
}

}  // namespace

template <typename T>
bool launch_ring(int bits, int group_size, QgemvParams<T> p) {
  if (p.residual && (p.count > 1 || p.swiglu)) return false;
  switch (bits * 1000 + group_size) {
    case 4032: return launch_ring_shape<T, 4, 32>(p);
    case 4064: return launch_ring_shape<T, 4, 64>(p);
    case 8032: return launch_ring_shape<T, 8, 32>(p);
    default: return false;
  }
}

template bool launch_ring<bf16>(int, int, QgemvParams<bf16>);
template bool launch_ring<f16>(int, int, QgemvParams<f16>);

}  // namespace lmtune::qgemv
