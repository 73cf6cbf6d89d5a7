// CUDA kernel for MLX's affine quantization (the KV cache's --kv-bits quantizes each new key and
// value row on the device): the algorithm of quant/affine.cpp, bit for bit, one thread per group.
#include "backend/cuda/cuda_common.cuh"

namespace lmtune {

namespace {

// from_f32 with MLX's NaNs (bf16 0x7fc0, f16 sign | 0x7d00), as quant/ and the CPU kernel store them.
template <typename T>
__device__ __forceinline__ T store_mlx(float x) {
  return from_f32<T>(x);
}
template <>
__device__ __forceinline__ bf16 store_mlx<bf16>(float x) {
  return isnan(x) ? __ushort_as_bfloat16(0x7fc0) : __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ f16 store_mlx<f16>(float x) {
  return isnan(x) ? __ushort_as_half(uint16_t((signbit(x) ? 0x8000 : 0) | 0x7d00)) : __float2half_rn(x);
}

// One thread per (row, group): the group's range, then its codes appended LSB-first to the row's
// stream; a group fills whole u32 words (group_size * bits is a multiple of 32), so each thread
// writes its own words. The groups of a decode step are few (n_kv_head * head_dim / group_size
// per token and layer), so the strided reads do not matter; IEEE division and rintf (no fast
// math, no fma contraction: __fsub_rn/__fdiv_rn) give the CPU's values exactly.
template <typename T>
__global__ void quantize_affine_kernel(const T* __restrict__ w, uint32_t* __restrict__ wq, T* __restrict__ scales,
                                       T* __restrict__ biases, int64_t rows, int64_t in, int bits, int group_size) {
  pdl_enter();
  const int64_t groups = in / group_size, words_per_group = group_size * bits / 32;
  const float n_bins = float((1 << bits) - 1);
  for (int64_t e = global_tid(); e < rows * groups; e += grid_stride()) {
    const int64_t r = e / groups, g = e - r * groups;
    const T* src = w + r * in + g * group_size;
    float w_min = INFINITY, w_max = -INFINITY;
    for (int j = 0; j < group_size; ++j) {
      const float x = to_f32(src[j]);
      w_max = fmaxf(w_max, x);
      w_min = fminf(w_min, x);
    }
    const bool min_edge = fabsf(w_min) > fabsf(w_max);
    float scale = fmaxf(__fdiv_rn(__fsub_rn(w_max, w_min), n_bins), 1e-7f);
    scale = min_edge ? scale : -scale;
    const float edge = min_edge ? w_min : w_max;
    const float q0 = rintf(__fdiv_rn(edge, scale));
    float bias = 0.f;
    if (q0 != 0.f) {
      scale = __fdiv_rn(edge, q0);
      bias = edge;
    }
    uint32_t* out = wq + r * (in * bits / 32) + g * words_per_group;
    uint64_t acc = 0;
    int n = 0;
    for (int j = 0; j < group_size; ++j) {
      const float v = __fdiv_rn(__fsub_rn(to_f32(src[j]), bias), scale);
      const uint32_t code = v > 0.f ? uint32_t(fminf(rintf(fminf(v, 0x1p23f)), n_bins)) : 0u;
      acc |= uint64_t(code) << n;
      n += bits;
      if (n >= 32) {
        *out++ = uint32_t(acc);
        acc >>= 32;
        n -= 32;
      }
    }
    scales[e] = store_mlx<T>(scale);
    biases[e] = store_mlx<T>(bias);
  }
}

}  // namespace

void CudaBackend::quantize_affine(const void* w, uint32_t* wq, void* scales, void* biases, int64_t rows, int64_t in,
                                  int bits, int group_size, DType dt) {
  dispatch_float(dt, "quantize_affine", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch("quantize_affine", quantize_affine_kernel<T>, grid_for(rows * (in / group_size)), kThreads, 0,
           static_cast<const T*>(w), wq, static_cast<T*>(scales), static_cast<T*>(biases), rows, in, bits, group_size);
  });
}

}  // namespace lmtune
