// Decoding's one-row 4-bit products on the CUDA cores (LMTUNE_CUDA_QGEMV_VARIANT=9, opt-in). Variants 5-8 run
// mma.m16n8k16 with x as one of its eight columns, and every attempt to bring them near the stream rate failed on the
// latency of a warp's chain (bench/NOTES.md, sessions 3-21). Here a warp takes R rows (R = 2; one when the rows are
// few, and gate's row with up's for swiglu) and its lanes stream 16-byte chunks of 32 codes, chunk c at lane c % 32, B
// chunks a lane in flight before any is used; the warps walk the tasks grid-stride, so every multiprocessor gets an
// even share however many rows there are. x is staged once a block into shared memory as f32, with its sum over each
// chunk.
//   A code q becomes the float 1 + q / 16 by one shift and one LOP3 (q into mantissa bits 19-22 under 1.0's
// exponent), so a chunk's dot is 32 FFMAs on exact values: a = sum (1 + q / 16) x, and the group's scale and bias fold
// in as y += 16 scale (a - sx) + bias sx, sx the chunk's sum of x. Rounding: f32 sums of exact products, as variants
// 5-8; the order differs, so the values are not theirs bit for bit. Epilogues as theirs: swiglu of gate and up (each
// rounded to T first), the residual add (the product rounded to T first, then added in f32 and rounded).
// M = 1, 4 bits and K <= 12288 only; the caller falls back to variant 7 elsewhere.
#include <algorithm>
#include <map>
#include <mutex>
#include <type_traits>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/qgemv_mma.cuh"

namespace lmtune::qgemv {

namespace {

constexpr int kSimtWarps = 8;  // warps a block
constexpr int kSimtB = 2;      // chunks a lane loads before using any
// x as f32 and its chunk sums, at most: K <= 12288. Longer rows (Mistral's down, K = 14336) would hold a
// multiprocessor to three blocks, and measured slower than variant 7 (bench/NOTES.md): they go there.
constexpr int kSimtMaxSmem = 12288 * 4 + 12288 / 32 * 4;

// Code k (0..7) of word w as 1 + q / 16.
__device__ __forceinline__ float code_f32(uint32_t w, int k) {
  const int s = 19 - 4 * k;
  const uint32_t v = s >= 0 ? w << s : w >> -s;
  return __uint_as_float(and_or(v, 0x00780000u, 0x3F800000u));
}

// x's 16-byte unit u (codes 4u .. 4u + 3) of chunk c in shared memory: units swizzled by c % 8, so the eight lanes of a
// quarter-warp, whose chunks are consecutive, read eight different bank groups.
__device__ __forceinline__ int x_unit(int64_t c, int u) { return int(c * 8 + (u ^ int(c & 7))); }

// Where task `task`'s row r (0..R-1) lives: its words, scales and biases.
template <typename T, int R>
struct SimtRows {
  const uint32_t* w[R];
  const T* sc[R];
  const T* bi[R];
};
template <typename T, int R, bool SWIGLU>
__device__ __forceinline__ SimtRows<T, R> simt_rows(const QgemvParams<T>& p, int64_t task, int64_t row_words,
                                                    int64_t groups) {
  SimtRows<T, R> rs;
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
      const int64_t row = min(mt.tile * R + r, mt.N - 1);  // a last task cut short reads row N - 1, never written
      rs.w[r] = mt.wq + row * row_words;
      rs.sc[r] = mt.scales + row * groups;
      rs.bi[r] = mt.biases + row * groups;
    }
  }
  return rs;
}

// One round of a lane: B chunks (c0, c0 + 32, ...) of each of the task's R rows, with their scales (low 16 bits) and
// biases (high) as T's bits, two to a register.
template <typename T, int R>
struct SimtRound {
  uint4 w[R][kSimtB];
  uint32_t sb[R][kSimtB];
};

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

template <typename T, int GS, int R, bool SWIGLU>
__global__ void __launch_bounds__(kSimtWarps * 32, 4) qgemv_simt_kernel(QgemvParams<T> p, int64_t tasks) {
  extern __shared__ float4 smem_simt[];
  const int64_t K = p.K, C = K / 32, groups = K / GS, row_words = K / 8;
  float4* xs = smem_simt;                                   // K / 4 units
  float* sx = reinterpret_cast<float*>(smem_simt + K / 4);  // C chunk sums
  pdl_enter();
  // x into shared memory as f32, 8 codes a thread at a time.
  for (int64_t i = threadIdx.x; i < K / 8; i += blockDim.x) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(p.x) + i);
    const uint32_t h[4] = {v.x, v.y, v.z, v.w};
    float f[8];
#pragma unroll
    for (int j = 0; j < 4; ++j) f[2 * j] = f32_of_bits<T>(h[j]), f[2 * j + 1] = f32_of_bits<T>(h[j] >> 16);
    const int64_t c = i / 4;
    const int u = int(i % 4) * 2;
    xs[x_unit(c, u)] = make_float4(f[0], f[1], f[2], f[3]);
    xs[x_unit(c, u + 1)] = make_float4(f[4], f[5], f[6], f[7]);
  }
  __syncthreads();
  const float* xf = reinterpret_cast<const float*>(xs);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float s = 0.f;
    for (int i = 0; i < 32; ++i) s += xf[c * 32 + ((i + int(threadIdx.x)) & 31)];  // rotated: no bank conflicts
    sx[c] = s;
  }
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t task = int64_t(blockIdx.x) * kSimtWarps + warp; task < tasks; task += int64_t(gridDim.x) * kSimtWarps) {
    const SimtRows<T, R> rs = simt_rows<T, R, SWIGLU>(p, task, row_words, groups);
    float y[R];
#pragma unroll
    for (int r = 0; r < R; ++r) y[r] = 0.f;
    // A round: the lane's B chunks c0, c0 + 32, ... of each row, all loads issued before any is used. (Keeping the
    // next round in flight while this one is used cost registers, so warps, and measured slower: bench/NOTES.md.)
    for (int64_t c0 = lane; c0 < C; c0 += 32 * kSimtB) {
      SimtRound<T, R> rd;
#pragma unroll
      for (int b = 0; b < kSimtB; ++b) {
        const int64_t c = c0 + 32 * b;
        if (c < C) {
          const int64_t g = c * 32 / GS;
#pragma unroll
          for (int r = 0; r < R; ++r) {
            rd.w[r][b] = ld_stream4(rs.w[r] + c * 4);
            rd.sb[r][b] = bits16(rs.sc[r] + g) | bits16(rs.bi[r] + g) << 16;
          }
        }
      }
#pragma unroll
      for (int b = 0; b < kSimtB; ++b) {
        const int64_t c = c0 + 32 * b;
        if (c >= C) break;
        float a[R][4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float4 x0 = xs[x_unit(c, 2 * j)], x1 = xs[x_unit(c, 2 * j + 1)];
          const float xv[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
          for (int r = 0; r < R; ++r) {
            const uint4 wv = rd.w[r][b];
            const uint32_t word = j == 0 ? wv.x : j == 1 ? wv.y : j == 2 ? wv.z : wv.w;
            float s = code_f32(word, 0) * xv[0];
#pragma unroll
            for (int k = 1; k < 8; ++k) s = fmaf(code_f32(word, k), xv[k], s);
            a[r][j] = s;
          }
        }
        const float s_c = sx[c];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const float d = ((a[r][0] + a[r][1]) + (a[r][2] + a[r][3])) - s_c;
          const float scale = f32_of_bits<T>(rd.sb[r][b]), bias = f32_of_bits<T>(rd.sb[r][b] >> 16);
          y[r] = fmaf(16.f * scale, d, fmaf(bias, s_c, y[r]));
        }
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) y[r] = warp_sum(y[r]);
    if (lane != 0) continue;
    if constexpr (SWIGLU) {
      const float gv = to_f32(from_f32<T>(y[0])), uv = to_f32(from_f32<T>(y[1]));
      p.y[task] = from_f32<T>(gv * (1.f / (1.f + expf(-gv))) * uv);  // elementwise.cu's SwigluF
    } else {
      const QMatrix<T> mt = select_matrix(p, task);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t n = mt.tile * R + r;
        if (n >= mt.N) break;
        float v = y[r];
        if (p.residual) v = to_f32(p.residual[n]) + to_f32(from_f32<T>(v));
        mt.y[n] = from_f32<T>(v);
      }
    }
  }
}

template <typename T, int GS, int R, bool SWIGLU>
void launch_simt_kernel(const QgemvParams<T>& p, int64_t tasks, size_t smem) {
  auto k = qgemv_simt_kernel<T, GS, R, SWIGLU>;
  static const bool sized = [&] {  // more than 48 KB of shared memory a block needs the opt-in
    LMT_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, kSimtMaxSmem));
    return true;
  }();
  (void)sized;
  // Blocks a multiprocessor holds at this shared memory (it follows K), asked once per K, not at every launch.
  static std::mutex mu;
  static std::map<size_t, int> blocks_at;
  int blocks_per_sm = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = blocks_at.find(smem);
    if (it == blocks_at.end()) {
      LMT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, k, kSimtWarps * 32, smem));
      it = blocks_at.emplace(smem, blocks_per_sm).first;
    }
    blocks_per_sm = it->second;
  }
  // Every block stages x, so small products take fewer blocks: at least two tasks a warp.
  const int64_t full = int64_t(cuda_impl().sm_count()) * std::max(1, blocks_per_sm);
  const int64_t enough = (tasks + 2 * kSimtWarps - 1) / (2 * kSimtWarps);
  const dim3 grid(unsigned(std::max<int64_t>(1, std::min(full, enough))));
  launch("quantized_gemv_simt", k, grid, kSimtWarps * 32, smem, p, tasks);
}

template <typename T, int GS>
bool launch_simt_shape(QgemvParams<T> p) {
  const size_t smem = size_t(p.K) * 4 + size_t(p.K / 32) * 4;
  if (smem > size_t(kSimtMaxSmem)) return false;
  if (p.swiglu) {
    launch_simt_kernel<T, GS, 2, true>(p, p.N, smem);
    return true;
  }
  // Two rows a task where that still gives the card ~24 warps a multiprocessor; else one.
  int64_t rows = 0;
  for (int i = 0; i < p.count; ++i) rows += i == 0 ? p.N : p.Ns[i];
  const bool two = rows / 2 >= int64_t(cuda_impl().sm_count()) * 24;
  const int R = two ? 2 : 1;
  // Tasks numbered matrix after matrix, as select_matrix reads them (tile = task).
  int64_t start = 0;
  for (int i = 0; i < 3; ++i) {
    p.tile_start[i] = start;
    if (i < p.count) start += ((i == 0 ? p.N : p.Ns[i]) + R - 1) / R;
  }
  p.tile_start[3] = start;
  if (two)
    launch_simt_kernel<T, GS, 2, false>(p, start, smem);
  else
    launch_simt_kernel<T, GS, 1, false>(p, start, smem);
  return true;
}

}  // namespace

template <typename T>
bool launch_simt(int bits, int group_size, QgemvParams<T> p) {
  if (p.M != 1 || bits != 4 || p.K % 32 != 0 || (p.residual && (p.count > 1 || p.swiglu))) return false;
  switch (group_size) {
    case 32: return launch_simt_shape<T, 32>(p);
    case 64: return launch_simt_shape<T, 64>(p);
    case 128: return launch_simt_shape<T, 128>(p);
    default: return false;
  }
}

template bool launch_simt<bf16>(int, int, QgemvParams<bf16>);
template bool launch_simt<f16>(int, int, QgemvParams<f16>);

}  // namespace lmtune::qgemv
