// Decoding's single 4-bit products (o's and down's with the residual add, lm_head's) on the CUDA cores without x
// staged in shared memory (LMTUNE_CUDA_QGEMV_STREAM=1 or 2, with variant 9; 2 by default). Variant 9 stages x and its
// chunk sums once a block before any warp uses a weight; here, as in the fp modes' product (qgemv_fp.cu), which streams
// the same shapes at 74-80% of the copy bandwidth where variant 9 reaches ~60% on down (bench/NOTES.md, session 30), a
// warp reads x itself through L1 as it goes and its weights' next step is in flight while it uses the step before.
// (On an H100, session 31: o 7.45 -> 6.55 us, down 18.4 -> 16.1, a 4-bit Mistral-7B decode +2-4%; with 2 on an H200,
// session 32: o 7.2 -> 6.2, down 16.7 -> 15.2, the decode +2.2% / +4.7% at prompts 16 / 512.)
//   A warp takes two rows; lane l the chunks (32 codes, 16 bytes a row) c = l, l + 32, ... of both, one a step, with
// its scale and bias (with LMTUNE_CUDA_QGEMV_STREAM=2 two warps take the two rows, each every other stripe of 32
// chunks: the kernel's comment). The first step is loaded before the wait on the previous kernel (the weights are
// constant: cuda_common.cuh's pdl_enter). A chunk's arithmetic is variant 9's without SPREAD (qgemv_simt.cuh's
// chunk_dot): codes as the exact floats 1 + q / 16, a = sum (1 + q / 16) x over the chunk in f32, y += 16 scale (a -
// sx) + bias sx, where sx, the chunk's sum of x, is summed here in order by the lane (variant 9 sums it rotated by the
// chunk's place): the values differ from variant 9's only by that order (and by SPREAD's rounding where it is on), and
// each x value is loaded and converted once for both rows.
// M = 1, 4 bits, groups 32, 64, 128; one matrix, without the norm, swiglu and rope epilogues (those stay variant 9's).
#include <atomic>
#include <type_traits>

#include "backend/backend.h"
#include "backend/cuda/qgemv_simt.cuh"
#include "core/runtime_config.h"

namespace lmtune {
namespace {
std::atomic<int64_t> stream_launches{0}, stream_normed_launches{0};
}  // namespace
int64_t cuda_qgemv_stream_launches() { return stream_launches.load(); }
int64_t cuda_qgemv_stream_normed_launches() { return stream_normed_launches.load(); }
}  // namespace lmtune

namespace lmtune::qgemv {

namespace {

constexpr int kStreamWarps = 8;  // warps a block
constexpr int kRows = 2;         // rows a warp

// A lane's step: one chunk of each row, with its scale (low 16 bits) and bias (high) as T's bits.
struct Step {
  uint4 w[kRows];
  uint32_t sb[kRows];
};

// The step at the lane's chunk c (nothing where c >= C): w, sc, bi at that chunk's words, scale and bias.
template <typename T>
__device__ __forceinline__ void load_step(const uint32_t* const (&w)[kRows], const T* const (&sc)[kRows],
                                          const T* const (&bi)[kRows], int64_t c, int64_t C, Step& st) {
  if (c < C) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      st.w[r] = ld_stream4(w[r]);
      st.sb[r] = simt::bits16(sc[r]) | simt::bits16(bi[r]) << 16;
    }
  }
}

// The chunk of step st (x at xc, its 32 values) added into y: variant 9's chunk_dot with x from global memory. NORM:
// x times the norm's weight (at wc) in f32, unrounded, and x^2 added into ss (the caller scales the sums by the rms
// factor at the end).
template <typename T, bool NORM = false>
__device__ __forceinline__ void chunk_use(const T* xc, const Step& st, float (&y)[kRows], const T* wc = nullptr,
                                          float* ss = nullptr) {
  uint4 xu[4];  // all four loads first; with NORM (a weight load each too) one at a time, for registers
  if constexpr (!NORM) {
#pragma unroll
    for (int j = 0; j < 4; ++j) xu[j] = __ldg(reinterpret_cast<const uint4*>(xc) + j);
  }
  float a[kRows][4], sx = 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if constexpr (NORM) xu[j] = __ldg(reinterpret_cast<const uint4*>(xc) + j);
    const uint32_t h[4] = {xu[j].x, xu[j].y, xu[j].z, xu[j].w};
    float xv[8];
#pragma unroll
    for (int i = 0; i < 4; ++i)
      xv[2 * i] = simt::f32_of_bits<T>(h[i]), xv[2 * i + 1] = simt::f32_of_bits<T>(h[i] >> 16);
    if constexpr (NORM) {
      const uint4 wu = __ldg(reinterpret_cast<const uint4*>(wc) + j);
      const uint32_t g[4] = {wu.x, wu.y, wu.z, wu.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        *ss = fmaf(xv[2 * i], xv[2 * i], *ss);
        *ss = fmaf(xv[2 * i + 1], xv[2 * i + 1], *ss);
        xv[2 * i] *= simt::f32_of_bits<T>(g[i]), xv[2 * i + 1] *= simt::f32_of_bits<T>(g[i] >> 16);
      }
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) sx += xv[k];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const uint4& wr = st.w[r];
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
    const float scale = simt::f32_of_bits<T>(st.sb[r]), bias = simt::f32_of_bits<T>(st.sb[r] >> 16);
    const float d = ((a[r][0] + a[r][1]) + (a[r][2] + a[r][3])) - sx;
    y[r] = fmaf(16.f * scale, d, fmaf(bias, sx, y[r]));
  }
}

// A warp's two rows streamed (rows: each row's words, scales and biases from its start): the lane's chunks c_first,
// c_first + STRIDE, ... below C, one a step. The first step is loaded on construction, before the wait on the previous
// kernel (the weights are constant); run() then adds every chunk into acc (NORM: chunk_use's), two steps an iteration
// with two buffers taking turns, so that each step's loads go out before the step loaded last is used.
template <typename T, int GS, int STRIDE>
struct Stream {
  const uint32_t* w[kRows];
  const T* sc[kRows];
  const T* bi[kRows];
  int64_t c_first, C;
  Step cur;

  __device__ __forceinline__ Stream(const simt::Rows<T, kRows>& rows, int64_t c_first_, int64_t C_)
      : c_first(c_first_), C(C_) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      w[r] = rows.w[r] + c_first * 4;
      sc[r] = rows.sc[r] + c_first * 32 / GS;
      bi[r] = rows.bi[r] + c_first * 32 / GS;
      asm("" : "+l"(w[r]), "+l"(sc[r]), "+l"(bi[r]));  // opaque: not worked out again from the rows at every step
    }
    load_step<T>(w, sc, bi, c_first, C, cur);
  }

  template <bool NORM = false>
  __device__ __forceinline__ void run(const T* x, float (&acc)[kRows], const T* norm_w = nullptr, float* ss = nullptr) {
    const T* xc = x + c_first * 32;
    const T* wc = NORM ? norm_w + c_first * 32 : nullptr;
    const auto advance = [&] {
#pragma unroll
      for (int r = 0; r < kRows; ++r) w[r] += STRIDE * 4, sc[r] += STRIDE * 32 / GS, bi[r] += STRIDE * 32 / GS;
    };
    Step next;
    for (int64_t c0 = c_first; c0 < C; c0 += 2 * STRIDE) {
      advance();
      load_step<T>(w, sc, bi, c0 + STRIDE, C, next);
      chunk_use<T, NORM>(xc, cur, acc, wc, ss);
      if (c0 + STRIDE >= C) break;
      advance();
      load_step<T>(w, sc, bi, c0 + 2 * STRIDE, C, cur);
      chunk_use<T, NORM>(xc + STRIDE * 32, next, acc, NORM ? wc + STRIDE * 32 : nullptr, ss);
      xc += 2 * STRIDE * 32;
      if constexpr (NORM) wc += 2 * STRIDE * 32;
    }
  }
};

// SPLIT warps a pair of rows (1 or 2: LMTUNE_CUDA_QGEMV_STREAM's value), piece p of them taking the stripes of 32
// chunks p, p + SPLIT, ..., so that a product of few rows (o's, down's 4,096) has twice the warps with 2; the pieces'
// sums meet in shared memory, piece 0's first. RES: y = residual + y (the product rounded to T first, then added in f32
// and rounded, as qgemv_simt.cuh's store_task). 64 registers, no spills (-Xptxas -v): 4 blocks a multiprocessor.
template <typename T, int GS, int SPLIT, bool RES>
__global__ void __launch_bounds__(kStreamWarps * 32, 4)
    qgemv_stream_kernel(const T* __restrict__ x, const uint32_t* __restrict__ wq, const T* __restrict__ scales,
                        const T* __restrict__ biases, const T* residual, T* y, int64_t N, int64_t K) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, piece = warp % SPLIT;
  const int64_t n0 = (int64_t(blockIdx.x) * (kStreamWarps / SPLIT) + warp / SPLIT) * kRows;
  const int64_t groups = K / GS;
  // Each row's words, scales and biases. A last warp of one row reads it twice and stores it once; warps past N load
  // nothing and add nothing, but meet the others at the barrier.
  simt::Rows<T, kRows> rows;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = min(n0 + r, N - 1);
    rows.w[r] = wq + row * (K / 8), rows.sc[r] = scales + row * groups, rows.bi[r] = biases + row * groups;
  }
  pdl_trigger();
  Stream<T, GS, 32 * SPLIT> stream(rows, lane + 32 * piece, n0 < N ? K / 32 : 0);
  pdl_wait();
  float acc[kRows] = {0.f, 0.f};
  stream.run(x, acc);
#pragma unroll
  for (int r = 0; r < kRows; ++r) acc[r] = warp_sum(acc[r]);
  if constexpr (SPLIT > 1) {
    __shared__ float part[kStreamWarps][kRows];
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < kRows; ++r) part[warp][r] = acc[r];
    __syncthreads();
    if (piece != 0) return;
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int i = 1; i < SPLIT; ++i) acc[r] += part[warp + i][r];
  }
  if (lane != 0) return;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t n = n0 + r;
    if (n < N) {
      if constexpr (RES) {
        y[n] = from_f32<T>(to_f32(residual[n]) + to_f32(from_f32<T>(acc[r])));
      } else {
        y[n] = from_f32<T>(acc[r]);
      }
    }
  }
}

template <typename T, int GS, int SPLIT>
void launch_stream_kernel(const QgemvParams<T>& p) {
  constexpr int kRowsBlock = kStreamWarps / SPLIT * kRows;
  const dim3 grid(unsigned((p.N + kRowsBlock - 1) / kRowsBlock));
  if (p.residual)
    launch("quantized_gemv_stream", qgemv_stream_kernel<T, GS, SPLIT, true>, grid, kStreamWarps * 32, 0, p.x, p.wq,
           p.scales, p.biases, p.residual, p.y, p.N, p.K);
  else
    launch("quantized_gemv_stream", qgemv_stream_kernel<T, GS, SPLIT, false>, grid, kStreamWarps * 32, 0, p.x, p.wq,
           p.scales, p.biases, p.residual, p.y, p.N, p.K);
  stream_launches.fetch_add(1, std::memory_order_relaxed);
}

// Variant 9's normed launches streamed (LMTUNE_CUDA_QGEMV_STREAM_NORMED=1): q/k/v with the rope epilogue, or gate/up
// with swiglu, x normed inside. A warp takes one of variant 9's two-row tasks (simt::rows_of: a rotated pair of q, k
// or v; gate's and up's row for swiglu; else two rows of a matrix), one task a warp, and stores it with variant 9's
// epilogues (simt::store_task). NORM: rms_norm's factor comes out of the sums, y = rs sum q (x w): each warp adds
// x^2 over all of x as it streams it (every warp covers the whole row, lanes in the same order: the same rs in every
// warp) and multiplies its two sums by rs = 1 / sqrt(mean(x^2) + eps) at the end. The values differ from rms_norm's
// followed by the products by rms_norm's rounding of the normed x to T (not made here) and by its order of the sum of
// x^2: within a few ulp of the output, not bit for bit. With NORM 3 blocks a multiprocessor (at 4, 64 registers,
// ptxas spilled ~100 bytes).
template <typename T, int GS, bool SWIGLU, bool NORM>
__global__ void __launch_bounds__(kStreamWarps * 32, NORM ? 3 : 4)
    qgemv_stream_tasks_kernel(QgemvParams<T> p, int64_t tasks) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t task = int64_t(blockIdx.x) * kStreamWarps + warp;
  const int64_t K = p.K, groups = K / GS;
  const bool here = task < tasks;
  const simt::Rows<T, kRows> rows = simt::rows_of<T, kRows, SWIGLU>(p, here ? task : tasks - 1, K / 8, groups);
  pdl_trigger();
  Stream<T, GS, 32> stream(rows, lane, here ? K / 32 : 0);
  pdl_wait();
  if (!here) return;  // whole warps; no barrier below
  float acc[kRows] = {0.f, 0.f}, ss = 0.f;
  stream.template run<NORM>(p.x, acc, p.norm_w, &ss);
#pragma unroll
  for (int r = 0; r < kRows; ++r) acc[r] = warp_sum(acc[r]);
  if constexpr (NORM) {
    const float rs = 1.f / sqrtf(warp_sum(ss) / float(K) + p.norm_eps);
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] *= rs;
  }
  if (lane == 0) simt::store_task<T, kRows, SWIGLU>(p, task, acc);
}

template <typename T, int GS, bool SWIGLU, bool NORM>
void launch_stream_tasks(const QgemvParams<T>& p, int64_t tasks) {
  const dim3 grid(unsigned((tasks + kStreamWarps - 1) / kStreamWarps));
  launch("quantized_gemv_stream_normed", qgemv_stream_tasks_kernel<T, GS, SWIGLU, NORM>, grid, kStreamWarps * 32, 0, p,
         tasks);
  stream_normed_launches.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

template <typename T>
bool launch_stream(int bits, int group_size, const QgemvParams<T>& p) {
  const int64_t split = runtime_config().cuda_qgemv_stream;
  if (split == 0 || p.count != 1 || p.swiglu || p.norm_w || p.rope_inv_freq || p.N < 1 || !simt::takes(bits, p))
    return false;
  return simt::by_group_size(group_size, [&](auto gs) {
    constexpr int GS = decltype(gs)::value;
    if (split == 1)
      launch_stream_kernel<T, GS, 1>(p);
    else
      launch_stream_kernel<T, GS, 2>(p);
    return true;
  });
}

template <typename T>
bool launch_stream_normed(int bits, int group_size, QgemvParams<T> p) {
  const int64_t which = runtime_config().cuda_qgemv_stream_normed;  // 1: q/k/v and gate/up; 2: q/k/v only
  if (which == 0 || (which == 2 && p.swiglu) || p.residual || !simt::takes(bits, p)) return false;
  const int64_t tasks = p.swiglu ? p.N : simt::number_tasks(p, kRows);
  if (tasks < 1) return false;
  return simt::by_group_size(group_size, [&](auto gs) {
    constexpr int GS = decltype(gs)::value;
    const bool norm = p.norm_w != nullptr;
    if (p.swiglu)
      norm ? launch_stream_tasks<T, GS, true, true>(p, tasks) : launch_stream_tasks<T, GS, true, false>(p, tasks);
    else
      norm ? launch_stream_tasks<T, GS, false, true>(p, tasks) : launch_stream_tasks<T, GS, false, false>(p, tasks);
    return true;
  });
}

template bool launch_stream<bf16>(int, int, const QgemvParams<bf16>&);
template bool launch_stream<f16>(int, int, const QgemvParams<f16>&);
template bool launch_stream_normed<bf16>(int, int, QgemvParams<bf16>);
template bool launch_stream_normed<f16>(int, int, QgemvParams<f16>);

}  // namespace lmtune::qgemv
