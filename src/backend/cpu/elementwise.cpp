// CPU memory movement, fills, casts and elementwise kernels (f32 compute).
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/parallel.h"
#include "backend/cpu/profile.h"
#include "core/error.h"

namespace lmtune {

void cpu_require_f32(DType dt, const char* op) {
  LMT_CHECK(dt == DType::f32, "[", op, "] the cpu backend computes in f32, got ", dtype_name(dt),
            "; cast to f32 first");
}

Backend& cpu_backend() {
  static CpuBackend b;
  return b;
}

void CpuBackend::copy_h2d(void* dst, const void* src, size_t n) {
  LMT_CPU_PROFILE("copy_h2d");
  std::memcpy(dst, src, n);
}
void CpuBackend::copy_d2h(void* dst, const void* src, size_t n) {
  LMT_CPU_PROFILE("copy_d2h");
  std::memcpy(dst, src, n);
}
void CpuBackend::copy_d2d(void* dst, const void* src, size_t n) {
  LMT_CPU_PROFILE("copy_d2d");
  std::memmove(dst, src, n);
}
void CpuBackend::copy_d2d_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
                             size_t rows) {
  LMT_CPU_PROFILE("copy_d2d_2d");
  for (size_t r = 0; r < rows; ++r)
    std::memcpy(static_cast<char*>(dst) + r * dst_pitch, static_cast<const char*>(src) + r * src_pitch, width);
}
void CpuBackend::copy_rows_at(void* dst, const void* src, int64_t row_bytes, int64_t n, const int32_t* row_at) {
  LMT_CPU_PROFILE("copy_rows_at");
  std::memmove(static_cast<char*>(dst) + *row_at * row_bytes, src, size_t(n * row_bytes));
}

namespace {
float load(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::f32: return static_cast<const float*>(p)[i];
    case DType::bf16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::f16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::i32: return float(static_cast<const int32_t*>(p)[i]);
    default: fail("[cast] unsupported source dtype ", dtype_name(dt));
  }
}
void store(void* p, DType dt, int64_t i, float v) {
  switch (dt) {
    case DType::f32: static_cast<float*>(p)[i] = v; break;
    case DType::bf16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(v); break;
    case DType::f16: static_cast<uint16_t*>(p)[i] = f32_to_f16(v); break;
    case DType::i32: static_cast<int32_t*>(p)[i] = int32_t(v); break;
    default: fail("[cast] unsupported destination dtype ", dtype_name(dt));
  }
}

float gelu_tanh(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2/pi)
  return 0.5f * x * (1.f + std::tanh(k * (x + 0.044715f * x * x * x)));
}
float gelu_tanh_grad(float x) {
  const float k = 0.7978845608028654f;
  float u = k * (x + 0.044715f * x * x * x);
  float t = std::tanh(u);
  return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * k * (1.f + 3.f * 0.044715f * x * x);
}
float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }
}  // namespace

void CpuBackend::fill(void* dst, DType dt, int64_t n, float value) {
  LMT_CPU_PROFILE("fill");
  for (int64_t i = 0; i < n; ++i) store(dst, dt, i, value);
}

void CpuBackend::cast(const void* src, DType sdt, void* dst, DType ddt, int64_t n) {
  LMT_CPU_PROFILE("cast");
  if (sdt == ddt) {
    std::memmove(dst, src, size_t(n) * dtype_size(sdt));
    return;
  }
  for (int64_t i = 0; i < n; ++i) store(dst, ddt, i, load(src, sdt, i));
}

void CpuBackend::binary(BinaryOp op, const void* a_, const void* b_, void* out_, int64_t n, int64_t nb, DType dt) {
  LMT_CPU_PROFILE(op == BinaryOp::add ? "binary add" : op == BinaryOp::mul ? "binary mul" : "binary sub/div");
  cpu_require_f32(dt, "binary");
  const float* a = static_cast<const float*>(a_);
  const float* b = static_cast<const float*>(b_);
  float* out = static_cast<float*>(out_);
  // Rows of nb (b broadcast over them) split across the cores; one long row split by elements.
  auto rows = [&](int64_t base, int64_t end, int64_t j0, int64_t j1) {
    for (; base < end; base += nb) {
      const float* ar = a + base;
      float* o = out + base;
      switch (op) {
        case BinaryOp::add:
          for (int64_t j = j0; j < j1; ++j) o[j] = ar[j] + b[j];
          break;
        case BinaryOp::sub:
          for (int64_t j = j0; j < j1; ++j) o[j] = ar[j] - b[j];
          break;
        case BinaryOp::mul:
          for (int64_t j = j0; j < j1; ++j) o[j] = ar[j] * b[j];
          break;
        case BinaryOp::div:
          for (int64_t j = j0; j < j1; ++j) o[j] = ar[j] / b[j];
          break;
      }
    }
  };
  if (nb <= 0) return;
  if (nb == n) return cpu::parallel_elems(n, 1, [&](int64_t j0, int64_t j1) { rows(0, nb, j0, j1); });
  cpu::parallel_rows(n / nb, n >> 15, [&](int64_t r0, int64_t r1) { rows(r0 * nb, r1 * nb, 0, nb); });
}

void CpuBackend::axpby(const void* a_, const void* b_, void* out_, int64_t n, float alpha, float beta, DType dt) {
  LMT_CPU_PROFILE("axpby");
  cpu_require_f32(dt, "axpby");
  const float* a = static_cast<const float*>(a_);
  const float* b = static_cast<const float*>(b_);
  float* out = static_cast<float*>(out_);
  cpu::parallel_elems(n, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) out[i] = alpha * a[i] + beta * b[i];
  });
}

void CpuBackend::unary(UnaryOp op, const void* x_, void* out_, int64_t n, float param, DType dt) {
  LMT_CPU_PROFILE("unary");
  cpu_require_f32(dt, "unary");
  const float* x = static_cast<const float*>(x_);
  float* y = static_cast<float*>(out_);
  if (op == UnaryOp::scale) {  // LoRA's scale of its product: a loop of its own, vectorized
    return cpu::parallel_elems(n, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) y[i] = x[i] * param;
    });
  }
  cpu::parallel_elems(n, op == UnaryOp::gelu_tanh || op == UnaryOp::silu || op == UnaryOp::exp ? 16 : 1,
                      [&](int64_t i0, int64_t i1) {
                        for (int64_t i = i0; i < i1; ++i) {
                          float v = x[i];
                          switch (op) {
                            case UnaryOp::silu: y[i] = v * sigmoid(v); break;
                            case UnaryOp::gelu_tanh: y[i] = gelu_tanh(v); break;
                            case UnaryOp::exp: y[i] = std::exp(v); break;
                            case UnaryOp::neg: y[i] = -v; break;
                            case UnaryOp::square: y[i] = v * v; break;
                            case UnaryOp::sqrt: y[i] = std::sqrt(v); break;
                            case UnaryOp::rsqrt: y[i] = 1.f / std::sqrt(v); break;
                            case UnaryOp::scale: y[i] = v * param; break;
                            case UnaryOp::add_scalar: y[i] = v + param; break;
                            case UnaryOp::tanh: y[i] = std::tanh(v); break;
                          }
                        }
                      });
}

void CpuBackend::unary_backward(UnaryOp op, const void* x_, const void* dy_, void* dx_, int64_t n, DType dt) {
  LMT_CPU_PROFILE("unary_backward");
  cpu_require_f32(dt, "unary_backward");
  const float* x = static_cast<const float*>(x_);
  const float* dy = static_cast<const float*>(dy_);
  float* dx = static_cast<float*>(dx_);
  if (op != UnaryOp::silu && op != UnaryOp::gelu_tanh && op != UnaryOp::tanh)
    fail("[unary_backward] no backward for this unary op on cpu");
  cpu::parallel_elems(n, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float v = x[i];
      switch (op) {
        case UnaryOp::silu: {
          float s = sigmoid(v);
          dx[i] = dy[i] * s * (1.f + v * (1.f - s));
          break;
        }
        case UnaryOp::gelu_tanh: dx[i] = dy[i] * gelu_tanh_grad(v); break;
        case UnaryOp::tanh: {
          const float t = std::tanh(v);
          dx[i] = dy[i] * (1.f - t * t);
          break;
        }
        default: fail("[unary_backward] no backward for this unary op on cpu");
      }
    }
  });
}

void CpuBackend::reduce_sum(const void* x_, void* out_, int64_t outer, int64_t n, int64_t inner, DType dt,
                            DType out_dt) {
  LMT_CPU_PROFILE("reduce_sum");
  cpu_require_f32(dt, "reduce_sum");
  cpu_require_f32(out_dt, "reduce_sum");
  const float* x = static_cast<const float*>(x_);
  float* out = static_cast<float*>(out_);
  for (int64_t o = 0; o < outer; ++o) {
    float* dst = out + o * inner;
    for (int64_t j = 0; j < inner; ++j) dst[j] = 0.f;
    // Accumulate in double per output to keep long sums exact to f32 rounding.
    if (inner == 1) {
      double acc = 0;
      for (int64_t k = 0; k < n; ++k) acc += x[o * n + k];
      dst[0] = float(acc);
      continue;
    }
    for (int64_t k = 0; k < n; ++k) {
      const float* src = x + (o * n + k) * inner;
      for (int64_t j = 0; j < inner; ++j) dst[j] += src[j];
    }
  }
}

void CpuBackend::adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float b1, float b2, float eps,
                       float wd, float bc1, float bc2) {
  LMT_CPU_PROFILE("adamw");
  for (int64_t i = 0; i < n; ++i) {
    m[i] = b1 * m[i] + (1.f - b1) * g[i];
    v[i] = b2 * v[i] + (1.f - b2) * g[i] * g[i];
    p[i] -= lr * (m[i] / bc1 / (std::sqrt(v[i] / bc2) + eps) + wd * p[i]);
  }
}

}  // namespace lmtune
