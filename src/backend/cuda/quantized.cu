// CUDA kernels for MLX's quantized layout: affine dequantization into a dense scratch matrix (the
// prefill / training GEMM then runs on it through cuBLASLt). Memory-bound: each thread reads one
// run of packed words (one word for 2, 4 and 8 bits, `bits` words, 32 codes, for 3, 5 and 6),
// one scale and one bias, and writes its codes' values with vector stores, so a warp's reads and
// writes are contiguous. A run never crosses a group (groups are >= 32 codes) or a row.
#include "backend/cuda/cuda_common.cuh"

namespace lmtune {

namespace {

// Round to T after the product and after the sum, as mx.dequantize computes in T.
// __fmul_rn / __fadd_rn: never contracted into an fma, which would skip the first rounding.
template <typename T>
__device__ __forceinline__ T dequant_one(uint32_t q, float s, float b) {
  const float t = to_f32(from_f32<T>(__fmul_rn(s, float(q))));
  return from_f32<T>(__fadd_rn(t, b));
}

// The bits of a value, for packing runs into 32-bit words.
__device__ __forceinline__ uint32_t bits_of(float v) { return __float_as_uint(v); }
__device__ __forceinline__ uint32_t bits_of(bf16 v) { return __bfloat16_as_ushort(v); }
__device__ __forceinline__ uint32_t bits_of(f16 v) { return __half_as_ushort(v); }

// Collects a run's E values as 32-bit words and stores them with the widest aligned vector store
// (a run is 8, 16, 32, 64 or 128 bytes, aligned to its size when the output is 16-byte aligned).
template <typename T, int E>
struct RunStore {
  static constexpr int kPerWord = 4 / int(sizeof(T)), kWords = E / kPerWord;
  uint32_t w[kWords];
  __device__ __forceinline__ void set(int j, T v) {  // j a compile-time constant once unrolled
    if constexpr (kPerWord == 1) {
      w[j] = bits_of(v);
    } else if (j % 2 == 0) {
      w[j / 2] = bits_of(v);
    } else {
      w[j / 2] |= bits_of(v) << 16;
    }
  }
  __device__ __forceinline__ void store(T* p) const {
    if constexpr (kWords % 4 == 0) {
#pragma unroll
      for (int i = 0; i < kWords / 4; ++i)
        reinterpret_cast<uint4*>(p)[i] = make_uint4(w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]);
    } else {
      static_assert(kWords == 2, "runs of 8 bytes or a multiple of 16");
      *reinterpret_cast<uint2*>(p) = make_uint2(w[0], w[1]);
    }
  }
};

// One thread per element, any alignment (the fallback for outputs that are not 16-byte aligned).
template <typename T>
__global__ void dequantize_elementwise_kernel(const uint32_t* __restrict__ wq, const T* __restrict__ scales,
                                              const T* __restrict__ biases, T* __restrict__ out, int64_t rows,
                                              int64_t in, int bits, int group_size) {
  pdl_enter();
  const int64_t words = in * bits / 32, groups = in / group_size;
  const uint32_t mask = (1u << bits) - 1;
  for (int64_t e = global_tid(); e < rows * in; e += grid_stride()) {
    const int64_t r = e / in, i = e - r * in;
    const uint32_t* w = wq + r * words;
    const int64_t bit = i * bits, word = bit >> 5;
    const int off = int(bit & 31);
    uint32_t q = w[word] >> off;
    if (off + bits > 32) q |= w[word + 1] << (32 - off);
    const int64_t g = r * groups + i / group_size;
    out[e] = dequant_one<T>(q & mask, to_f32(scales[g]), to_f32(biases[g]));
  }
}

// BITS in {2, 4, 8}: thread e owns packed word e (its 32 / BITS codes).
template <typename T, int BITS>
__global__ void dequantize_word_kernel(const uint32_t* __restrict__ wq, const T* __restrict__ scales,
                                       const T* __restrict__ biases, T* __restrict__ out, int64_t rows, int64_t in,
                                       int group_size) {
  pdl_enter();
  constexpr int E = 32 / BITS;
  constexpr uint32_t kMask = (1u << BITS) - 1;
  const int64_t words = in / E, groups = in / group_size, total = rows * words;
  for (int64_t e = global_tid(); e < total; e += grid_stride()) {
    const int64_t r = e / words, i0 = (e - r * words) * E;
    const int64_t g = r * groups + i0 / group_size;
    const float s = to_f32(scales[g]), b = to_f32(biases[g]);
    const uint32_t w = __ldg(wq + e);
    RunStore<T, E> v;
#pragma unroll
    for (int j = 0; j < E; ++j) v.set(j, dequant_one<T>((w >> (BITS * j)) & kMask, s, b));
    v.store(out + r * in + i0);
  }
}

// Any bits (3, 5 and 6 above all): thread e owns codes 32e .. 32e + 31 of the matrix, which are
// the `bits` words bits * e .. bits * e + bits - 1 (32 codes of b bits fill b words exactly).
template <typename T>
__global__ void dequantize_run_kernel(const uint32_t* __restrict__ wq, const T* __restrict__ scales,
                                      const T* __restrict__ biases, T* __restrict__ out, int64_t rows, int64_t in,
                                      int bits, int group_size) {
  pdl_enter();
  const int64_t runs_per_row = in / 32, groups = in / group_size, total = rows * runs_per_row;
  const uint32_t mask = (1u << bits) - 1;
  for (int64_t e = global_tid(); e < total; e += grid_stride()) {
    const int64_t r = e / runs_per_row, i0 = (e - r * runs_per_row) * 32;
    const int64_t g = r * groups + i0 / group_size;
    const float s = to_f32(scales[g]), b = to_f32(biases[g]);
    const uint32_t* w = wq + e * bits;
    uint64_t buf = 0;  // bits not yet used, LSB first
    int have = 0, next = 0;
    RunStore<T, 32> v;
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      if (have < bits) {
        buf |= uint64_t(__ldg(w + next)) << have;
        ++next;
        have += 32;
      }
      v.set(j, dequant_one<T>(uint32_t(buf) & mask, s, b));
      buf >>= bits;
      have -= bits;
    }
    v.store(out + r * in + i0);
  }
}

}  // namespace

void CudaBackend::dequantize_affine(const uint32_t* wq, const void* scales, const void* biases, void* out, int64_t rows,
                                    int64_t in, int bits, int group_size, DType dt) {
  LMT_CHECK(in % 32 == 0 && group_size % 32 == 0 && bits >= 2 && bits <= 8,
            "[dequantize_affine] cuda: needs whole runs of 32 codes (in ", in, ", group ", group_size, ", bits ", bits,
            ")");
  dispatch_float(dt, "dequantize_affine", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* s = static_cast<const T*>(scales);
    const T* b = static_cast<const T*>(biases);
    T* o = static_cast<T*>(out);
    // Vector stores need the output aligned to the run's bytes (the allocator's blocks are).
    const bool aligned = aligned16(out);
    switch (aligned ? bits : 0) {
      case 2:
        return launch("dequantize_affine", dequantize_word_kernel<T, 2>, grid_for(rows * in / 16), kThreads, 0, wq, s,
                      b, o, rows, in, group_size);
      case 4:
        return launch("dequantize_affine", dequantize_word_kernel<T, 4>, grid_for(rows * in / 8), kThreads, 0, wq, s, b,
                      o, rows, in, group_size);
      case 8:
        return launch("dequantize_affine", dequantize_word_kernel<T, 8>, grid_for(rows * in / 4), kThreads, 0, wq, s, b,
                      o, rows, in, group_size);
      default: break;
    }
    // Unaligned output, or 3, 5, 6 bits: 32-code runs (whose stores are 64 or 128 bytes, so the
    // vector stores still need 16-byte alignment: fall back to element stores when unaligned).
    if (aligned) {
      launch("dequantize_affine", dequantize_run_kernel<T>, grid_for(rows * in / 32), kThreads, 0, wq, s, b, o, rows,
             in, bits, group_size);
    } else {
      launch("dequantize_affine", dequantize_elementwise_kernel<T>, grid_for(rows * in), kThreads, 0, wq, s, b, o, rows,
             in, bits, group_size);
    }
  });
}

}  // namespace lmtune
