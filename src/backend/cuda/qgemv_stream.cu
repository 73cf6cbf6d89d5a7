// Decoding's single 4-bit products (o's and down's with the residual add, lm_head's) on the CUDA cores without x
// staged in shared memory (LMTUNE_CUDA_QGEMV_STREAM=1 or 2, with variant 9; opt-in). Variant 9 stages x and its chunk
// sums once a block before any warp uses a weight; here, as in the fp modes' product (qgemv_fp.cu), which streams the
// same shapes at 74-80% of the copy bandwidth where variant 9 reaches ~60% on down (bench/NOTES.md, session 30), a
// warp reads x itself through L1 as it goes and its weights' next step is in flight while it uses the step before.
//   A warp takes two rows; lane l the chunks (32 codes, 16 bytes a row) c = l, l + 32, ... of both, KU of them a step
// (LMTUNE_CUDA_QGEMV_STREAM's value), with each chunk's scale and bias. The first step is loaded before the wait on the
// previous kernel (the weights are constant: cuda_common.cuh's pdl_enter). A chunk's arithmetic is variant 9's without
// SPREAD (qgemv_simt.cuh's chunk_dot): codes as the exact floats 1 + q / 16, a = sum (1 + q / 16) x over the chunk in
// f32, y += 16 scale (a - sx) + bias sx, where sx, the chunk's sum of x, is summed here in order by the lane (variant 9
// sums it rotated by the chunk's place): the values differ from variant 9's only by that order (and by SPREAD's
// rounding where it is on), and each x value is loaded and converted once for both rows.
// M = 1, 4 bits, groups 32, 64, 128; one matrix, without the norm, swiglu and rope epilogues (those stay variant 9's).
#include <atomic>
#include <type_traits>

#include "backend/backend.h"
#include "backend/cuda/qgemv_simt.cuh"
#include "core/runtime_config.h"

namespace lmtune {
namespace {
std::atomic<int64_t> stream_launches{0};
}  // namespace
int64_t cuda_qgemv_stream_launches() { return stream_launches.load(); }
}  // namespace lmtune

namespace lmtune::qgemv {

namespace {

constexpr int kStreamWarps = 8;  // warps a block
constexpr int kRows = 2;         // rows a warp

// A lane's step: KU chunks of each row, with each chunk's scale (low 16 bits) and bias (high) as T's bits.
template <int KU>
struct Step {
  uint4 w[kRows][KU];
  uint32_t sb[kRows][KU];
};

// The step whose first chunk is c (then c + 32, ...; those below C): w, sc, bi at that chunk's words, scale and bias.
template <typename T, int GS, int KU>
__device__ __forceinline__ void load_step(const uint32_t* const (&w)[kRows], const T* const (&sc)[kRows],
                                          const T* const (&bi)[kRows], int64_t c, int64_t C, Step<KU>& st) {
#pragma unroll
  for (int u = 0; u < KU; ++u) {
    if (c + 32 * u < C) {
      constexpr int kGroupStep = 32 * 32 / GS;  // groups from one chunk to the lane's next (32 chunks on)
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        st.w[r][u] = ld_stream4(w[r] + 32 * 4 * u);
        st.sb[r][u] = simt::bits16(sc[r] + kGroupStep * u) | simt::bits16(bi[r] + kGroupStep * u) << 16;
      }
    }
  }
}

// Chunk u of step st (x at xc, the chunk's 32 values) added into y: variant 9's chunk_dot with x from global memory.
template <typename T, int KU>
__device__ __forceinline__ void chunk_use(const T* xc, const Step<KU>& st, int u, float (&y)[kRows]) {
  uint4 xu[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) xu[j] = __ldg(reinterpret_cast<const uint4*>(xc) + j);
  float a[kRows][4], sx = 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint32_t h[4] = {xu[j].x, xu[j].y, xu[j].z, xu[j].w};
    float xv[8];
#pragma unroll
    for (int i = 0; i < 4; ++i)
      xv[2 * i] = simt::f32_of_bits<T>(h[i]), xv[2 * i + 1] = simt::f32_of_bits<T>(h[i] >> 16);
#pragma unroll
    for (int k = 0; k < 8; ++k) sx += xv[k];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const uint4& wr = st.w[r][u];
      const uint32_t word = j == 0 ? wr.x : j == 1 ? wr.y : j == 2 ? wr.z : wr.w;
      float q[8];
      simt::word_codes<false>(word, q);
      float s = q[0] * xv[0];
#pragma unroll
      for (int k = 1; k < 8; ++k) s = fmaf(q[k], xv[k], s);
      a[r][j] = s;
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float scale = simt::f32_of_bits<T>(st.sb[r][u]), bias = simt::f32_of_bits<T>(st.sb[r][u] >> 16);
    const float d = ((a[r][0] + a[r][1]) + (a[r][2] + a[r][3])) - sx;
    y[r] = fmaf(16.f * scale, d, fmaf(bias, sx, y[r]));
  }
}

// KU chunks a lane a step; RES: y = residual + y (the product rounded to T first, then added in f32 and rounded, as
// qgemv_simt.cuh's store_task). Blocks a multiprocessor: the most at which -Xptxas -v shows no spills.
template <int KU>
constexpr int kStreamMinBlocks = KU == 1 ? 4 : 3;

template <typename T, int GS, int KU, bool RES>
__global__ void __launch_bounds__(kStreamWarps * 32, kStreamMinBlocks<KU>)
    qgemv_stream_kernel(const T* __restrict__ x, const uint32_t* __restrict__ wq, const T* __restrict__ scales,
                        const T* __restrict__ biases, const T* residual, T* y, int64_t N, int64_t K) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n0 = (int64_t(blockIdx.x) * kStreamWarps + warp) * kRows;
  const int64_t C = K / 32, groups = K / GS;
  // Each row's words, scales and biases at the lane's first chunk. A last warp of one row reads it twice and stores it
  // once.
  const uint32_t* w[kRows];
  const T* sc[kRows];
  const T* bi[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = min(n0 + r, N - 1);
    w[r] = wq + row * (K / 8) + lane * 4;
    sc[r] = scales + row * groups + lane * 32 / GS;
    bi[r] = biases + row * groups + lane * 32 / GS;
    asm("" : "+l"(w[r]), "+l"(sc[r]), "+l"(bi[r]));  // opaque: not worked out again from n0 at every step
  }
  const T* xc = x + lane * 32;
  pdl_trigger();
  Step<KU> cur;
  if (n0 < N) load_step<T, GS, KU>(w, sc, bi, lane, C, cur);
  pdl_wait();
  if (n0 >= N) return;  // whole warps
  float acc[kRows] = {0.f, 0.f};
  constexpr int kStep = 32 * KU;  // chunks a warp covers a step
  const auto advance = [&] {
#pragma unroll
    for (int r = 0; r < kRows; ++r) w[r] += kStep * 4, sc[r] += kStep * 32 / GS, bi[r] += kStep * 32 / GS;
  };
  const auto use = [&](const Step<KU>& st, int64_t c0, const T* xs) {
#pragma unroll
    for (int u = 0; u < KU; ++u) {
      if (c0 + 32 * u >= C) break;
      chunk_use<T, KU>(xs + 32 * 32 * u, st, u, acc);
    }
  };
  // Two steps an iteration, two buffers taking turns: each step's loads go out before the step loaded last is used.
  Step<KU> next;
  for (int64_t c0 = lane; c0 < C; c0 += 2 * kStep) {
    advance();
    load_step<T, GS, KU>(w, sc, bi, c0 + kStep, C, next);
    use(cur, c0, xc);
    if (c0 + kStep >= C) break;
    advance();
    load_step<T, GS, KU>(w, sc, bi, c0 + 2 * kStep, C, cur);
    use(next, c0 + kStep, xc + kStep * 32);
    xc += 2 * kStep * 32;
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float v = warp_sum(acc[r]);
    const int64_t n = n0 + r;
    if (lane == 0 && n < N) {
      if constexpr (RES) {
        y[n] = from_f32<T>(to_f32(residual[n]) + to_f32(from_f32<T>(v)));
      } else {
        y[n] = from_f32<T>(v);
      }
    }
  }
}

template <typename T, int GS, int KU>
void launch_stream_kernel(const QgemvParams<T>& p) {
  const dim3 grid(unsigned((p.N + kStreamWarps * kRows - 1) / (kStreamWarps * kRows)));
  if (p.residual)
    launch("quantized_gemv_stream", qgemv_stream_kernel<T, GS, KU, true>, grid, kStreamWarps * 32, 0, p.x, p.wq,
           p.scales, p.biases, p.residual, p.y, p.N, p.K);
  else
    launch("quantized_gemv_stream", qgemv_stream_kernel<T, GS, KU, false>, grid, kStreamWarps * 32, 0, p.x, p.wq,
           p.scales, p.biases, p.residual, p.y, p.N, p.K);
  stream_launches.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

template <typename T>
bool launch_stream(int bits, int group_size, const QgemvParams<T>& p) {
  const int64_t ku = runtime_config().cuda_qgemv_stream;
  if (ku == 0 || p.M != 1 || bits != 4 || p.count != 1 || p.swiglu || p.norm_w || p.rope_inv_freq || p.K % 32 != 0 ||
      p.N < 1)
    return false;
  return simt::by_group_size(group_size, [&](auto gs) {
    constexpr int GS = decltype(gs)::value;
    if (ku == 1)
      launch_stream_kernel<T, GS, 1>(p);
    else
      launch_stream_kernel<T, GS, 2>(p);
    return true;
  });
}

template bool launch_stream<bf16>(int, int, const QgemvParams<bf16>&);
template bool launch_stream<f16>(int, int, const QgemvParams<f16>&);

}  // namespace lmtune::qgemv
