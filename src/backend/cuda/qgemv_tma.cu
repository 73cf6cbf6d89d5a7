// Decoding's fused quantized products with the weights staged by the tensor memory accelerator
// (LMTUNE_CUDA_QGEMV_VARIANT=7). qgemv_lean.cu's warps spend about a third of their instructions
// issuing cp.async copies (per-lane addresses, predicates, rematerialised at the 64-register cap;
// bench/NOTES.md, session 6); here one lane of a warp asks for a whole chunk (16 rows x 256 bytes
// of codes, the scales and the biases) with four bulk tensor copies that signal an mbarrier, and
// the warp's lanes only compute. Same tiles, same split of K (qgemv_lean.cu's pieces), same
// arithmetic per group in the same order: the results equal the lean kernel's bit for bit.
//   Layout: a code box is 16 rows x 128 bytes in shared memory with the 128-byte swizzle (16-byte
// piece c of row r lands at piece c ^ (r % 8)). Lane (g, t) reads quarter t of each group of two
// rows; taking A's row g from box row perm(g) = {0, 2, 4, 6, 1, 3, 5, 7}[g] (and A's row g + 8
// from box row 8 + perm(g)) makes every half-warp's reads fall in distinct banks.
#include <atomic>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "backend/backend.h"
#include "backend/cuda/qgemv_mma.cuh"
#include "backend/cuda/qgemv_tma.cuh"
#include "core/runtime_config.h"

namespace lmtune {
namespace {
std::atomic<int64_t> tma_launches{0};
}  // namespace
int64_t cuda_qgemv_tma_launches() { return tma_launches.load(); }
}  // namespace lmtune

namespace lmtune::qgemv {

namespace {

enum Mode { kSingle, kGroup, kSwiglu };

template <typename T, int BITS, int GS>
struct TmaShape {
  static constexpr int kGroupBytes = GS * BITS / 8;
  static constexpr int kBoxBytes = 128;                       // a code box's row (the swizzle span)
  static constexpr int kBoxes = 2;                            // code boxes a chunk
  static constexpr int kBoxSmem = 16 * kBoxBytes;             // 2 KB
  static constexpr int C = kBoxes * kBoxBytes / kGroupBytes;  // groups a chunk
  static constexpr int kCodeStage = kBoxes * kBoxSmem;        // 4 KB, 1024-aligned
  // A bulk copy's innermost start must fall on 16 bytes, and a piece of K may start on any even
  // group: the scale boxes start at the group rounded down to 8 and hold 8 more than a chunk.
  static constexpr int kScaleBox = C + 8;  // scales a row a box
  static constexpr int kScaleRow = kScaleBox * int(sizeof(T));
  static constexpr int kScaleStage = 2 * 16 * kScaleRow;        // scales, then biases
  static constexpr int kStageBytes = kCodeStage + kScaleStage;  // what a stage's copies bring
  static constexpr int kQuarter = kGroupBytes / 4;              // bytes of a group a lane reads a row
  static_assert(kScaleRow % 16 == 0 && C % 8 == 0, "scale boxes of whole 16-byte pieces");
  static_assert(kBoxBytes % kGroupBytes == 0 && kQuarter >= 4, "groups tile the code box");
};

template <typename T, int BITS, int GS, int MODE, int STAGES>
__global__ void __launch_bounds__(kQWarps * 32, STAGES == 1 ? 3 : 2)
    qgemv_tma_kernel(const __grid_constant__ TmaMaps maps, QgemvParams<T> p) {
  using Sh = MmaShape<BITS, GS>;
  using Ts = TmaShape<T, BITS, GS>;
  constexpr int C = Ts::C, QW = Sh::QW, H = Sh::H;
  constexpr bool kBf16 = std::is_same_v<T, bf16>, kSplit8 = kBf16 && BITS == 8;
  constexpr float kOffset = !kBf16 ? 0.f : BITS == 8 ? 2176.f : 128.f;
  extern __shared__ uint8_t smem_raw[];
  __shared__ __align__(8) uint64_t bars[kQWarps][STAGES];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t global_tile = int64_t(blockIdx.x) * (kQWarps / p.S) + warp / p.S;
  const bool valid = global_tile < p.tile_start[p.count];
  const int64_t vt = valid ? global_tile : 0;
  const int mi = MODE != kGroup ? 0 : vt < p.tile_start[1] ? 0 : vt < p.tile_start[2] ? 1 : 2;
  const QMatrix<T> mt =
      MODE == kGroup ? select_matrix(p, vt) : QMatrix<T>{p.wq, p.scales, p.biases, p.y, p.N, global_tile};
  const int S = p.S, piece = warp % S;
  const int64_t K = p.K, groups = K / GS;
  const int64_t n0 = mt.tile * (MODE == kSwiglu ? 8 : 16);
  // qgemv_lean.cu's pieces (its chunks hold 64 bytes of a row), so that the sums are its sums.
  constexpr int kLeanC = 64 / Ts::kGroupBytes;
  const int64_t per = ((groups + S - 1) / S + kLeanC - 1) / kLeanC * kLeanC;
  const int64_t g_begin = min(groups, piece * per);
  const int ng = int(min(groups, g_begin + per) - g_begin), chunks = (ng + C - 1) / C;

  // Shared memory: every warp's code stages (1024-aligned for the swizzle), then its scale stages.
  const uint32_t base = (uint32_t(__cvta_generic_to_shared(smem_raw)) + 1023u) & ~1023u;
  const uint32_t codes = base + uint32_t(warp * STAGES * Ts::kCodeStage);
  const uint32_t scales_off = uint32_t(kQWarps * STAGES * Ts::kCodeStage + warp * STAGES * Ts::kScaleStage);
  const uint32_t scale_sm = base + scales_off;
  uint8_t* const aligned = smem_raw + (base - uint32_t(__cvta_generic_to_shared(smem_raw)));
  const uint8_t* scale_ptr = aligned + scales_off;
  const uint32_t bar0 = uint32_t(__cvta_generic_to_shared(&bars[warp][0]));
  if (lane == 0) {
    for (int s = 0; s < STAGES; ++s) mbar_init(bar0 + 8 * s, 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  }
  __syncwarp();
  auto issue = [&](int i) {
    if (lane != 0 || !valid || i >= chunks) return;
    const int s = i % STAGES;
    const uint32_t bar = bar0 + 8 * s, cst = codes + s * Ts::kCodeStage, sst = scale_sm + s * Ts::kScaleStage;
    mbar_expect_tx(bar, Ts::kStageBytes);
    const int gx = int(g_begin) + i * C, sx = int(g_begin & ~int64_t(7)) + i * C;
    if constexpr (MODE == kSwiglu) {
      const int y = int(n0);
#pragma unroll
      for (int m = 0; m < 2; ++m) {
#pragma unroll
        for (int b = 0; b < Ts::kBoxes; ++b)
          tma_2d(cst + b * Ts::kBoxSmem + m * 8 * Ts::kBoxBytes, &maps.codes[m], gx * Ts::kGroupBytes + b * 128, y,
                 bar);
        tma_2d(sst + m * 8 * Ts::kScaleRow, &maps.scales[m], sx, y, bar);
        tma_2d(sst + 16 * Ts::kScaleRow + m * 8 * Ts::kScaleRow, &maps.biases[m], sx, y, bar);
      }
    } else {
      const int y = int(n0);
#pragma unroll
      for (int b = 0; b < Ts::kBoxes; ++b)
        tma_2d(cst + b * Ts::kBoxSmem, &maps.codes[mi], gx * Ts::kGroupBytes + b * 128, y, bar);
      tma_2d(sst, &maps.scales[mi], sx, y, bar);
      tma_2d(sst + 16 * Ts::kScaleRow, &maps.biases[mi], sx, y, bar);
    }
  };
  pdl_trigger();
#pragma unroll
  for (int i = 0; i < STAGES; ++i) issue(i);  // weights only: before the wait
  pdl_wait();

  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  const bool has_x = g < p.M;
  const T* xq = p.x + int64_t(has_x ? g : 0) * K + t * Sh::QV + g_begin * GS;
  const int ra = box_row(g), rb = 8 + ra;
  const int soff = int(g_begin & 7);           // the piece's first group within the scale boxes
  for (int i = 0; valid && i < chunks; ++i) {  // a warp past the last tile armed no barrier
    const int s = i % STAGES;
    mbar_wait(bar0 + 8 * s, uint32_t(i / STAGES) & 1u);
    {
      const int count = min(C, ng - i * C);
      const uint8_t* cst = aligned + uint32_t(warp * STAGES * Ts::kCodeStage + s * Ts::kCodeStage);
      const T* ss = reinterpret_cast<const T*>(scale_ptr + s * Ts::kScaleStage);
      const T* xc = xq + int64_t(i) * C * GS;
      // Group u of the chunk into acc.
      auto group = [&](int u) {
        // Byte of this lane's quarter in the chunk's row, then its place in the swizzled box.
        const int off = (u * Ts::kGroupBytes) % Ts::kBoxBytes + t * Ts::kQuarter;
        const int box = u * Ts::kGroupBytes / Ts::kBoxBytes;
        const uint8_t* bx = cst + box * Ts::kBoxSmem;
        const int pa = ((off >> 4) ^ (ra & 7)) * 16 + (off & 15);
        const int pb = ((off >> 4) ^ (rb & 7)) * 16 + (off & 15);
        uint32_t wa[QW], wb[QW], xw[Sh::XW];
        if constexpr (QW == 2) {
          const uint2 va = *reinterpret_cast<const uint2*>(bx + ra * Ts::kBoxBytes + pa);
          const uint2 vb = *reinterpret_cast<const uint2*>(bx + rb * Ts::kBoxBytes + pb);
          wa[0] = va.x, wa[1] = va.y, wb[0] = vb.x, wb[1] = vb.y;
        } else {
          static_assert(QW == 1, "a quarter of one or two words");
          wa[0] = *reinterpret_cast<const uint32_t*>(bx + ra * Ts::kBoxBytes + pa);
          wb[0] = *reinterpret_cast<const uint32_t*>(bx + rb * Ts::kBoxBytes + pb);
        }
        if (has_x) {
          load_x(xc + u * GS, xw);
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
        constexpr int SB = Ts::kScaleBox;
        const float sc0 = to_f32(ss[ra * SB + soff + u]), sc1 = to_f32(ss[rb * SB + soff + u]);
        const float bi0 = fmaf(-kOffset, sc0, to_f32(ss[(16 + ra) * SB + soff + u]));
        const float bi1 = fmaf(-kOffset, sc1, to_f32(ss[(16 + rb) * SB + soff + u]));
        acc[0] = fmaf(sc0, cq[0], fmaf(bi0, cx[0], acc[0]));
        acc[1] = fmaf(sc0, cq[1], fmaf(bi0, cx[1], acc[1]));
        acc[2] = fmaf(sc1, cq[2], fmaf(bi1, cx[0], acc[2]));
        acc[3] = fmaf(sc1, cq[3], fmaf(bi1, cx[1], acc[3]));
      };
      // A full chunk without per-group checks, so that the compiler may start a group's loads while
      // the group before is still in its mmas; the last chunk of a piece with them.
      if (count == C) {
#pragma unroll
        for (int u = 0; u < C; ++u) group(u);
      } else {
#pragma unroll
        for (int u = 0; u < C; ++u) {
          if (u >= count) break;
          group(u);
        }
      }
    }
    __syncwarp();  // every lane is done with stage s
    if (lane == 0) asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    issue(i + STAGES);
  }
  // The pieces meet as in meet_pieces, each warp's partial sums in its own first code stage (its
  // copies have all landed and been read by now): no static buffer beside the stages.
  if (S > 1) {
    float* mine = reinterpret_cast<float*>(aligned + warp * STAGES * Ts::kCodeStage);
#pragma unroll
    for (int c = 0; c < 4; ++c) mine[c * 32 + lane] = acc[c];
    __syncthreads();
    if (piece == 0)
      for (int i = 1; i < S; ++i) {
        const float* other = reinterpret_cast<const float*>(aligned + (warp + i) * STAGES * Ts::kCodeStage);
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[c] += other[c * 32 + lane];
      }
  }
  if (piece != 0 || !valid) return;
  const int m0 = 2 * t, m1 = 2 * t + 1;
  const int64_t N = mt.N;
  if constexpr (MODE == kSwiglu) {
    // acc[0], acc[1]: gate row n0 + ra for x rows 2t, 2t + 1; acc[2], acc[3]: up's, the same row.
    const int64_t n = n0 + ra;
    if (n >= N) return;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = 2 * t + h;
      if (m >= p.M) break;
      const float gv = to_f32(from_f32<T>(acc[h])), uv = to_f32(from_f32<T>(acc[2 + h]));
      p.y[m * N + n] = from_f32<T>(gv * (1.f / (1.f + expf(-gv))) * uv);  // elementwise.cu's SwigluF
    }
    return;
  }
  const int64_t na = n0 + ra, nb = n0 + rb;
  float out[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    out[c] = acc[c];
    if (MODE == kSingle && p.residual) {
      const int64_t n = min(c & 2 ? nb : na, N - 1);
      const int m = min(2 * t + (c & 1), p.M - 1);
      out[c] = to_f32(p.residual[m * N + n]) + to_f32(from_f32<T>(acc[c]));
    }
  }
  if (m0 < p.M) {
    if (na < N) mt.y[m0 * N + na] = from_f32<T>(out[0]);
    if (nb < N) mt.y[m0 * N + nb] = from_f32<T>(out[2]);
  }
  if (m1 < p.M) {
    if (na < N) mt.y[m1 * N + na] = from_f32<T>(out[1]);
    if (nb < N) mt.y[m1 * N + nb] = from_f32<T>(out[3]);
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: descriptors made once per (address, shape, box) and kept.

template <typename T, int BITS, int GS, int MODE, int STAGES>
void launch_tma_kernel(const TmaMaps& maps, const QgemvParams<T>& p, dim3 grid) {
  using Ts = TmaShape<T, BITS, GS>;
  constexpr int smem = 1024 + kQWarps * STAGES * (Ts::kCodeStage + Ts::kScaleStage);
  auto k = qgemv_tma_kernel<T, BITS, GS, MODE, STAGES>;
  static const bool sized = [&] {
    LMT_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    return true;
  }();
  (void)sized;
  launch("quantized_gemv", k, grid, kQWarps * 32, size_t(smem), maps, p);
  tma_launches.fetch_add(1, std::memory_order_relaxed);
}

template <typename T, int BITS, int GS>
bool launch_tma_shape(QgemvParams<T> p) {
  using Ts = TmaShape<T, BITS, GS>;
  const int64_t groups = p.K / GS;
  TmaMaps maps;
  if (!make_maps(p, BITS, GS, Ts::kScaleBox, &maps)) return false;
  // qgemv_lean.cu's split of K (the same S, so the same sums).
  constexpr int kLeanC = 64 / Ts::kGroupBytes;
  const int64_t tiles = p.tile_start[p.count];
  const int64_t want = int64_t(cuda_impl().sm_count()) * 8 * 4;
  p.S = 1;
  const int64_t split_tiles = p.swiglu ? (p.N + 15) / 16 : tiles;
  while (p.S < kQWarps && split_tiles * p.S < want && groups >= int64_t(2 * p.S) * kLeanC) p.S *= 2;
  const int64_t cap = runtime_config().cuda_qgemv_tma_split;
  while (cap > 0 && p.S > cap) p.S /= 2;
  const int64_t tiles_per_block = kQWarps / p.S;
  const dim3 grid(unsigned((tiles + tiles_per_block - 1) / tiles_per_block));
  const int64_t per = ((groups + p.S - 1) / p.S + kLeanC - 1) / kLeanC * kLeanC;
  const bool one_chunk = per <= Ts::C;
  auto go = [&](auto mode) {
    constexpr int MODE = decltype(mode)::value;
    if (one_chunk)
      launch_tma_kernel<T, BITS, GS, MODE, 1>(maps, p, grid);
    else
      launch_tma_kernel<T, BITS, GS, MODE, 2>(maps, p, grid);
  };
  if (p.swiglu)
    go(std::integral_constant<int, kSwiglu>{});
  else if (p.count > 1)
    go(std::integral_constant<int, kGroup>{});
  else
    go(std::integral_constant<int, kSingle>{});
  return true;
}

// Descriptors made once per (address, shape, box) and kept.
PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult status{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &status) !=
            cudaSuccess ||
        status != cudaDriverEntryPointSuccess)
      f = nullptr;
    (void)cudaGetLastError();
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

struct MapKey {
  const void* ptr;
  uint64_t inner, rows, box_inner, box_rows;
  int kind;
  bool operator==(const MapKey& o) const { return std::memcmp(this, &o, sizeof(MapKey)) == 0; }
};
struct MapKeyHash {
  size_t operator()(const MapKey& k) const {
    return std::hash<const void*>()(k.ptr) ^ (k.inner * 0x9E3779B97F4A7C15ull) ^ (k.rows << 7) ^ (k.box_rows << 3) ^
           uint64_t(k.kind);
  }
};

}  // namespace

bool make_map(CUtensorMap* out, const void* ptr, uint64_t inner, uint64_t rows, uint32_t box_inner, uint32_t box_rows,
              int kind) {
  static std::mutex mu;
  static std::unordered_map<MapKey, CUtensorMap, MapKeyHash> cache;
  MapKey key{};
  key.ptr = ptr, key.inner = inner, key.rows = rows, key.box_inner = box_inner, key.box_rows = box_rows;
  key.kind = kind;
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = cache.find(key); it != cache.end()) {
    *out = it->second;
    return true;
  }
  auto fn = encode_fn();
  if (!fn) return false;
  const uint64_t elem = kind == 0 ? 1 : 2;
  cuuint64_t dims[2] = {inner, rows};
  cuuint64_t strides[1] = {inner * elem};
  cuuint32_t box[2] = {box_inner, box_rows};
  cuuint32_t estr[2] = {1, 1};
  CUtensorMap map;
  const CUresult r = fn(&map, kind == 0 ? CU_TENSOR_MAP_DATA_TYPE_UINT8 : CU_TENSOR_MAP_DATA_TYPE_UINT16, 2,
                        const_cast<void*>(ptr), dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
                        kind == 0 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE,
                        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) return false;
  cache.emplace(key, map);
  *out = map;
  return true;
}

template <typename T>
bool launch_tma(int bits, int group_size, QgemvParams<T> p) {
  if (p.residual && (p.count > 1 || p.swiglu)) return false;
  switch (bits * 1000 + group_size) {
    case 4032: return launch_tma_shape<T, 4, 32>(p);
    case 4064: return launch_tma_shape<T, 4, 64>(p);
    case 8032: return launch_tma_shape<T, 8, 32>(p);
    default: return false;
  }
}

template bool launch_tma<bf16>(int, int, QgemvParams<bf16>);
template bool launch_tma<f16>(int, int, QgemvParams<f16>);

}  // namespace lmtune::qgemv
