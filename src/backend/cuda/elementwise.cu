// Elementwise CUDA kernels: fill, cast, binary (with a repeating b), axpby, unary and its
// backward, swiglu. f32 compute on f32/bf16/f16 storage, 16-byte accesses where aligned.
#include "backend/cuda/cuda_common.cuh"

namespace lmtune {

namespace {

template <typename T, int N>
struct Ptrs {
  T* p[N];
};

// y_k[i] = f(x_0[i], ..., x_{NIN-1}[i]) for NOUT outputs, V elements per access. Outputs may
// alias inputs: each element is read and written by the same thread.
template <typename T, int V, int NIN, int NOUT, typename F>
__global__ void map_kernel(F f, Ptrs<const T, NIN> in, Ptrs<T, NOUT> out, int64_t n) {
  pdl_enter();
  int64_t nv = n / V;
  for (int64_t i = global_tid(); i < nv; i += grid_stride()) {
    Pack<T, V> x[NIN], y[NOUT];
#pragma unroll
    for (int k = 0; k < NIN; ++k) x[k] = load_pack<V>(in.p[k] + i * V);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      float xs[NIN], ys[NOUT];
#pragma unroll
      for (int k = 0; k < NIN; ++k) xs[k] = to_f32(x[k].v[j]);
      f(xs, ys);
#pragma unroll
      for (int k = 0; k < NOUT; ++k) y[k].v[j] = from_f32<T>(ys[k]);
    }
#pragma unroll
    for (int k = 0; k < NOUT; ++k) store_pack<V>(out.p[k] + i * V, y[k]);
  }
  for (int64_t i = nv * V + global_tid(); i < n; i += grid_stride()) {
    float xs[NIN], ys[NOUT];
#pragma unroll
    for (int k = 0; k < NIN; ++k) xs[k] = to_f32(in.p[k][i]);
    f(xs, ys);
#pragma unroll
    for (int k = 0; k < NOUT; ++k) out.p[k][i] = from_f32<T>(ys[k]);
  }
}

template <int NIN, int NOUT, typename F>
void run_map(const char* op, DType dt, F f, const void* const (&in)[NIN], void* const (&out)[NOUT], int64_t n) {
  dispatch_float(dt, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    Ptrs<const T, NIN> ip;
    Ptrs<T, NOUT> op_;
    bool vec = true;
    for (int k = 0; k < NIN; ++k) {
      ip.p[k] = static_cast<const T*>(in[k]);
      vec = vec && aligned16(in[k]);
    }
    for (int k = 0; k < NOUT; ++k) {
      op_.p[k] = static_cast<T*>(out[k]);
      vec = vec && aligned16(out[k]);
    }
    constexpr int V = kVec<T>;
    if (vec)
      launch(op, map_kernel<T, V, NIN, NOUT, F>, grid_for((n + V - 1) / V), kThreads, 0, f, ip, op_, n);
    else
      launch(op, map_kernel<T, 1, NIN, NOUT, F>, grid_for(n), kThreads, 0, f, ip, op_, n);
  });
}

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

constexpr float kSqrt2OverPi = 0.7978845608028654f;

__device__ __forceinline__ float gelu_tanh(float x) {
  return 0.5f * x * (1.f + tanhf(kSqrt2OverPi * (x + 0.044715f * x * x * x)));
}
__device__ __forceinline__ float gelu_tanh_grad(float x) {
  float t = tanhf(kSqrt2OverPi * (x + 0.044715f * x * x * x));
  return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * kSqrt2OverPi * (1.f + 3.f * 0.044715f * x * x);
}

struct UnaryF {
  UnaryOp op;
  float param;
  __device__ void operator()(const float (&x)[1], float (&y)[1]) const {
    float v = x[0];
    switch (op) {
      case UnaryOp::silu: y[0] = v * sigmoid(v); break;
      case UnaryOp::gelu_tanh: y[0] = gelu_tanh(v); break;
      case UnaryOp::exp: y[0] = expf(v); break;
      case UnaryOp::neg: y[0] = -v; break;
      case UnaryOp::square: y[0] = v * v; break;
      case UnaryOp::sqrt: y[0] = sqrtf(v); break;
      case UnaryOp::rsqrt: y[0] = 1.f / sqrtf(v); break;
      case UnaryOp::scale: y[0] = v * param; break;
      case UnaryOp::add_scalar: y[0] = v + param; break;
      case UnaryOp::tanh: y[0] = tanhf(v); break;
    }
  }
};

struct UnaryBackwardF {  // inputs x, dy
  UnaryOp op;
  __device__ void operator()(const float (&x)[2], float (&y)[1]) const {
    float v = x[0];
    if (op == UnaryOp::silu) {
      float s = sigmoid(v);
      y[0] = x[1] * s * (1.f + v * (1.f - s));
    } else if (op == UnaryOp::tanh) {
      const float t = tanhf(v);
      y[0] = x[1] * (1.f - t * t);
    } else {
      y[0] = x[1] * gelu_tanh_grad(v);
    }
  }
};

struct AxpbyF {
  float alpha, beta;
  __device__ void operator()(const float (&x)[2], float (&y)[1]) const { y[0] = alpha * x[0] + beta * x[1]; }
};

struct SwigluF {  // inputs gate, up
  __device__ void operator()(const float (&x)[2], float (&y)[1]) const { y[0] = x[0] * sigmoid(x[0]) * x[1]; }
};

struct SwigluBackwardF {  // inputs gate, up, dout; outputs dgate, dup
  __device__ void operator()(const float (&x)[3], float (&y)[2]) const {
    float s = sigmoid(x[0]);
    y[1] = x[2] * x[0] * s;
    y[0] = x[2] * x[1] * s * (1.f + x[0] * (1.f - s));
  }
};

__device__ __forceinline__ float binary_apply(BinaryOp op, float a, float b) {
  switch (op) {
    case BinaryOp::add: return a + b;
    case BinaryOp::sub: return a - b;
    case BinaryOp::mul: return a * b;
    case BinaryOp::div: return a / b;
  }
  return 0.f;
}

// out[i] = a[i] op b[i % nb]; with V > 1, nb % V == 0 so a pack never wraps around b.
template <typename T, int V>
__global__ void binary_kernel(BinaryOp op, const T* a, const T* b, T* out, int64_t n, int64_t nb) {
  pdl_enter();
  int64_t nv = n / V;
  for (int64_t i = global_tid(); i < nv; i += grid_stride()) {
    Pack<T, V> x = load_pack<V>(a + i * V), y = load_pack<V>(b + (i * V) % nb), r;
#pragma unroll
    for (int j = 0; j < V; ++j) r.v[j] = from_f32<T>(binary_apply(op, to_f32(x.v[j]), to_f32(y.v[j])));
    store_pack<V>(out + i * V, r);
  }
  for (int64_t i = nv * V + global_tid(); i < n; i += grid_stride())
    out[i] = from_f32<T>(binary_apply(op, to_f32(a[i]), to_f32(b[i % nb])));
}

// dst (n) = value.
template <typename T, int V>
__global__ void fill_kernel(T* dst, int64_t n, T value) {
  pdl_enter();
  int64_t nv = n / V;
  Pack<T, V> p;
#pragma unroll
  for (int j = 0; j < V; ++j) p.v[j] = value;
  for (int64_t i = global_tid(); i < nv; i += grid_stride()) store_pack<V>(dst + i * V, p);
  for (int64_t i = nv * V + global_tid(); i < n; i += grid_stride()) dst[i] = value;
}

// dst (n) in D = src (n) in S, through f32.
template <typename S, typename D, int V>
__global__ void cast_kernel(const S* src, D* dst, int64_t n) {
  pdl_enter();
  int64_t nv = n / V;
  for (int64_t i = global_tid(); i < nv; i += grid_stride()) {
    Pack<S, V> x = load_pack<V>(src + i * V);
    Pack<D, V> y;
#pragma unroll
    for (int j = 0; j < V; ++j) y.v[j] = from_f32<D>(to_f32(x.v[j]));
    store_pack<V>(dst + i * V, y);
  }
  for (int64_t i = nv * V + global_tid(); i < n; i += grid_stride()) dst[i] = from_f32<D>(to_f32(src[i]));
}

// Storage type of any dtype cast/fill handle: the float types and i32.
template <typename F>
void dispatch_castable(DType dt, const char* op, F&& f) {
  if (dt == DType::i32) {
    f(TypeTag<int32_t>{});
    return;
  }
  dispatch_float(dt, op, f);
}

template <typename T>
T host_value(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else if constexpr (std::is_same_v<T, int32_t>) {
    return int32_t(v);
  } else if constexpr (std::is_same_v<T, bf16>) {
    return __float2bfloat16_rn(v);
  } else {
    return __float2half_rn(v);
  }
}

}  // namespace

void CudaBackend::fill(void* dst, DType dt, int64_t n, float value) {
  if (dt == DType::u32 && value == 0.f) {  // zeroed packed codes (the quantized KV cache's buffers)
    LMT_CUDA_CHECK(cudaMemsetAsync(dst, 0, size_t(n) * 4, stream_));
    return;
  }
  dispatch_castable(dt, "fill", [&](auto tag) {
    using T = typename decltype(tag)::type;
    T v = host_value<T>(value);
    T* d = static_cast<T*>(dst);
    constexpr int V = kVec<T>;
    if (aligned16(dst))
      launch("fill", fill_kernel<T, V>, grid_for((n + V - 1) / V), kThreads, 0, d, n, v);
    else
      launch("fill", fill_kernel<T, 1>, grid_for(n), kThreads, 0, d, n, v);
  });
}

void CudaBackend::cast(const void* src, DType src_dt, void* dst, DType dst_dt, int64_t n) {
  if (src_dt == dst_dt) {
    copy_d2d(dst, src, size_t(n) * dtype_size(src_dt));
    return;
  }
  dispatch_castable(src_dt, "cast", [&](auto stag) {
    using S = typename decltype(stag)::type;
    dispatch_castable(dst_dt, "cast", [&](auto dtag) {
      using D = typename decltype(dtag)::type;
      constexpr int V = kVec<S> < kVec<D> ? kVec<S> : kVec<D>;
      const S* s = static_cast<const S*>(src);
      D* d = static_cast<D*>(dst);
      bool vec = reinterpret_cast<uintptr_t>(src) % (sizeof(S) * V) == 0 &&
                 reinterpret_cast<uintptr_t>(dst) % (sizeof(D) * V) == 0;
      if (vec)
        launch("cast", cast_kernel<S, D, V>, grid_for((n + V - 1) / V), kThreads, 0, s, d, n);
      else
        launch("cast", cast_kernel<S, D, 1>, grid_for(n), kThreads, 0, s, d, n);
    });
  });
}

void CudaBackend::binary(BinaryOp op, const void* a, const void* b, void* out, int64_t n, int64_t nb, DType dt) {
  if (n == 0) return;
  LMT_CHECK(nb > 0 && n % nb == 0, "[binary] cuda: n ", n, " is not a multiple of nb ", nb);
  dispatch_float(dt, "binary", [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int V = kVec<T>;
    const T* pa = static_cast<const T*>(a);
    const T* pb = static_cast<const T*>(b);
    T* po = static_cast<T*>(out);
    if (aligned16(a) && aligned16(b) && aligned16(out) && nb % V == 0)
      launch("binary", binary_kernel<T, V>, grid_for((n + V - 1) / V), kThreads, 0, op, pa, pb, po, n, nb);
    else
      launch("binary", binary_kernel<T, 1>, grid_for(n), kThreads, 0, op, pa, pb, po, n, nb);
  });
}

void CudaBackend::axpby(const void* a, const void* b, void* out, int64_t n, float alpha, float beta, DType dt) {
  run_map<2, 1>("axpby", dt, AxpbyF{alpha, beta}, {a, b}, {out}, n);
}

void CudaBackend::unary(UnaryOp op, const void* x, void* out, int64_t n, float param, DType dt) {
  run_map<1, 1>("unary", dt, UnaryF{op, param}, {x}, {out}, n);
}

void CudaBackend::unary_backward(UnaryOp op, const void* x, const void* dy, void* dx, int64_t n, DType dt) {
  LMT_CHECK(op == UnaryOp::silu || op == UnaryOp::gelu_tanh || op == UnaryOp::tanh,
            "[unary_backward] cuda: only silu, gelu_tanh and tanh have a backward, got op ", int(op));
  run_map<2, 1>("unary_backward", dt, UnaryBackwardF{op}, {x, dy}, {dx}, n);
}

void CudaBackend::swiglu(const void* gate, const void* up, void* out, int64_t n, DType dt) {
  run_map<2, 1>("swiglu", dt, SwigluF{}, {gate, up}, {out}, n);
}

void CudaBackend::swiglu_backward(const void* gate, const void* up, const void* dout, void* dgate, void* dup, int64_t n,
                                  DType dt) {
  run_map<3, 2>("swiglu_backward", dt, SwigluBackwardF{}, {gate, up, dout}, {dgate, dup}, n);
}

// dst rows [*row_at, *row_at + n) = src: 16-byte units where everything is aligned to 16.
template <typename U>
__global__ void copy_rows_at_kernel(U* dst, const U* src, int64_t units_per_row, int64_t total, const int32_t* row_at) {
  pdl_enter();
  U* d = dst + int64_t(*row_at) * units_per_row;
  for (int64_t i = global_tid(); i < total; i += grid_stride()) d[i] = src[i];
}

void CudaBackend::copy_rows_at(void* dst, const void* src, int64_t row_bytes, int64_t n, const int32_t* row_at) {
  if (n * row_bytes == 0) return;
  uintptr_t bits = reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) | uintptr_t(row_bytes);
  if (bits % 16 == 0) {
    int64_t u = row_bytes / 16;
    launch("copy_rows_at", copy_rows_at_kernel<uint4>, grid_for(n * u), kThreads, 0, static_cast<uint4*>(dst),
           static_cast<const uint4*>(src), u, n * u, row_at);
  } else {
    launch("copy_rows_at", copy_rows_at_kernel<uint8_t>, grid_for(n * row_bytes), kThreads, 0,
           static_cast<uint8_t*>(dst), static_cast<const uint8_t*>(src), row_bytes, n * row_bytes, row_at);
  }
}

}  // namespace lmtune
