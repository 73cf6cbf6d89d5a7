// Tensor-core building blocks of the fused attention kernels (sm_80+ mma.sync, ldmatrix,
// cp.async) and the swizzled shared-memory tile layout they share. bf16 and f16 only.
#pragma once
#include "backend/cuda/cuda_common.cuh"

namespace lmtune {
namespace flash {

// c (16x8 f32) += a (16x16, row) * b (16x8, col); a in 4 and b in 2 registers of 2 halves.
template <typename T>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, bf16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// 16 bytes global -> shared, bypassing L1; zero-filled when !valid (src must still be mapped).
__device__ __forceinline__ void cp_async16(uint32_t saddr, const void* gmem, bool valid) {
  int src_size = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(saddr), "l"(gmem), "r"(src_size));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Two floats as one register of two halves, the lower column in the low half.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, bf16>) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

// Tiles are (rows, D) halves in shared memory with 16-byte chunk c of row r stored at chunk
// c ^ (r % 8), so that the 8 rows one ldmatrix reads hit 8 different bank groups.
//
// Copies rows [row0, row0 + ROWS) of a (nrows, D) matrix with row stride ld into a tile; rows
// past nrows read as zeros. Each thread keeps one chunk column, so its shared and global
// offsets are computed once (rows per step are a multiple of 8: the swizzle is invariant).
template <int ROWS, int D, int THREADS>
struct TileLoader {
  static constexpr int kChunks = D / 8, kRowStep = THREADS / kChunks, kIters = ROWS / kRowStep;
  static_assert(THREADS % kChunks == 0 && ROWS % kRowStep == 0 && kRowStep % 8 == 0, "tile shape");
  int r0, col;
  uint32_t soff;  // bytes
  __device__ __forceinline__ TileLoader() {
    int c = int(threadIdx.x) % kChunks;
    r0 = int(threadIdx.x) / kChunks;
    col = c * 8;
    soff = uint32_t(r0 * D + ((c ^ (r0 & 7)) << 3)) * 2u;
  }
  template <typename T>
  __device__ __forceinline__ void load(uint32_t tile, const T* g, int64_t ld, int64_t row0, int64_t nrows) const {
    const T* src = g + (row0 + r0) * ld + col;
    int64_t left = nrows - row0 - r0;
#pragma unroll
    for (int k = 0; k < kIters; ++k) {
      bool valid = k * kRowStep < left;
      cp_async16(tile + soff + uint32_t(k * kRowStep * D * 2), valid ? src + k * kRowStep * ld : g, valid);
    }
  }
};

// Per-lane ldmatrix addresses for the three ways the kernels read a 16x16 block of a tile
// whose first row is a multiple of 16, at 16-column step kk:
//   a: rows r0 + lane % 16, chunks 2kk + lane / 16 (A operand, row-major);
//   b: rows r0 + (lane / 16) * 8 + lane % 8, chunks 2kk + (lane / 8) % 2 (B operand of X^T);
//   t: rows r0 + lane % 8 + ((lane / 8) % 2) * 8, chunks 2kk + lane / 16 (B operand, .trans).
// Row r0 + i has i % 8 == lane % 8 in each, so the swizzle is an XOR with a lane constant.
template <int D>
struct LaneAddr {
  static constexpr uint32_t kRowBytes = D * 2;
  uint32_t row_a, row_b, row_t, x_a, x_b;
  __device__ __forceinline__ explicit LaneAddr(int lane) {
    uint32_t l = uint32_t(lane), lx = l & 7u;
    x_a = (l >> 4) ^ lx;
    x_b = ((l >> 3) & 1u) ^ lx;
    row_a = (l & 15u) * kRowBytes;
    row_b = (((l >> 4) << 3) + lx) * kRowBytes;
    row_t = (lx + (((l >> 3) & 1u) << 3)) * kRowBytes;
  }
  __device__ __forceinline__ uint32_t a(uint32_t tile, int r0, int kk) const {
    return tile + uint32_t(r0) * kRowBytes + row_a + ((uint32_t(2 * kk) ^ x_a) << 4);
  }
  __device__ __forceinline__ uint32_t b(uint32_t tile, int r0, int kk) const {
    return tile + uint32_t(r0) * kRowBytes + row_b + ((uint32_t(2 * kk) ^ x_b) << 4);
  }
  __device__ __forceinline__ uint32_t t(uint32_t tile, int r0, int kk) const {
    return tile + uint32_t(r0) * kRowBytes + row_t + ((uint32_t(2 * kk) ^ x_a) << 4);
  }
};

// 2^x with one MUFU instruction (flush-to-zero; 2^-inf = 0), as flash attention uses it.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ bool visible(bool causal, int64_t window, int64_t qpos, int64_t s) {
  if (!causal) return true;
  return s <= qpos && (window <= 0 || qpos - s < window);
}

// Packed rows (AttentionArgs::segment): seg holds a row's segment ids, non-decreasing. The first
// index of i's segment, and one past its last (n = the row's length); binary searches.
__device__ __forceinline__ int64_t segment_begin(const int32_t* seg, int64_t i) {
  const int32_t id = seg[i];
  int64_t lo = 0, hi = i;
  while (lo < hi) {
    int64_t mid = (lo + hi) / 2;
    if (seg[mid] < id)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}
__device__ __forceinline__ int64_t segment_end(const int32_t* seg, int64_t i, int64_t n) {
  const int32_t id = seg[i];
  int64_t lo = i + 1, hi = n;
  while (lo < hi) {
    int64_t mid = (lo + hi) / 2;
    if (seg[mid] <= id)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}
// Whether query row q (of a row of n) may not see key s for segment reasons: q past the row (its
// result is dropped) or another segment. Only with segb set.
__device__ __forceinline__ bool other_segment(const int32_t* segb, int64_t q, int64_t s, int64_t n) {
  return segb && (q >= n || segb[s] != segb[q]);
}

}  // namespace flash
}  // namespace lmtune
