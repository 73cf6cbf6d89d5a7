// Device-side helpers shared by the .cu kernels: dtype dispatch, f32 <-> storage conversion,
// 16-byte packs, warp/block reductions and the checked launch. Kernels compute in f32.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/profile.h"
#include "core/error.h"

namespace lmtune {

using bf16 = __nv_bfloat16;
using f16 = __half;

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with the storage type of a float dtype.
template <typename F>
void dispatch_float(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::f32: f(TypeTag<float>{}); return;
    case DType::bf16: f(TypeTag<bf16>{}); return;
    case DType::f16: f(TypeTag<f16>{}); return;
    default: fail("[", op, "] cuda: unsupported dtype ", dtype_name(dt));
  }
}

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(f16 x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(int32_t x) { return float(x); }

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ f16 from_f32<f16>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ int32_t from_f32<int32_t>(float x) {
  return int32_t(x);
}

// Elements of T in one 16-byte access.
template <typename T>
constexpr int kVec = int(16 / sizeof(T));

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <int V, typename T>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}
template <int V, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& v) {
  *reinterpret_cast<Pack<T, V>*>(p) = v;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

__device__ __forceinline__ int64_t global_tid() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t grid_stride() { return int64_t(gridDim.x) * blockDim.x; }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result. smem holds 32 floats; the leading barrier lets callers reuse it back to back.
__device__ __forceinline__ float block_sum(float v, float* smem) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarp = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = lane < nwarp ? smem[lane] : 0.f;
  return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* smem) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarp = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = lane < nwarp ? smem[lane] : -INFINITY;
  return warp_max(v);
}

// One rotated pair (x1, x2) = (x[i], x[i + D/2]) at position pos, the arithmetic every rope shares (norm_rope.cu's
// kernels, the quantized q/k/v products' rope epilogue), rounded to T.
template <typename T>
__device__ __forceinline__ void rope_pair(float x1, float x2, float pos, float inv_freq, float mscale, bool inverse,
                                          T& o1, T& o2) {
  float sn, cs;
  sincosf(pos * inv_freq, &sn, &cs);
  cs *= mscale;
  sn = (inverse ? -sn : sn) * mscale;
  o1 = from_f32<T>(x1 * cs - x2 * sn);
  o2 = from_f32<T>(x2 * cs + x1 * sn);
}

// Online softmax state: running max m and sum s of exp(x - m). -inf max means empty.
struct MaxSum {
  float m, s;
};
__device__ __forceinline__ MaxSum maxsum_add(MaxSum a, float x) {
  if (x == -INFINITY) return a;
  if (x <= a.m) return {a.m, a.s + expf(x - a.m)};
  return {x, a.s * expf(a.m - x) + 1.f};
}
__device__ __forceinline__ MaxSum maxsum_merge(MaxSum a, MaxSum b) {
  if (b.m == -INFINITY) return a;
  if (a.m == -INFINITY) return b;
  float m = fmaxf(a.m, b.m);
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}
// Block-wide merge of per-thread states; smem holds 64 floats.
__device__ __forceinline__ MaxSum block_maxsum(MaxSum v, float* smem) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarp = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum other{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)};
    v = maxsum_merge(v, other);
  }
  __syncthreads();
  if (lane == 0) {
    smem[warp] = v.m;
    smem[32 + warp] = v.s;
  }
  __syncthreads();
  v = lane < nwarp ? MaxSum{smem[lane], smem[32 + lane]} : MaxSum{-INFINITY, 0.f};
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum other{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)};
    v = maxsum_merge(v, other);
  }
  return v;
}

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n items at `threads` per block, capped at a few waves.
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  int64_t blocks = (n + threads - 1) / threads;
  int64_t cap = int64_t(cuda_impl().sm_count()) * 16;
  return unsigned(std::max<int64_t>(0, std::min(blocks, cap)));
}

// Programmatic dependent launch (sm_90+). A kernel launched with it may start while the kernel
// before it in the stream still runs, once every block of that one has called pdl_trigger (or
// ended); pdl_wait then returns when that kernel has finished and its writes are visible. Every
// kernel calls pdl_enter (both) before it touches memory, so each one may be launched this way; a
// kernel may do work that reads only constant data (weights) between the two, as the quantized
// products do. Both are no-ops in a kernel launched without it.
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_enter() {
  pdl_trigger();
  pdl_wait();
}

// Launches kernel k on the backend's stream and checks the launch; an empty grid is a no-op.
// While a decode step is recorded (CudaBackend::pdl), with programmatic dependent launch.
template <typename... KArgs, typename... Args>
void launch(const char* name, void (*k)(KArgs...), dim3 grid, dim3 block, size_t smem, Args&&... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  cuda_profile::Scope timed(name);
  if (cuda_impl().pdl()) {
    cudaLaunchConfig_t config{};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = cuda_impl().stream();
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    config.attrs = &attr;
    config.numAttrs = 1;
    LMT_CUDA_CHECK(cudaLaunchKernelEx(&config, k, KArgs(std::forward<Args>(args))...));
  } else {
    k<<<grid, block, smem, cuda_impl().stream()>>>(std::forward<Args>(args)...);
  }
  LMT_CUDA_LAUNCH_CHECK(name);
}

}  // namespace lmtune
