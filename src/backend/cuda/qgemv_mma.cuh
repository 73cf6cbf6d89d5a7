// The pieces of the fused quantized GEMV that its kernels share (qgemv.cu: batches loaded into
// registers; qgemv_async.cu: weights staged through shared memory by cp.async): the parameter
// block, the tensor-core tile arithmetic and the loads. See qgemv.cu for the method.
#pragma once
#include <type_traits>

#include "backend/cuda/cuda_common.cuh"

namespace lmtune::qgemv {

constexpr int kQWarps = 8;  // warps a block

template <typename T>
struct QgemvParams {
  const T* x;          // (M, K)
  const uint32_t* wq;  // (N, K * bits / 32)
  const T* scales;     // (N, K / group_size)
  const T* biases;     // (N, K / group_size)
  T* y;                // (M, N)
  int64_t N, K;
  int M;
  int S;  // warps sharing a row tile, each over its own stretch of K: 1, 2, 4 or 8
  // Up to three matrices that share x (decoding's q, k and v; gate and up) in one launch: their
  // 16-row tiles are numbered one after another, matrix i owning tiles [tile_start[i],
  // tile_start[i + 1]); the fields above hold matrix 0 (and stay what a single product uses).
  int count;
  const uint32_t* wqs[3];
  const T* scaless[3];
  const T* biasess[3];
  T* ys[3];
  int64_t Ns[3];
  int64_t tile_start[4];
  // Epilogues of the lean kernel (qgemv_lean.cu; decoding's fused steps). residual (M, N) or null:
  // y = residual + y, each rounded to T as ops::add after the plain product would. swiglu: matrix
  // 0 is gate and matrix 1 (wqs[1], ...) is up, both N rows; a tile holds 8 rows of each and y
  // (M, N) = swiglu(gate, up), each product rounded to T first as ops::swiglu after the products.
  const T* residual;
  bool swiglu;
  // Decoding's rms_norm fused into the staging of x (the CUDA-core kernels only, qgemv_simt.cuh's stage_x): x is the
  // norm's input and the products take rms_norm(x) * norm_w rounded to T, the values CudaBackend::rms_norm gives; null:
  // x as it is.
  const T* norm_w;
  float norm_eps;
  // Decoding's rope and KV-cache append in the q/k/v launch's epilogue (the CUDA-core kernels only, two rows a task:
  // qgemv_simt.cuh's rope_rows and store_task): with rope_inv_freq, task i of a matrix is the rotated pair (n, n +
  // rope_half) of one head, n = (i / rope_half) * 2 rope_half + i % rope_half; q's pair is rotated into ys[0], k's
  // rotated and v's as they are into ys[1] and ys[2] at row rope_pos (+ *rope_pos_at) of Ns[i] values (Backend::
  // RopeAppendArgs). Null: no rope.
  const float* rope_inv_freq;
  int64_t rope_pos;
  const int32_t* rope_pos_at;
  int64_t rope_half;
};

// One product's parameters: y (M, N) = x (M, K) dequant(wq, scales, biases)^T in 16-row tiles
// (count 1; matrix 0 only). Callers add what their launch needs (residual, swiglu).
template <typename T>
QgemvParams<T> single_params(const void* x, const uint32_t* wq, const void* scales, const void* biases, void* y,
                             int64_t M, int64_t N, int64_t K) {
  QgemvParams<T> p{};
  p.x = static_cast<const T*>(x);
  p.wq = wq;
  p.scales = static_cast<const T*>(scales);
  p.biases = static_cast<const T*>(biases);
  p.y = static_cast<T*>(y);
  p.N = N, p.K = K, p.M = int(M), p.S = 1, p.count = 1;
  p.tile_start[1] = p.tile_start[2] = p.tile_start[3] = (N + 15) / 16;
  return p;
}

// Matrices 0 .. count - 1 of a launch over up to three (p.wqs, scaless, biasess, ys, Ns; the slots past count repeat
// the last), their 16-row tiles numbered one after another, and matrix 0 in the single product's fields.
template <typename T>
void set_matrices(QgemvParams<T>& p, const uint32_t* const* wqs, const void* const* scales, const void* const* biases,
                  void* const* ys, const int64_t* ns, int count) {
  p.count = count;
  p.tile_start[0] = 0;
  for (int i = 0; i < 3; ++i) {
    const int j = i < count ? i : count - 1;
    p.wqs[i] = wqs[j];
    p.scaless[i] = static_cast<const T*>(scales[j]);
    p.biasess[i] = static_cast<const T*>(biases[j]);
    p.ys[i] = static_cast<T*>(ys[j]);
    p.Ns[i] = ns[j];
    p.tile_start[i + 1] = p.tile_start[i] + (i < count ? (ns[i] + 15) / 16 : 0);
  }
  p.wq = p.wqs[0], p.scales = p.scaless[0], p.biases = p.biasess[0], p.y = p.ys[0], p.N = p.Ns[0];
}

// Whether the rope epilogue takes q, k and v of ns[0..2] rows: whole heads of an even head_dim, k and v alike, a row
// of the cache at or after 0 (Backend::RopeAppendArgs).
inline bool rope_fits(const Backend::RopeAppendArgs& r, const int64_t* ns) {
  const int64_t D = r.head_dim;
  return D >= 2 && D % 2 == 0 && ns[0] >= D && ns[0] % D == 0 && ns[1] >= D && ns[1] == ns[2] && ns[1] % D == 0 &&
         r.pos >= 0;
}

// The rope epilogue's fields of a q/k/v launch (set_matrices first): k's and v's results go to the cache planes, at
// row pos (+ *pos_at, added in the kernel).
template <typename T>
void set_rope(QgemvParams<T>& p, const Backend::RopeAppendArgs& r) {
  p.ys[1] = static_cast<T*>(r.k_cache);
  p.ys[2] = static_cast<T*>(r.v_cache);
  p.rope_inv_freq = r.inv_freq;
  p.rope_pos = r.pos;
  p.rope_pos_at = r.pos_at;
  p.rope_half = r.head_dim / 2;
}

// The matrix of global tile `tile` (< p.tile_start[p.count]) as plain values, tile made local:
// selects between constant-bank parameters (modifying p itself would copy the whole struct into
// local memory). Single products have count 1 and tile_start {0, tiles, tiles, tiles}.
template <typename T>
struct QMatrix {
  const uint32_t* wq;
  const T* scales;
  const T* biases;
  T* y;
  int64_t N, tile;
};
template <typename T>
__device__ __forceinline__ QMatrix<T> select_matrix(const QgemvParams<T>& p, int64_t tile) {
  if (tile < p.tile_start[1]) return {p.wq, p.scales, p.biases, p.y, p.N, tile};
  const bool two = tile >= p.tile_start[2];
  return {two ? p.wqs[2] : p.wqs[1],         two ? p.scaless[2] : p.scaless[1],
          two ? p.biasess[2] : p.biasess[1], two ? p.ys[2] : p.ys[1],
          two ? p.Ns[2] : p.Ns[1],           tile - (two ? p.tile_start[2] : p.tile_start[1])};
}

// ---------------------------------------------------------------------------------------------
// Tensor-core path: bf16/f16, bits 4 and 8 (any group), bits 2 (groups 64, 128), 16-byte
// aligned x and wq. A warp owns a tile of 16 rows of W and runs mma.m16n8k16 with A = codes
// (rows of W), B = x (its M <= 8 rows are the n = 8 columns; columns >= M are zeros) and f32
// accumulators. An mma sums over its 16 k-slots, so all 16 must lie in one group (each group has
// its own scale): lane (g, t) = (lane / 4, lane % 4) holds quarter t of each group (GS / 4
// consecutive codes) of rows g and g + 8, and every mma takes 4 codes from each quarter. The
// k-slots of an mma are any 16 distinct k of the group as long as A and B agree: lane (g, t)
// gives A's slots {2t, 2t + 1} (and {2t + 8, 2t + 9}) the code pair P (and P + 1) of its quarter,
// where pair P of a word is its codes (j, j + V / 2) (j = P % (V / 2)): a single mask of the word
// (shifted by j codes) puts them in the low and high 16 bits. B's lane (g, t) gives the same
// slots x[g][k] at those k, paired from two 16-bit halves by one byte permute.
//   A code becomes a 16-bit float by or-ing it into the mantissa of a magic constant: bf16 0x4300
// is 128 (mantissa step 1), so 0x4300 | q = 128 + q exactly for q < 128; f16 0x6400 = 1024 + q.
// f16 subtracts 1024 (exact); bf16 keeps the offset and takes it back per group with sum(x)
// (bias - 128 * scale), which a second mma with A = ones gives in the accumulator layout anyway.
// bf16 has 8 significant bits, so an 8-bit code splits into nibbles: lo as 128 + lo and hi as
// 0x4500 | hi = 2048 + 16 hi (mantissa step 16), two mmas into one accumulator, offset 2176.
// Products of 16-bit floats are exact in f32, so the only rounding is the f32 accumulation.
//   Each group then folds into the lane's four outputs: acc += scale * C_group + bias' * C_ones.
// A lane streams 32 bytes of each of its two rows a batch (U groups), past L1; x (a few KB, every
// warp reads it) is read through L1. Short matrices split K over S warps of a block whose
// partial sums meet in shared memory.

template <int BITS, int GS>
struct MmaShape {
  static constexpr int V = 32 / BITS;   // codes a word
  static constexpr int H = V / 2;       // pairs a word: codes (j, j + H)
  static constexpr int QV = GS / 4;     // codes of a group a lane holds (a quarter)
  static constexpr int QW = QV / V;     // their words
  static constexpr int XW = QV / 2;     // their x values as u32 pairs
  static constexpr int MMAS = GS / 16;  // k16 steps a group
  // Groups a batch, by kernel variant (RuntimeConfig::cuda_qgemv_variant): 0, 8 words of each
  // row, loaded and then used; 1, software-pipelined, 4 words whose loads are in flight while the
  // batch before is used (two of 8 spill); 2, 16 words loaded and then used.
  static constexpr int U = QW >= 8 ? 1 : 8 / QW;
  static constexpr int UP = QW >= 4 ? 1 : 4 / QW;
  static constexpr int UW = QW >= 16 ? 1 : 16 / QW;
  template <int VAR>
  static constexpr int batch() {
    return VAR == 1 ? UP : VAR == 2 ? UW : U;
  }
  // Blocks a multiprocessor: 4 (64 registers) where that spills nothing (-Xptxas -v), else 3
  // (80). A grouped launch's matrix selection needs more registers: always 3 (at 64 the 4-bit
  // kernels spilled).
  static constexpr int kMinBlocks = (BITS == 4 && GS <= 64) || (BITS == 8 && GS == 32) ? 4 : 3;
  static constexpr int kMinBlocksGroup = 3;
  static constexpr int kMinBlocksVariant = 3;  // variants 1 and 2: 80 registers
  // Where variants 1 and 2 fit 80 registers without spilling (-Xptxas -v): not for 2 bits or
  // groups of 128 (16 registers of x a group); elsewhere variant 0 runs.
  static constexpr bool kVariants = BITS != 2 && GS <= 64;
  static_assert(QW >= 1 && QV % V == 0 && XW % 4 == 0 && H % 2 == 0, "unsupported bits / group size");
};

__device__ __forceinline__ uint32_t ld_stream(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}
__device__ __forceinline__ uint2 ld_stream2(const uint32_t* p) {
  uint2 v;
  asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}
__device__ __forceinline__ uint4 ld_stream4(const uint32_t* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// NW words at p (aligned to min(4 NW, 16) bytes), streamed.
template <int NW>
__device__ __forceinline__ void load_words(const uint32_t* p, uint32_t (&w)[NW]) {
  if constexpr (NW == 1) {
    w[0] = ld_stream(p);
  } else if constexpr (NW == 2) {
    const uint2 v = ld_stream2(p);
    w[0] = v.x, w[1] = v.y;
  } else {
    static_assert(NW % 4 == 0, "quarter of 1, 2 or a multiple of 4 words");
#pragma unroll
    for (int i = 0; i < NW / 4; ++i) {
      const uint4 v = ld_stream4(p + 4 * i);
      w[4 * i] = v.x, w[4 * i + 1] = v.y, w[4 * i + 2] = v.z, w[4 * i + 3] = v.w;
    }
  }
}

// 2 * NX x values at p (16-byte aligned) as NX u32 pairs, through L1 (every warp reads x).
template <typename T, int NX>
__device__ __forceinline__ void load_x(const T* p, uint32_t (&xw)[NX]) {
  const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
  for (int i = 0; i < NX / 4; ++i) {
    const uint4 v = __ldg(q + i);
    xw[4 * i] = v.x, xw[4 * i + 1] = v.y, xw[4 * i + 2] = v.z, xw[4 * i + 3] = v.w;
  }
}

template <typename T>
struct Magic;
template <>
struct Magic<bf16> {
  static constexpr uint32_t kCode = 0x43004300u;    // 128 + q, q < 128
  static constexpr uint32_t kCodeHi = 0x45004500u;  // 2048 + 16 q, q < 16 (an 8-bit code's high nibble)
  static constexpr uint32_t kOne = 0x3F803F80u;
};
template <>
struct Magic<f16> {
  static constexpr uint32_t kCode = 0x64006400u;  // 1024 + q, q < 1024
  static constexpr uint32_t kOne = 0x3C003C00u;
};

// (a & mask) | magic as one LOP3: written as C, the compiler spends two (one immediate each).
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t mask, uint32_t magic) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(mask), "r"(magic));
  return d;
}

__device__ __forceinline__ uint32_t sub_f16x2(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

// Codes (j, j + V / 2) of word w as a pair of T (j in the low half): q exactly for f16; 128 + q
// for bf16 (the low nibbles, 128 + lo, for 8 bits). j is a constant once loops are unrolled.
template <typename T, int BITS>
__device__ __forceinline__ uint32_t code_pair(uint32_t w, int j) {
  uint32_t v;
  if constexpr (BITS == 8 && std::is_same_v<T, f16>) {
    v = __byte_perm(w, 0x64u, j == 0 ? 0x4240 : 0x4341);  // bytes j, j + 2 under 0x64
  } else if constexpr (BITS == 8) {
    v = and_or(w >> (8 * j), 0x000f000fu, Magic<T>::kCode);
  } else {
    v = and_or(w >> (BITS * j), ((1u << BITS) - 1) * 0x00010001u, Magic<T>::kCode);
  }
  if constexpr (std::is_same_v<T, f16>) v = sub_f16x2(v, Magic<f16>::kCode);
  return v;
}
// bf16, 8 bits: the high nibbles of bytes j and j + 2 as 2048 + 16 hi.
__device__ __forceinline__ uint32_t code_pair_hi8(uint32_t w, int j) {
  return and_or(w >> (8 * j + 4), 0x000f000fu, Magic<bf16>::kCodeHi);
}

// x values (lo, lo + H) of a quarter, lo = pair P's first code, as B's 16-bit pair.
template <int BITS, int NX>
__device__ __forceinline__ uint32_t x_pair(const uint32_t (&xw)[NX], int P) {
  constexpr int V = 32 / BITS, H = V / 2;
  const int j = P % H, lo = (P / H) * V + j, hi = lo + H;
  return __byte_perm(xw[lo / 2], xw[hi / 2], (j & 1) ? 0x7632 : 0x5410);
}

// c (16 x 8, f32) += a (16 x 16) b (16 x 8), m16n8k16 fragments.
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
  if constexpr (std::is_same_v<T, bf16>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

// The S pieces of a tile (warps tile_in_block * S .. + S - 1, each over its stretch of K) meet:
// piece 0's acc becomes the sum, in piece order. Every thread of the block calls it (a barrier
// when S > 1).
__device__ __forceinline__ void meet_pieces(float (&part)[kQWarps][4][32], float (&acc)[4], int warp, int lane, int S,
                                            int piece) {
  if (S <= 1) return;
#pragma unroll
  for (int c = 0; c < 4; ++c) part[warp][c][lane] = acc[c];
  __syncthreads();
  if (piece == 0)
    for (int i = 1; i < S; ++i)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[c] += part[warp + i][c][lane];
}

// Lane (g, t)'s four outputs (rows n0 + g and n0 + g + 8, x rows 2t and 2t + 1) into mt.y,
// those past N or M left out.
template <typename T>
__device__ __forceinline__ void store_tile(const QMatrix<T>& mt, const float (&acc)[4], int64_t n0, int M, int g,
                                           int t) {
  const int m0 = 2 * t, m1 = 2 * t + 1;
  const int64_t N = mt.N, na = n0 + g, nb = n0 + g + 8;
  if (m0 < M) {
    if (na < N) mt.y[m0 * N + na] = from_f32<T>(acc[0]);
    if (nb < N) mt.y[m0 * N + nb] = from_f32<T>(acc[2]);
  }
  if (m1 < M) {
    if (na < N) mt.y[m1 * N + na] = from_f32<T>(acc[1]);
    if (nb < N) mt.y[m1 * N + nb] = from_f32<T>(acc[3]);
  }
}

// The shared-memory kernel (qgemv_async.cu) for these bits, group and dtype, with chunks of 64 or
// 128 bytes a row, when it takes them: false leaves the product to the caller.
template <typename T>
bool launch_async(int bits, int group_size, int chunk_row_bytes, QgemvParams<T> p);
// The lean shared-memory kernel (qgemv_lean.cu) likewise; presum: variant 6 (x's group sums once
// a block) where its shared memory allows. The only kernel with p.residual and p.swiglu.
template <typename T>
bool launch_lean(int bits, int group_size, QgemvParams<T> p, bool presum);
// The bulk-tensor-copy kernel (qgemv_tma.cu, variant 7): the lean kernel's tiles, pieces and sums
// with the weights brought by the tensor memory accelerator; false where its copies cannot take
// the shapes or addresses (the caller falls back to the lean kernel).
template <typename T>
bool launch_tma(int bits, int group_size, QgemvParams<T> p);
// The ring kernel (qgemv_ring.cu, variant 8): a producer warp streams each block's tiles through
// a ring of bulk copies while 8 warps compute; false where its copies cannot take the shapes or
// addresses (the caller falls back to variant 7's kernel, then the lean one).
template <typename T>
bool launch_ring(int bits, int group_size, QgemvParams<T> p);
// The CUDA-core kernel (qgemv_simt.cu, variant 9): M = 1, 4 bits and K <= 12288, rows streamed by warps
// grid-stride; false elsewhere (the caller falls back to variant 7's kernel, then the lean one).
template <typename T>
bool launch_simt(int bits, int group_size, QgemvParams<T> p);
// Variant 9's single products streamed without staging x (qgemv_stream.cu; RuntimeConfig::cuda_qgemv_stream): M = 1,
// 4 bits, one matrix with or without the residual add; false elsewhere or when the switch is off (the caller goes on to
// variant 9's own kernel).
template <typename T>
bool launch_stream(int bits, int group_size, const QgemvParams<T>& p);
// Variant 9's normed launches (q/k/v with or without the rope epilogue, gate/up with swiglu) streamed the same way, the
// norm's factor taken out of the sums (qgemv_stream.cu; RuntimeConfig::cuda_qgemv_stream_normed); false elsewhere or
// when the switch is off.
template <typename T>
bool launch_stream_normed(int bits, int group_size, QgemvParams<T> p);
// Variant 9's lanes fed through a ring of cp.async stages a warp (qgemv_simt_ring.cu, variant 10): M = 1, 4 bits,
// K <= 28672, groups a row a multiple of 8 and 16-byte aligned scales and biases; false elsewhere (the caller falls
// back to variant 9's kernel, then 7's).
template <typename T>
bool launch_simt_ring(int bits, int group_size, QgemvParams<T> p);
// Backend::quantized_decode_chain's one launch (qgemv_chain.cu): 4 bits, bf16 or f16, rows of at most 16384 in whole
// chunks and groups (takes_decode_chain); bar: two zeroed words of device memory the launch leaves zeroed. False
// elsewhere.
bool takes_decode_chain(const Backend::QuantizedDecodeChain& a);
bool launch_decode_chain(const Backend::QuantizedDecodeChain& a, unsigned* bar);

}  // namespace lmtune::qgemv
