// CUDA kernels for MLX's quantized layout: affine dequantization into a dense scratch matrix (the
// prefill / training GEMM then runs on it through cuBLASLt).
#include "backend/cuda/cuda_common.cuh"

namespace lmtune {

namespace {

// One thread per output element; neighbouring threads read neighbouring bits of one row.
template <typename T>
__global__ void dequantize_affine_kernel(const uint32_t* __restrict__ wq, const T* __restrict__ scales,
                                         const T* __restrict__ biases, T* __restrict__ out, int64_t rows, int64_t in,
                                         int bits, int group_size) {
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
    // Round to T after the product and after the sum, as mx.dequantize computes in T.
    // __fmul_rn / __fadd_rn: never contracted into an fma, which would skip the first rounding.
    const float t = to_f32(from_f32<T>(__fmul_rn(to_f32(scales[g]), float(q & mask))));
    out[e] = from_f32<T>(__fadd_rn(t, to_f32(biases[g])));
  }
}

}  // namespace

void CudaBackend::dequantize_affine(const uint32_t* wq, const void* scales, const void* biases, void* out, int64_t rows,
                                    int64_t in, int bits, int group_size, DType dt) {
  dispatch_float(dt, "dequantize_affine", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch("dequantize_affine", dequantize_affine_kernel<T>, grid_for(rows * in), kThreads, 0, wq,
           static_cast<const T*>(scales), static_cast<const T*>(biases), static_cast<T*>(out), rows, in, bits,
           group_size);
  });
}

}  // namespace lmtune
