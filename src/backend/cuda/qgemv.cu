// Fused quantized products for decoding: y (M, N) = x (M, K) @ dequant(W)^T, M = 1..8, W in MLX's
// affine layout (wq u32 (N, K * bits / 32), LSB-first codes; scales, biases (N, K / group_size)),
// read once and never written out dense. As MLX's qmv, each group adds scale * sum(q x) +
// bias * sum(x) in f32: no dequantized weight is rounded to dt (dequantize + gemm rounds every w).
#include <atomic>
#include <type_traits>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/qgemv_mma.cuh"
#include "core/runtime_config.h"

namespace lmtune {

namespace {

using namespace qgemv;

template <int BITS, int GS, bool GROUP, int VAR>
constexpr int min_blocks() {
  using Sh = MmaShape<BITS, GS>;
  return VAR != 0 ? Sh::kMinBlocksVariant : GROUP ? Sh::kMinBlocksGroup : Sh::kMinBlocks;
}

template <typename T, int BITS, int GS, bool GROUP, int VAR>
__global__ void __launch_bounds__(kQWarps * 32, min_blocks<BITS, GS, GROUP, VAR>()) qgemv_mma_kernel(QgemvParams<T> p) {
  const int64_t global_tile = int64_t(blockIdx.x) * (kQWarps / p.S) + (threadIdx.x / 32) / p.S;
  const bool valid = global_tile < p.tile_start[p.count];
  const QMatrix<T> mt =
      GROUP ? select_matrix(p, valid ? global_tile : 0) : QMatrix<T>{p.wq, p.scales, p.biases, p.y, p.N, global_tile};
  const int64_t tile = mt.tile;
  using Sh = MmaShape<BITS, GS>;
  constexpr int H = Sh::H, QW = Sh::QW, U = Sh::template batch<VAR>(), kGroupWords = GS * BITS / 32;
  constexpr bool PIPE = VAR == 1;
  constexpr bool kBf16 = std::is_same_v<T, bf16>, kSplit8 = kBf16 && BITS == 8;
  constexpr float kOffset = !kBf16 ? 0.f : BITS == 8 ? 2176.f : 128.f;  // what A's codes carry above q
  __shared__ float part[kQWarps][4][32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int S = p.S, piece = warp % S;
  const int64_t N = mt.N, K = p.K, groups = K / GS, n0 = tile * 16;
  const int64_t per = (groups + S - 1) / S;
  const int64_t g_begin = min(groups, piece * per), g_end = min(groups, g_begin + per);
  // acc: rows (n0 + g, m 2t), (n0 + g, m 2t + 1), (n0 + g + 8, m 2t), (n0 + g + 8, m 2t + 1).
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  pdl_trigger();
  if (!valid) {
    pdl_wait();
  } else {
    // Rows past N (the last tile) read row N - 1 and are never written.
    const int64_t r0 = min(n0 + g, N - 1), r1 = min(n0 + g + 8, N - 1), row_words = K * BITS / 32;
    const uint32_t* w0 = mt.wq + r0 * row_words + t * QW;
    const uint32_t* w1 = mt.wq + r1 * row_words + t * QW;
    // Lane t loads one of the four per-group values its quad needs (scale and bias of rows g and
    // g + 8) and the quad swaps them: a quarter of the registers of each lane loading all four.
    const T* sb = (t & 1 ? mt.biases : mt.scales) + (t & 2 ? r1 : r0) * groups;
    const bool has_x = g < p.M;  // B's column g is x row g; columns >= M stay zero
    const T* xq = p.x + int64_t(has_x ? g : 0) * K + t * Sh::QV;
    // A batch of U groups: the words of both rows and the lane's scale or bias.
    struct Batch {
      uint32_t wa[U][QW], wb[U][QW];
      T sbv[U];
    };
    auto load_batch = [&](int64_t G0, Batch& b) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (G0 + u < g_end) {
          load_words<QW>(w0 + (G0 + u) * kGroupWords, b.wa[u]);
          load_words<QW>(w1 + (G0 + u) * kGroupWords, b.wb[u]);
          b.sbv[u] = __ldg(sb + G0 + u);
        }
      }
    };
    // PIPE: batch i + 1's loads are in flight while batch i is used, and the first batch is
    // loaded before pdl_wait: weights never change while a decode step is recorded, so under
    // programmatic dependent launch their loads overlap the kernel before this one; x, the previous
    // kernel's output, is read only after the wait. Otherwise a batch is loaded, then used.
    Batch cur;  // PIPE: the batch in use
    if (PIPE && g_begin < g_end) load_batch(g_begin, cur);
    pdl_wait();
    for (int64_t G0 = g_begin; G0 < g_end; G0 += U) {
      Batch next;  // PIPE: the batch after; otherwise the batch in use
      if (!PIPE || G0 + U < g_end) load_batch(PIPE ? G0 + U : G0, next);
      const Batch& b = PIPE ? cur : next;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (G0 + u < g_end) {
          uint32_t xw[Sh::XW];
          if (has_x) {
            load_x(xq + (G0 + u) * GS, xw);
          } else {
#pragma unroll
            for (int i = 0; i < Sh::XW; ++i) xw[i] = 0u;
          }
          const uint32_t(&wa)[QW] = b.wa[u];
          const uint32_t(&wb)[QW] = b.wb[u];
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
            constexpr uint32_t one = Magic<T>::kOne;
            mma16816<T>(cx, one, one, one, one, x0, x1);
          }
          // cx[2], cx[3] (rows g + 8 of the ones) equal cx[0], cx[1].
          const float v = to_f32(b.sbv[u]);  // lane 4g + {0, 1, 2, 3}: scale g, bias g, scale g + 8, bias g + 8
          const float sc0 = __shfl_sync(0xffffffffu, v, 4 * g), sc1 = __shfl_sync(0xffffffffu, v, 4 * g + 2);
          const float bi0 = fmaf(-kOffset, sc0, __shfl_sync(0xffffffffu, v, 4 * g + 1));
          const float bi1 = fmaf(-kOffset, sc1, __shfl_sync(0xffffffffu, v, 4 * g + 3));
          acc[0] = fmaf(sc0, cq[0], fmaf(bi0, cx[0], acc[0]));
          acc[1] = fmaf(sc0, cq[1], fmaf(bi0, cx[1], acc[1]));
          acc[2] = fmaf(sc1, cq[2], fmaf(bi1, cx[0], acc[2]));
          acc[3] = fmaf(sc1, cq[3], fmaf(bi1, cx[1], acc[3]));
        }
      }
      if constexpr (PIPE) cur = next;
    }
  }
  meet_pieces(part, acc, warp, lane, S, piece);
  if (piece != 0 || !valid) return;
  store_tile(mt, acc, n0, p.M, g, t);
}

template <typename T, int BITS, int GS>
void launch_mma(QgemvParams<T> p) {
  const bool group = p.count > 1;
  using Sh = MmaShape<BITS, GS>;
  // Split K over S warps until the card has about 24 warps a multiprocessor, keeping at least a
  // full batch of groups per piece.
  const int64_t tiles = p.tile_start[p.count], groups = p.K / GS;
  const int64_t want = int64_t(cuda_impl().sm_count()) * 24;
  p.S = 1;
  const int wanted = int(runtime_config().cuda_qgemv_variant);
  if (wanted == 9 && launch_stream<T>(BITS, GS, p)) return;
  if (wanted == 10 && launch_simt_ring<T>(BITS, GS, p)) return;
  if (wanted >= 9 && launch_simt<T>(BITS, GS, p)) return;
  if (wanted == 8 && launch_ring<T>(BITS, GS, p)) return;
  if (wanted >= 7 && launch_tma<T>(BITS, GS, p)) return;
  if (wanted >= 5 && launch_lean<T>(BITS, GS, p, wanted == 6)) return;
  if ((wanted == 3 || wanted == 4) && launch_async<T>(BITS, GS, wanted == 3 ? 64 : 128, p)) return;
  const int variant = Sh::kVariants && wanted <= 2 ? wanted : 0;
  if (group && variant == 0) {
    // The grouped instance of this kernel runs 3 blocks a multiprocessor instead of 4, so matrices
    // that each fill the card alone (Mistral 7B's gate and up) run faster as launches of their own
    // (bench/NOTES.md, session 3); small ones (q, k, v) gain from sharing a launch.
    bool each_fills = true;
    for (int i = 0; i < p.count; ++i) each_fills = each_fills && p.tile_start[i + 1] - p.tile_start[i] >= want / 4;
    if (each_fills) {
      for (int i = 0; i < p.count; ++i) {
        QgemvParams<T> one = p;
        one.count = 1;
        one.wq = p.wqs[i], one.scales = p.scaless[i], one.biases = p.biasess[i], one.y = p.ys[i], one.N = p.Ns[i];
        const int64_t t = p.tile_start[i + 1] - p.tile_start[i];
        one.tile_start[0] = 0;
        one.tile_start[1] = one.tile_start[2] = one.tile_start[3] = t;
        launch_mma<T, BITS, GS>(one);
      }
      return;
    }
  }
  const int batch = variant == 1 ? Sh::UP : variant == 2 ? Sh::UW : Sh::U;
  while (p.S < kQWarps && tiles * p.S < want && groups >= int64_t(2 * p.S) * batch) p.S *= 2;
  const int64_t tiles_per_block = kQWarps / p.S;
  const dim3 grid(unsigned((tiles + tiles_per_block - 1) / tiles_per_block));
  auto go = [&](auto var) {
    constexpr int V = decltype(var)::value;
    launch("quantized_gemv", group ? qgemv_mma_kernel<T, BITS, GS, true, V> : qgemv_mma_kernel<T, BITS, GS, false, V>,
           grid, kQWarps * 32, 0, p);
  };
  if constexpr (Sh::kVariants) {
    if (variant == 1) return go(std::integral_constant<int, 1>{});
    if (variant == 2) return go(std::integral_constant<int, 2>{});
  }
  go(std::integral_constant<int, 0>{});
}

// ---------------------------------------------------------------------------------------------
// Any bits (2-8), group, dtype and alignment: a warp a row, lane l on codes k = l, l + 32, ...
// (a group is gs / 32 steps, so every lane is in the same group at each step), each lane
// keeping its share of sum(q x) and sum(x) per group and folding them with the group's scale and
// bias; the lanes' shares meet in a warp sum at the end.
template <typename T>
__global__ void __launch_bounds__(kQWarps * 32) qgemv_generic_kernel(QgemvParams<T> p, int bits, int group_size) {
  pdl_enter();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kQWarps + warp;
  if (n >= p.N) return;  // whole warps
  const int64_t K = p.K, groups = K / group_size;
  const uint32_t mask = (1u << bits) - 1;
  const uint32_t* w = p.wq + n * (K * bits / 32);
  float acc[8];
#pragma unroll
  for (int m = 0; m < 8; ++m) acc[m] = 0.f;
  for (int64_t G = 0; G < groups; ++G) {
    float qx[8], sx[8];
#pragma unroll
    for (int m = 0; m < 8; ++m) qx[m] = sx[m] = 0.f;
    for (int64_t k = G * group_size + lane; k < (G + 1) * group_size; k += 32) {
      const int64_t bit = k * bits, word = bit >> 5;
      const int off = int(bit & 31);
      uint32_t q = w[word] >> off;
      if (off + bits > 32) q |= w[word + 1] << (32 - off);  // a 3/5/6-bit code across two words
      const float qf = float(q & mask);
#pragma unroll
      for (int m = 0; m < 8; ++m) {
        if (m < p.M) {
          const float xv = to_f32(p.x[m * K + k]);
          qx[m] = fmaf(qf, xv, qx[m]);
          sx[m] += xv;
        }
      }
    }
    const float s = to_f32(p.scales[n * groups + G]), b = to_f32(p.biases[n * groups + G]);
#pragma unroll
    for (int m = 0; m < 8; ++m) acc[m] = fmaf(s, qx[m], fmaf(b, sx[m], acc[m]));
  }
#pragma unroll
  for (int m = 0; m < 8; ++m) {
    if (m < p.M) {  // M is the same for the whole warp
      const float v = warp_sum(acc[m]);
      if (lane == 0) p.y[m * p.N + n] = from_f32<T>(v);
    }
  }
}

// Whether the tensor-core kernel takes these bits, group and dtype (and 16-byte aligned x and wq).
bool mma_path(int bits, int group_size, DType dt) {
  return dt != DType::f32 && (bits == 4 || bits == 8 || (bits == 2 && group_size >= 64));
}

template <typename T>
void launch_mma_for(int bits, int group_size, const QgemvParams<T>& p) {
  switch (bits * 1000 + group_size) {
    case 4032: return launch_mma<T, 4, 32>(p);
    case 4064: return launch_mma<T, 4, 64>(p);
    case 4128: return launch_mma<T, 4, 128>(p);
    case 8032: return launch_mma<T, 8, 32>(p);
    case 8064: return launch_mma<T, 8, 64>(p);
    case 8128: return launch_mma<T, 8, 128>(p);
    case 2064: return launch_mma<T, 2, 64>(p);
    case 2128: return launch_mma<T, 2, 128>(p);
    default: LMT_CHECK(false, "[quantized_gemv] no tensor-core kernel for bits ", bits, " group ", group_size);
  }
}

bool gemv_shape_ok(int64_t M, int64_t K, int bits, int group_size, DType dt) {
  if (M < 1 || M > 8 || K < 1 || !runtime_config().cuda_gemv) return false;
  if ((bits < 2 || bits > 8 || bits == 7) || (group_size != 32 && group_size != 64 && group_size != 128) ||
      K % group_size != 0)
    return false;
  return dt == DType::f32 || dt == DType::bf16 || dt == DType::f16;
}

}  // namespace

// LMTUNE_CUDA_GEMV=0 turns this off as it does gemv.cu (callers then dequantize and use gemm).
bool CudaBackend::quantized_gemv(const void* x, const uint32_t* wq, const void* scales, const void* biases, void* y,
                                 int64_t M, int64_t N, int64_t K, int bits, int group_size, DType dt) {
  if (N < 0 || !gemv_shape_ok(M, K, bits, group_size, dt)) return false;
  if (N == 0) return true;
  const bool tensor_cores = mma_path(bits, group_size, dt) && aligned16(x) && aligned16(wq);
  dispatch_float(dt, "quantized_gemv", [&](auto tag) {
    using T = typename decltype(tag)::type;
    QgemvParams<T> p = single_params<T>(x, wq, scales, biases, y, M, N, K);
    if constexpr (!std::is_same_v<T, float>) {
      if (tensor_cores) return launch_mma_for<T>(bits, group_size, p);
    }
    const dim3 grid(unsigned((N + kQWarps - 1) / kQWarps));
    launch("quantized_gemv", qgemv_generic_kernel<T>, grid, kQWarps * 32, 0, p, bits, group_size);
  });
  return true;
}

// One launch for up to three products of one x (the tensor-core path only; false otherwise, and
// the caller runs them one by one).
bool CudaBackend::quantized_gemv_group(const void* x, const uint32_t* const* wqs, const void* const* scales,
                                       const void* const* biases, void* const* ys, const int64_t* ns, int count,
                                       int64_t M, int64_t K, int bits, int group_size, DType dt) {
  if (count < 1 || count > 3 || !gemv_shape_ok(M, K, bits, group_size, dt) || !mma_path(bits, group_size, dt) ||
      !aligned16(x))
    return false;
  for (int i = 0; i < count; ++i)
    if (ns[i] < 1 || !aligned16(wqs[i])) return false;
  dispatch_float(dt, "quantized_gemv", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<T, float>) {
      QgemvParams<T> p{};
      p.x = static_cast<const T*>(x);
      p.K = K;
      p.M = int(M);
      p.S = 1;
      set_matrices(p, wqs, scales, biases, ys, ns, count);
      launch_mma_for<T>(bits, group_size, p);
    }
  });
  return true;
}

// Decoding's fused steps, on the lean kernels only (variants 5 and 6, qgemv_lean.cu; 7, qgemv_tma.cu; 8,
// qgemv_ring.cu): false
// elsewhere, and the caller composes the plain ops, which give the same values.
namespace {
int lean_variant() {
  const RuntimeConfig& rc = runtime_config();
  const int v = int(rc.cuda_qgemv_variant);
  return rc.fused_epilogues && v >= 5 && v <= 10 ? v : 0;
}
bool aligned4(const void* p) { return reinterpret_cast<uintptr_t>(p) % 4 == 0; }
}  // namespace

bool CudaBackend::quantized_gemv_add(const void* x, const uint32_t* wq, const void* scales, const void* biases,
                                     const void* residual, void* y, int64_t M, int64_t N, int64_t K, int bits,
                                     int group_size, DType dt) {
  const int variant = lean_variant();
  if (N < 1 || !variant || !gemv_shape_ok(M, K, bits, group_size, dt) || !mma_path(bits, group_size, dt) ||
      !aligned16(x) || !aligned16(wq))
    return false;
  bool done = false;
  dispatch_float(dt, "quantized_gemv_add", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<T, float>) {
      QgemvParams<T> p = single_params<T>(x, wq, scales, biases, y, M, N, K);
      p.residual = static_cast<const T*>(residual);
      done = (variant == 9 && launch_stream<T>(bits, group_size, p)) ||
             (variant == 10 && launch_simt_ring<T>(bits, group_size, p)) ||
             (variant >= 9 && launch_simt<T>(bits, group_size, p)) ||
             (variant == 8 && launch_ring<T>(bits, group_size, p)) ||
             (variant >= 7 && launch_tma<T>(bits, group_size, p)) || launch_lean<T>(bits, group_size, p, variant == 6);
    }
  });
  return done;
}

bool CudaBackend::quantized_gemv_swiglu(const void* x, const uint32_t* const* wqs, const void* const* scales,
                                        const void* const* biases, void* out, int64_t M, int64_t N, int64_t K, int bits,
                                        int group_size, DType dt) {
  const int variant = lean_variant();
  if (N < 1 || !variant || !gemv_shape_ok(M, K, bits, group_size, dt) || !mma_path(bits, group_size, dt) ||
      !aligned16(x) || !aligned16(wqs[0]) || !aligned16(wqs[1]) || !aligned4(scales[1]) || !aligned4(biases[1]))
    return false;
  bool done = false;
  dispatch_float(dt, "quantized_gemv_swiglu", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<T, float>) {
      QgemvParams<T> p = single_params<T>(x, wqs[0], scales[0], biases[0], out, M, N, K);
      for (int i = 0; i < 2; ++i) {
        p.wqs[i] = wqs[i];
        p.scaless[i] = static_cast<const T*>(scales[i]);
        p.biasess[i] = static_cast<const T*>(biases[i]);
      }
      p.swiglu = true;
      p.tile_start[1] = p.tile_start[2] = p.tile_start[3] = (N + 7) / 8;  // 8 rows of gate and of up a tile
      done = (variant == 10 && launch_simt_ring<T>(bits, group_size, p)) ||
             (variant >= 9 && launch_simt<T>(bits, group_size, p)) ||
             (variant == 8 && launch_ring<T>(bits, group_size, p)) ||
             (variant >= 7 && launch_tma<T>(bits, group_size, p)) || launch_lean<T>(bits, group_size, p, variant == 6);
    }
  });
  return done;
}

namespace {
std::atomic<int64_t> normed_launches{0}, rope_launches{0};
}  // namespace
int64_t cuda_qgemv_normed_launches() { return normed_launches.load(); }
int64_t cuda_qgemv_rope_launches() { return rope_launches.load(); }

// The CUDA-core kernels only (variants 9 and 10): their staging of x normalizes it (qgemv_simt.cuh's stage_x).
bool CudaBackend::quantized_gemv_normed(const void* x, const void* norm_w, float eps, const uint32_t* const* wqs,
                                        const void* const* scales, const void* const* biases, void* const* ys,
                                        const int64_t* ns, int count, bool swiglu, int64_t K, int bits, int group_size,
                                        DType dt, const RopeAppendArgs* rope) {
  const int variant = int(runtime_config().cuda_qgemv_variant);
  if (variant < 9 || (swiglu && (lean_variant() == 0 || count != 2 || ns[0] != ns[1])) || count < 1 || count > 3 ||
      !gemv_shape_ok(1, K, bits, group_size, dt) || !mma_path(bits, group_size, dt) || !aligned16(x) ||
      !aligned16(norm_w))
    return false;
  // The rope epilogue: q, k and v of whole heads of an even head_dim; a task is one rotated pair (two rows).
  if (rope && (swiglu || count != 3 || !rope_fits(*rope, ns))) return false;
  for (int i = 0; i < count; ++i)
    if (ns[i] < 1 || !aligned16(wqs[i]) || !aligned4(scales[i]) || !aligned4(biases[i])) return false;
  bool done = false;
  dispatch_float(dt, "quantized_gemv_normed", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<T, float>) {
      QgemvParams<T> p = single_params<T>(x, wqs[0], scales[0], biases[0], ys[0], 1, ns[0], K);
      set_matrices(p, wqs, scales, biases, ys, ns, count);
      if (swiglu) {  // gate and up are one task's two rows (wqs[0], wqs[1]), written to ys[0]
        p.count = 1;
        p.tile_start[2] = p.tile_start[3] = p.tile_start[1];
      }
      p.swiglu = swiglu;
      p.norm_w = static_cast<const T*>(norm_w);
      p.norm_eps = eps;
      if (rope) set_rope(p, *rope);
      done = (variant == 9 && launch_stream_normed<T>(bits, group_size, p)) ||
             (variant == 10 && !rope && launch_simt_ring<T>(bits, group_size, p)) ||
             launch_simt<T>(bits, group_size, p);
    }
  });
  if (done) normed_launches.fetch_add(1, std::memory_order_relaxed);
  if (done && rope) rope_launches.fetch_add(1, std::memory_order_relaxed);
  return done;
}

// Variant 9's arithmetic (SPREAD included) in one launch of three phases (qgemv_chain.cu); only where variant 9 with
// its defaults would run the three launches it replaces (the fused epilogues on, the quantized GEMV not switched off),
// so that the values are theirs.
bool CudaBackend::takes_decode_chain(const QuantizedDecodeChain& a) const {
  const RuntimeConfig& rc = runtime_config();
  if (!rc.cuda_decode_chain || rc.cuda_qgemv_variant != 9 || !rc.cuda_qgemv_simt_spread || lean_variant() == 0 ||
      !mma_path(a.bits, a.group_size, a.dt) || !aligned16(a.a) || !aligned16(a.x) || !aligned16(a.norm_w))
    return false;
  for (int64_t K : {a.n_attn, a.n_embd, a.n_ff})
    if (!gemv_shape_ok(1, K, a.bits, a.group_size, a.dt)) return false;
  for (int i = 0; i < 4; ++i)
    if (!aligned16(a.wq[i]) || !aligned4(a.scales[i]) || !aligned4(a.biases[i])) return false;
  if (a.next_wq[0]) {
    if (!aligned16(a.next_norm_w)) return false;
    for (int i = 0; i < 3; ++i)
      if (!aligned16(a.next_wq[i]) || !aligned4(a.next_scales[i]) || !aligned4(a.next_biases[i])) return false;
  }
  return qgemv::takes_decode_chain(a);
}

bool CudaBackend::quantized_decode_chain(const QuantizedDecodeChain& a) {
  if (!takes_decode_chain(a) || !aligned16(a.x1) || !aligned16(a.act) || !aligned16(a.out)) return false;
  LMT_CHECK(a.x1 != a.a && a.act != a.x1 && a.out != a.act && a.out != a.x1 && a.x1 != a.x,
            "[quantized_decode_chain] x1, act and out must be buffers of their own");
  LMT_CHECK(!a.next_wq[0] || (a.next_q && a.next_q != a.out && a.next_q != a.x1 && a.next_q != a.act &&
                              a.next_q != a.a && a.next_q != a.x),
            "[quantized_decode_chain] the next layer's q must be a buffer of its own");
  return qgemv::launch_decode_chain(a, chain_barrier_);
}

}  // namespace lmtune
