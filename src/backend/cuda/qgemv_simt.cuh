// The pieces of the one-row 4-bit products on the CUDA cores that variant 9 (qgemv_simt.cu: each lane loads its chunks
// into registers) and variant 10 (qgemv_simt_ring.cu: each warp streams them through a ring in shared memory) share:
// x staged as f32 with its chunk sums, a code as the exact float 1 + q / 16, a chunk's dot, and the stores.
//   A chunk is 32 codes of a row (16 bytes, 4 words); chunk c covers x[32 c, 32 c + 32). A code q becomes 1 + q / 16 by
// one shift and one LOP3 (q into mantissa bits 19-22 under 1.0's exponent), so a chunk's dot is 32 FFMAs on exact
// values: a = sum (1 + q / 16) x, and the group's scale and bias fold in as y += 16 scale (a - sx) + bias sx, sx the
// chunk's sum of x.
//   SPREAD (LMTUNE_CUDA_QGEMV_SIMT_SPREAD=1, variant 9 only, for A/B measurements) spends 10 instructions a word on its
// codes instead of 16: the codes are masked in place in three copies of the word (w << 11, w itself, w >> 9), landing
// at mantissa bits p = 11, 15, 19, 12, 16, 11, 15, 19 (codes 0..7), so a code is 1 + q 2^(p - 23) and x is staged
// pre-multiplied by 2^(19 - p) (exact: a power of two). Each product is then x 2^(19 - p) + q x / 16; their sum less
// the chunk's sum of the scaled x is sum q x / 16 as before, with an f32 rounding of at most 2^-24 of 256 |x| a term
// (against 2^-24 of 2 |x|): below 2^-13 of each term's q x / 16, far under the 2^-9 of the bf16 result.
#pragma once
#include <algorithm>
#include <map>
#include <mutex>
#include <type_traits>
#include <utility>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/qgemv_mma.cuh"

namespace lmtune::qgemv::simt {

// Code k (0..7) of word w as 1 + q / 16.
__device__ __forceinline__ float code_f32(uint32_t w, int k) {
  const int s = 19 - 4 * k;
  const uint32_t v = s >= 0 ? w << s : w >> -s;
  return __uint_as_float(and_or(v, 0x00780000u, 0x3F800000u));
}

// x's 16-byte unit u (codes 4u .. 4u + 3) of chunk c in shared memory: units swizzled by c % 8, so the eight lanes of a
// quarter-warp, whose chunks are consecutive, read eight different bank groups.
__device__ __forceinline__ int x_unit(int64_t c, int u) { return int(c * 8 + (u ^ int(c & 7))); }

// Shared memory x takes: K / 4 units of f32, then K / 32 chunk sums (and with SPREAD, K / 32 sums of the scaled x).
constexpr size_t x_bytes(int64_t K, bool spread = false) {
  return size_t(K) * 4 + size_t(K / 32) * 4 * (spread ? 2 : 1);
}

// SPREAD's exponent e_k = 19 - p_k of code k (0..7), a nibble each: 8, 4, 0, 7, 3, 8, 4, 0.
constexpr uint32_t kSpreadExp = 0x04837048u;
__host__ __device__ constexpr int spread_exp(int k) { return int(kSpreadExp >> (4 * k)) & 0xF; }

// The eight codes of word w as floats: 1 + q / 16 each, or with SPREAD 1 + q 2^(p_k - 23).
template <bool SPREAD>
__device__ __forceinline__ void word_codes(uint32_t w, float (&c)[8]) {
  if constexpr (SPREAD) {
    const uint32_t lo = w << 11, hi = w >> 9;
    constexpr uint32_t one = 0x3F800000u;
    c[0] = __uint_as_float(and_or(lo, 0xFu << 11, one));
    c[1] = __uint_as_float(and_or(lo, 0xFu << 15, one));
    c[2] = __uint_as_float(and_or(lo, 0xFu << 19, one));
    c[3] = __uint_as_float(and_or(w, 0xFu << 12, one));
    c[4] = __uint_as_float(and_or(w, 0xFu << 16, one));
    c[5] = __uint_as_float(and_or(hi, 0xFu << 11, one));
    c[6] = __uint_as_float(and_or(hi, 0xFu << 15, one));
    c[7] = __uint_as_float(and_or(hi, 0xFu << 19, one));
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) c[k] = code_f32(w, k);
  }
}

// 16 bytes of x: through the read-only path, or (COHERENT: x written earlier in the same launch by other blocks, the
// chained launch of qgemv_chain.cu) from L2, never a stale line of this multiprocessor's L1.
template <bool COHERENT>
__device__ __forceinline__ uint4 load_x16(const void* p) {
  if constexpr (COHERENT) return __ldcg(static_cast<const uint4*>(p));
  return __ldg(static_cast<const uint4*>(p));
}

template <typename T>
__device__ __forceinline__ uint32_t bits16(const T* p) {
  return uint32_t(*reinterpret_cast<const uint16_t*>(p));
}
// The T whose bits are the low 16 of v, as f32.
template <typename T>
__device__ __forceinline__ float f32_of_bits(uint32_t v) {
  if constexpr (std::is_same_v<T, bf16>) {
    return __uint_as_float(v << 16);
  } else {
    return __half2float(__ushort_as_half(uint16_t(v & 0xFFFFu)));
  }
}

// rms_norm's factor 1 / sqrt(mean(x^2) + eps) of x (K values of T), in the order of sums of norm_rope.cu's
// rms_norm_reg_kernel (thread t: 8 values at a time at t, t + blockDim.x, ...; then the block's sum) with the same
// 256 threads: the same float bit for bit. Every thread gets it; it ends on block_sum's barriers.
template <typename T, bool COHERENT = false>
__device__ __forceinline__ float rms_factor(const T* x, int64_t K, float eps) {
  __shared__ float red[32];
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < K / 8; i += blockDim.x) {
    const uint4 v = load_x16<COHERENT>(reinterpret_cast<const uint4*>(x) + i);
    const uint32_t h[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float a = f32_of_bits<T>(h[j]), b = f32_of_bits<T>(h[j] >> 16);
      ss += a * a;
      ss += b * b;
    }
  }
  ss = block_sum(ss, red);
  return 1.f / sqrtf(ss / float(K) + eps);
}

// x (K values of T) into xs as f32, 8 codes a thread at a time, then each chunk's sum into sx (with SPREAD, x scaled by
// 2^e_k and the scaled sums into sx + K / 32); the block's threads all take part, and it ends on a block barrier. With
// norm_w, x is first rms-normed with it and rounded to T, as CudaBackend::rms_norm writes it (QgemvParams::norm_w).
template <typename T, bool SPREAD = false, bool COHERENT = false>
__device__ __forceinline__ void stage_x(const T* x, int64_t K, float4* xs, float* sx, const T* norm_w = nullptr,
                                        float eps = 0.f) {
  const float rs = norm_w ? rms_factor<T, COHERENT>(x, K, eps) : 1.f;
  for (int64_t i = threadIdx.x; i < K / 8; i += blockDim.x) {
    const uint4 v = load_x16<COHERENT>(reinterpret_cast<const uint4*>(x) + i);
    const uint32_t h[4] = {v.x, v.y, v.z, v.w};
    float f[8];
#pragma unroll
    for (int j = 0; j < 4; ++j) f[2 * j] = f32_of_bits<T>(h[j]), f[2 * j + 1] = f32_of_bits<T>(h[j] >> 16);
    if (norm_w) {  // rms_norm_reg_kernel's expression: (x * factor) * w, rounded to T
      const uint4 wv = __ldg(reinterpret_cast<const uint4*>(norm_w) + i);
      const uint32_t wh[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        f[2 * j] = to_f32(from_f32<T>(f[2 * j] * rs * f32_of_bits<T>(wh[j])));
        f[2 * j + 1] = to_f32(from_f32<T>(f[2 * j + 1] * rs * f32_of_bits<T>(wh[j] >> 16)));
      }
    }
    if constexpr (SPREAD) {
#pragma unroll
      for (int k = 0; k < 8; ++k) f[k] *= float(1 << spread_exp(k));
    }
    const int64_t c = i / 4;
    const int u = int(i % 4) * 2;
    xs[x_unit(c, u)] = make_float4(f[0], f[1], f[2], f[3]);
    xs[x_unit(c, u + 1)] = make_float4(f[4], f[5], f[6], f[7]);
  }
  __syncthreads();
  const float* xf = reinterpret_cast<const float*>(xs);
  for (int64_t c = threadIdx.x; c < K / 32; c += blockDim.x) {
    float s = 0.f, ss = 0.f;
    for (int i = 0; i < 32; ++i) {
      const int at = (i + int(threadIdx.x)) & 31;  // rotated: no bank conflicts
      const float v = xf[c * 32 + at];
      if constexpr (SPREAD) {
        // The unit at physical place pu holds logical unit pu ^ (c % 8) (x_unit), whose codes are 4 (u % 2) ... + 3 of
        // their word: so code k = (at % 8) with bit 2 flipped for odd chunks. Scaled back to x itself, exactly.
        s += v * __uint_as_float(uint32_t(127 - spread_exp((at & 7) ^ int((c & 1) << 2))) << 23);
        ss += v;
      } else {
        s += v;
      }
    }
    sx[c] = s;
    if constexpr (SPREAD) sx[K / 32 + c] = ss;
  }
  __syncthreads();
}

// Chunk c of R rows (their words w[r], the group's scale and bias as f32) added into y[r]. sx: the chunk sums of x;
// sxq: those of the x staged in xs (sx itself, or with SPREAD the scaled sums stage_x<T, true> put after sx).
template <int R, bool SPREAD = false>
__device__ __forceinline__ void chunk_dot(const float4* xs, const float* sx, const float* sxq, int64_t c,
                                          const uint4 (&w)[R], const float (&scale)[R], const float (&bias)[R],
                                          float (&y)[R]) {
  float a[R][4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float4 x0 = xs[x_unit(c, 2 * j)], x1 = xs[x_unit(c, 2 * j + 1)];
    const float xv[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const uint32_t word = j == 0 ? w[r].x : j == 1 ? w[r].y : j == 2 ? w[r].z : w[r].w;
      float q[8];
      word_codes<SPREAD>(word, q);
      float s = q[0] * xv[0];
#pragma unroll
      for (int k = 1; k < 8; ++k) s = fmaf(q[k], xv[k], s);
      a[r][j] = s;
    }
  }
  const float s_c = sx[c], s_q = sxq[c];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const float d = ((a[r][0] + a[r][1]) + (a[r][2] + a[r][3])) - s_q;
    y[r] = fmaf(16.f * scale[r], d, fmaf(bias[r], s_c, y[r]));
  }
}

// Row r (0 or 1) of a matrix's task `tile` under the rope epilogue: the pair (n, n + half) of one head.
template <typename T>
__device__ __forceinline__ int64_t rope_row(const QgemvParams<T>& p, int64_t tile, int r) {
  const int64_t half = p.rope_half;
  return (tile / half) * 2 * half + tile % half + r * half;
}

// Where task `task`'s row r (0..R-1) lives: its words, scales and biases. With SWIGLU, task t is row t of gate (r = 0)
// and of up (r = 1); else tasks are numbered matrix after matrix (tile = task), R rows each.
template <typename T, int R>
struct Rows {
  const uint32_t* w[R];
  const T* sc[R];
  const T* bi[R];
};
template <typename T, int R, bool SWIGLU>
__device__ __forceinline__ Rows<T, R> rows_of(const QgemvParams<T>& p, int64_t task, int64_t row_words,
                                              int64_t groups) {
  Rows<T, R> rs;
  if constexpr (SWIGLU) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      rs.w[r] = p.wqs[r] + task * row_words;
      rs.sc[r] = p.scaless[r] + task * groups;
      rs.bi[r] = p.biasess[r] + task * groups;
    }
  } else {
    const QMatrix<T> mt = select_matrix(p, task);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      // A last task cut short reads row N - 1, never written; with the rope epilogue a task is a rotated pair.
      const int64_t row = R == 2 && p.rope_inv_freq ? rope_row(p, mt.tile, r) : min(mt.tile * R + r, mt.N - 1);
      rs.w[r] = mt.wq + row * row_words;
      rs.sc[r] = mt.scales + row * groups;
      rs.bi[r] = mt.biases + row * groups;
    }
  }
  return rs;
}

// Task `task`'s results (y summed over the warp, held by the lane that calls this) stored with the epilogues of
// variants 5-8: swiglu of gate and up (each rounded to T first); the residual add (the product rounded to T first,
// then added in f32 and rounded; COHERENT: the residual read from L2, as load_x16).
template <typename T, int R, bool SWIGLU, bool COHERENT = false>
__device__ __forceinline__ void store_task(const QgemvParams<T>& p, int64_t task, const float (&y)[R]) {
  if constexpr (SWIGLU) {
    const float gv = to_f32(from_f32<T>(y[0])), uv = to_f32(from_f32<T>(y[1]));
    p.y[task] = from_f32<T>(gv * (1.f / (1.f + expf(-gv))) * uv);  // elementwise.cu's SwigluF
  } else {
    const QMatrix<T> mt = select_matrix(p, task);
    if constexpr (R == 2) {
      if (p.rope_inv_freq) {  // rope_append's arithmetic on the products rounded to T, as it reads them
        const bool is_q = task < p.tile_start[1], is_v = task >= p.tile_start[2];
        const int64_t i = mt.tile % p.rope_half, n = rope_row(p, mt.tile, 0);
        const int64_t pos = p.rope_pos + (p.rope_pos_at ? int64_t(*p.rope_pos_at) : 0);
        T* out = is_q ? mt.y : mt.y + pos * mt.N;  // k's and v's row of the cache planes
        const float a = to_f32(from_f32<T>(y[0])), b = to_f32(from_f32<T>(y[1]));
        if (is_v) {
          out[n] = from_f32<T>(a);
          out[n + p.rope_half] = from_f32<T>(b);
        } else {
          rope_pair(a, b, float(pos), p.rope_inv_freq[i], 1.f, false, out[n], out[n + p.rope_half]);
        }
        return;
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t n = mt.tile * R + r;
      if (n >= mt.N) break;
      float v = y[r];
      if (p.residual) {
        const float res = COHERENT ? f32_of_bits<T>(__ldcg(reinterpret_cast<const unsigned short*>(p.residual) + n))
                                   : to_f32(p.residual[n]);
        v = res + to_f32(from_f32<T>(v));
      }
      mt.y[n] = from_f32<T>(v);
    }
  }
}

// One round of a lane: B chunks (c0, c0 + 32, ...) of each of a task's R rows, with their scales (low 16 bits) and
// biases (high) as T's bits, two to a register.
template <int R, int B>
struct Round {
  uint4 w[B][R];
  uint32_t sb[B][R];
};

// A round of a lane: the B chunks c0, c0 + 32, ... of each of the task's rows, all loads issued before any is used.
template <typename T, int GS, int R, int B>
__device__ __forceinline__ void load_round(const Rows<T, R>& rs, int64_t c0, int64_t C, Round<R, B>& rd) {
#pragma unroll
  for (int b = 0; b < B; ++b) {
    const int64_t c = c0 + 32 * b;
    if (c < C) {
      const int64_t g = c * 32 / GS;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        rd.w[b][r] = ld_stream4(rs.w[r] + c * 4);
        rd.sb[b][r] = bits16(rs.sc[r] + g) | bits16(rs.bi[r] + g) << 16;
      }
    }
  }
}

// A warp's tasks first, first + stride, ... of p, x staged in xs and sx (stage_x<T, SPREAD>), into their outputs
// (store_task). pre: the first task's rows and first round are already in rs and rd (loaded before x was staged). A
// lane adds its chunks in the order c = lane, lane + 32, ... whatever B is, so B, pre and which warp takes a task
// change no sum.
template <typename T, int GS, int R, int B, bool SWIGLU, bool SPREAD, bool COHERENT = false>
__device__ __forceinline__ void run_tasks(const QgemvParams<T>& p, int64_t tasks, int64_t first, int64_t stride,
                                          const float4* xs, const float* sx, bool pre, Rows<T, R>& rs,
                                          Round<R, B>& rd) {
  const int64_t K = p.K, C = K / 32, groups = K / GS, row_words = K / 8;
  const int lane = threadIdx.x % 32;
  for (int64_t task = first; task < tasks; task += stride) {
    const bool loaded = pre && task == first;  // rs and its first round already there
    if (!loaded) rs = rows_of<T, R, SWIGLU>(p, task, row_words, groups);
    float y[R];
#pragma unroll
    for (int r = 0; r < R; ++r) y[r] = 0.f;
    // A round: the lane's B chunks c0, c0 + 32, ... of each row, all loads issued before any is used. (Keeping the
    // next round in flight while this one is used cost registers, so warps, and measured slower: bench/NOTES.md.)
    for (int64_t c0 = lane; c0 < C; c0 += 32 * B) {
      if (!loaded || c0 != lane) load_round<T, GS, R, B>(rs, c0, C, rd);
#pragma unroll
      for (int b = 0; b < B; ++b) {
        const int64_t c = c0 + 32 * b;
        if (c >= C) break;
        float scale[R], bias[R];
#pragma unroll
        for (int r = 0; r < R; ++r) scale[r] = f32_of_bits<T>(rd.sb[b][r]), bias[r] = f32_of_bits<T>(rd.sb[b][r] >> 16);
        chunk_dot<R, SPREAD>(xs, sx, SPREAD ? sx + C : sx, c, rd.w[b], scale, bias, y);
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) y[r] = warp_sum(y[r]);
    if (lane == 0) store_task<T, R, SWIGLU, COHERENT>(p, task, y);
  }
}

// Tasks numbered matrix after matrix, R rows each, as select_matrix reads them (tile = task); returns their count.
template <typename T>
inline int64_t number_tasks(QgemvParams<T>& p, int R) {
  int64_t start = 0;
  for (int i = 0; i < 3; ++i) {
    p.tile_start[i] = start;
    if (i < p.count) start += ((i == 0 ? p.N : p.Ns[i]) + R - 1) / R;
  }
  p.tile_start[3] = start;
  return start;
}

// Whether these kernels take p: one row of x, 4 bits, whole chunks, and a residual add only on a single product; the
// rope epilogue only without the other epilogues.
template <typename T>
inline bool takes(int bits, const QgemvParams<T>& p) {
  return p.M == 1 && bits == 4 && p.K % 32 == 0 && !(p.residual && (p.count > 1 || p.swiglu)) &&
         !(p.rope_inv_freq && (p.residual || p.swiglu));
}

// Rows a task of a product that is not swiglu: two where that still gives the card ~24 warps a multiprocessor; else
// one.
template <typename T>
inline int rows_a_task(const QgemvParams<T>& p) {
  int64_t rows = 0;
  for (int i = 0; i < p.count; ++i) rows += i == 0 ? p.N : p.Ns[i];
  return rows / 2 >= int64_t(cuda_impl().sm_count()) * 24 ? 2 : 1;
}

// f(std::integral_constant<int, GS>{}) for group sizes 32, 64 and 128; false for others.
template <typename F>
inline bool by_group_size(int group_size, F&& f) {
  switch (group_size) {
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default: return false;
  }
}

// Blocks of `threads` threads with `smem` bytes of dynamic shared memory that a multiprocessor holds of kernel k, asked
// of the runtime once per kernel and size, not at every launch.
inline int blocks_per_sm(const void* k, int threads, size_t smem) {
  static std::mutex mu;
  static std::map<std::pair<const void*, size_t>, int> known;
  std::lock_guard<std::mutex> lock(mu);
  auto it = known.find({k, smem});
  if (it == known.end()) {
    int n = 0;
    LMT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, threads, smem));
    it = known.emplace(std::make_pair(k, smem), std::max(1, n)).first;
  }
  return it->second;
}

// The grid of kernel k (blocks of `warps` warps, `smem` bytes) for `tasks` tasks walked grid-stride: as many blocks as
// the card holds, but fewer for small products, since every block stages x: at least `per_warp` tasks a warp; per_warp
// 0: one task a warp where the tasks fit the card's warps at once, else two. (An H100, session 28: one a warp took o's
// product from 8.4 to 7.5 us and k's from 6.7 to 4.5; products of more tasks than warps ran slower with one, the warps
// then taking one or two.)
inline dim3 grid_for(const void* k, int warps, size_t smem, int64_t tasks, int per_warp = 2) {
  const int64_t full = int64_t(cuda_impl().sm_count()) * blocks_per_sm(k, warps * 32, smem);
  if (per_warp == 0) per_warp = tasks <= full * warps ? 1 : 2;
  const int64_t enough = (tasks + per_warp * warps - 1) / (per_warp * warps);
  return dim3(unsigned(std::max<int64_t>(1, std::min(full, enough))));
}

}  // namespace lmtune::qgemv::simt
