// Row-wise softmax (+ backward) and cross-entropy (+ backward) on CUDA: one block per row,
// online max/sum in f32; cross-entropy never stores probabilities, backward recomputes them from lse.
#include "backend/cuda/cuda_common.cuh"

namespace lmtune {

namespace {

// Calls f(j, value as f32) for each element of row (n elements), V per access; V > 1 needs n % V == 0.
template <int V, typename T, typename F>
__device__ __forceinline__ void for_row(const T* row, int64_t n, F&& f) {
  for (int64_t i = threadIdx.x; i < n / V; i += blockDim.x) {
    Pack<T, V> p = load_pack<V>(row + i * V);
#pragma unroll
    for (int j = 0; j < V; ++j) f(i * V + j, to_f32(p.v[j]));
  }
}

// Writes out[j] = g(j, in[j]) for a row, V per access.
template <int V, typename T, typename G>
__device__ __forceinline__ void map_row(const T* in, T* out, int64_t n, G&& g) {
  for (int64_t i = threadIdx.x; i < n / V; i += blockDim.x) {
    Pack<T, V> p = load_pack<V>(in + i * V), o;
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = from_f32<T>(g(i * V + j, to_f32(p.v[j])));
    store_pack<V>(out + i * V, o);
  }
}

// y (rows, n) = softmax(x (rows, n)) along n.
template <typename T, int V>
__global__ void softmax_kernel(const T* x, T* y, int64_t rows, int64_t n) {
  pdl_enter();
  __shared__ float smem[64];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * n;
    MaxSum ms{-INFINITY, 0.f};
    for_row<V>(xr, n, [&](int64_t, float v) { ms = maxsum_add(ms, v); });
    ms = block_maxsum(ms, smem);
    float inv = 1.f / ms.s;
    map_row<V>(xr, y + r * n, n, [&](int64_t, float v) { return expf(v - ms.m) * inv; });
  }
}

// dx (rows, n) = y * (dy - sum(dy * y)); y, dy (rows, n).
template <typename T, int V>
__global__ void softmax_backward_kernel(const T* y, const T* dy, T* dx, int64_t rows, int64_t n) {
  pdl_enter();
  __shared__ float smem[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* yr = y + r * n;
    const T* dyr = dy + r * n;
    float dot = 0.f;
    for (int64_t i = threadIdx.x; i < n / V; i += blockDim.x) {
      Pack<T, V> a = load_pack<V>(yr + i * V), b = load_pack<V>(dyr + i * V);
#pragma unroll
      for (int j = 0; j < V; ++j) dot += to_f32(a.v[j]) * to_f32(b.v[j]);
    }
    dot = block_sum(dot, smem);
    for (int64_t i = threadIdx.x; i < n / V; i += blockDim.x) {
      Pack<T, V> a = load_pack<V>(yr + i * V), b = load_pack<V>(dyr + i * V), o;
#pragma unroll
      for (int j = 0; j < V; ++j) o.v[j] = from_f32<T>(to_f32(a.v[j]) * (to_f32(b.v[j]) - dot));
      store_pack<V>(dx + r * n + i * V, o);
    }
  }
}

// logits (N, nv); targets i32 (N); loss, lse f32 (N).
template <typename T, int V>
__global__ void cross_entropy_kernel(const T* logits, const int32_t* targets, float* loss, float* lse, int64_t N,
                                     int64_t nv) {
  pdl_enter();
  __shared__ float smem[64];
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const T* xr = logits + r * nv;
    MaxSum ms{-INFINITY, 0.f};
    for_row<V>(xr, nv, [&](int64_t, float v) { ms = maxsum_add(ms, v); });
    ms = block_maxsum(ms, smem);
    if (threadIdx.x == 0) {
      float l = ms.m + logf(ms.s);
      int32_t t = targets[r];
      lse[r] = l;
      loss[r] = t < 0 ? 0.f : l - to_f32(xr[t]);
    }
  }
}

// dlogits (N, nv) = (softmax(logits) - onehot(target)) * dloss; lse, dloss f32 (N).
template <typename T, int V>
__global__ void cross_entropy_backward_kernel(const T* logits, const int32_t* targets, const float* lse,
                                              const float* dloss, T* dlogits, int64_t N, int64_t nv) {
  pdl_enter();
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    int32_t t = targets[r];
    float g = t < 0 ? 0.f : dloss[r], l = lse[r];
    map_row<V>(logits + r * nv, dlogits + r * nv, nv, [&](int64_t j, float v) {
      if (t < 0) return 0.f;
      float d = expf(v - l) * g;
      return j == t ? d - g : d;
    });
  }
}

// Threads per block for rows of n: enough for ~8 elements each, 32..1024.
int row_threads(int64_t n) {
  int t = 32;
  while (t < 1024 && int64_t(t) * 8 < n) t *= 2;
  return t;
}

unsigned row_blocks(int64_t rows) { return unsigned(std::min<int64_t>(rows, int64_t(cuda_impl().sm_count()) * 32)); }

}  // namespace

void CudaBackend::softmax(const void* x, void* y, int64_t rows, int64_t n, DType dt) {
  if (n == 0) return;
  dispatch_float(dt, "softmax", [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int V = kVec<T>;
    const T* px = static_cast<const T*>(x);
    T* py = static_cast<T*>(y);
    if (n % V == 0 && aligned16(x) && aligned16(y))
      launch("softmax", softmax_kernel<T, V>, row_blocks(rows), row_threads(n / V), 0, px, py, rows, n);
    else
      launch("softmax", softmax_kernel<T, 1>, row_blocks(rows), row_threads(n), 0, px, py, rows, n);
  });
}

void CudaBackend::softmax_backward(const void* y, const void* dy, void* dx, int64_t rows, int64_t n, DType dt) {
  if (n == 0) return;
  dispatch_float(dt, "softmax_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int V = kVec<T>;
    const T* py = static_cast<const T*>(y);
    const T* pdy = static_cast<const T*>(dy);
    T* pdx = static_cast<T*>(dx);
    if (n % V == 0 && aligned16(y) && aligned16(dy) && aligned16(dx))
      launch("softmax_backward", softmax_backward_kernel<T, V>, row_blocks(rows), row_threads(n / V), 0, py, pdy, pdx,
             rows, n);
    else
      launch("softmax_backward", softmax_backward_kernel<T, 1>, row_blocks(rows), row_threads(n), 0, py, pdy, pdx, rows,
             n);
  });
}

void CudaBackend::cross_entropy(const void* logits, const int32_t* targets, float* loss, float* lse, int64_t N,
                                int64_t V, DType dt) {
  if (N == 0) return;
  LMT_CHECK(V > 0, "[cross_entropy] cuda: empty vocabulary");
  dispatch_float(dt, "cross_entropy", [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int W = kVec<T>;
    const T* px = static_cast<const T*>(logits);
    if (V % W == 0 && aligned16(logits))
      launch("cross_entropy", cross_entropy_kernel<T, W>, row_blocks(N), row_threads(V / W), 0, px, targets, loss, lse,
             N, V);
    else
      launch("cross_entropy", cross_entropy_kernel<T, 1>, row_blocks(N), row_threads(V), 0, px, targets, loss, lse, N,
             V);
  });
}

void CudaBackend::cross_entropy_backward(const void* logits, const int32_t* targets, const float* lse,
                                         const float* dloss, void* dlogits, int64_t N, int64_t V, DType dt) {
  if (N == 0 || V == 0) return;
  dispatch_float(dt, "cross_entropy_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int W = kVec<T>;
    const T* px = static_cast<const T*>(logits);
    T* pd = static_cast<T*>(dlogits);
    if (V % W == 0 && aligned16(logits) && aligned16(dlogits))
      launch("cross_entropy_backward", cross_entropy_backward_kernel<T, W>, row_blocks(N), row_threads(V / W), 0, px,
             targets, lse, dloss, pd, N, V);
    else
      launch("cross_entropy_backward", cross_entropy_backward_kernel<T, 1>, row_blocks(N), row_threads(V), 0, px,
             targets, lse, dloss, pd, N, V);
  });
}

}  // namespace lmtune
