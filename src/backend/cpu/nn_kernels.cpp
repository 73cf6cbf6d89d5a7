// CPU kernels of the fused layers: embedding, rms_norm, rope, softmax, swiglu, cross-entropy.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"

namespace lmtune {

namespace {
float load_any(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::f32: return static_cast<const float*>(p)[i];
    case DType::bf16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::f16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: fail("[embedding] unsupported dtype ", dtype_name(dt));
  }
}
const float* F(const void* p) { return static_cast<const float*>(p); }
float* F(void* p) { return static_cast<float*>(p); }
}  // namespace

void CpuBackend::embedding(const void* weight, const int32_t* ids, void* out, int64_t N, int64_t D, DType dt) {
  size_t row = size_t(D) * dtype_size(dt);
  for (int64_t i = 0; i < N; ++i)
    std::memcpy(static_cast<char*>(out) + i * row, static_cast<const char*>(weight) + int64_t(ids[i]) * row, row);
}

void CpuBackend::embedding_backward(const void* dout, const int32_t* ids, float* dweight, int64_t N, int64_t D,
                                    DType dt) {
  for (int64_t i = 0; i < N; ++i) {
    float* dst = dweight + int64_t(ids[i]) * D;
    for (int64_t j = 0; j < D; ++j) dst[j] += load_any(dout, dt, i * D + j);
  }
}

void CpuBackend::rms_norm(const void* x_, const void* w_, void* out_, float* rstd, int64_t rows, int64_t dim, float eps,
                          DType dt) {
  cpu_require_f32(dt, "rms_norm");
  const float* x = F(x_);
  const float* w = F(w_);
  float* out = F(out_);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    double ss = 0;
    for (int64_t j = 0; j < dim; ++j) ss += double(xr[j]) * xr[j];
    float s = 1.f / std::sqrt(float(ss / double(dim)) + eps);
    rstd[r] = s;
    for (int64_t j = 0; j < dim; ++j) out[r * dim + j] = xr[j] * s * w[j];
  }
}

void CpuBackend::rms_norm_backward(const void* x_, const void* w_, const float* rstd, const void* dy_, void* dx_,
                                   float* dw, int64_t rows, int64_t dim, DType dt) {
  cpu_require_f32(dt, "rms_norm_backward");
  const float* x = F(x_);
  const float* w = F(w_);
  const float* dy = F(dy_);
  float* dx = F(dx_);
  for (int64_t j = 0; j < dim; ++j) dw[j] = 0.f;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    const float* dyr = dy + r * dim;
    float s = rstd[r];
    // y = x * s * w; dx = s * (g - x * s^2 * mean(g * x)) with g = dy * w.
    double dot = 0;
    for (int64_t j = 0; j < dim; ++j) {
      dot += double(dyr[j]) * w[j] * xr[j];
      dw[j] += dyr[j] * xr[j] * s;
    }
    float c = float(dot / double(dim)) * s * s;
    for (int64_t j = 0; j < dim; ++j) dx[r * dim + j] = s * (dyr[j] * w[j] - xr[j] * c);
  }
}

void CpuBackend::rope(const void* x_, void* out_, const float* inv_freq, int64_t B, int64_t T, int64_t H, int64_t D,
                      int64_t pos_offset, const int32_t* pos_at, float mscale, bool inverse, DType dt) {
  cpu_require_f32(dt, "rope");
  if (pos_at) pos_offset += *pos_at;  // the CPU's "device memory" is host memory
  const float* x = F(x_);
  float* out = F(out_);
  int64_t half = D / 2;
  std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      // The f32 product of position and inv_freq, as transformers computes it.
      float ang = float(pos_offset + t) * inv_freq[i];
      cs[i] = std::cos(ang) * mscale;
      sn[i] = (inverse ? -std::sin(ang) : std::sin(ang)) * mscale;
    }
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < H; ++h) {
        const float* xr = x + ((b * T + t) * H + h) * D;
        float* o = out + ((b * T + t) * H + h) * D;
        for (int64_t i = 0; i < half; ++i) {
          float x1 = xr[i], x2 = xr[i + half];
          o[i] = x1 * cs[i] - x2 * sn[i];
          o[i + half] = x2 * cs[i] + x1 * sn[i];
        }
      }
    }
  }
}

// Packed rows: each token's angle from its own position (the same f32 product as rope).
void CpuBackend::rope_at(const void* x_, void* out_, const float* inv_freq, const int32_t* positions, int64_t B,
                         int64_t T, int64_t H, int64_t D, float mscale, bool inverse, DType dt) {
  cpu_require_f32(dt, "rope_at");
  const float* x = F(x_);
  float* out = F(out_);
  const int64_t half = D / 2;
  std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
  for (int64_t bt = 0; bt < B * T; ++bt) {
    for (int64_t i = 0; i < half; ++i) {
      float ang = float(positions[bt]) * inv_freq[i];
      cs[size_t(i)] = std::cos(ang) * mscale;
      sn[size_t(i)] = (inverse ? -std::sin(ang) : std::sin(ang)) * mscale;
    }
    for (int64_t h = 0; h < H; ++h) {
      const float* xr = x + (bt * H + h) * D;
      float* o = out + (bt * H + h) * D;
      for (int64_t i = 0; i < half; ++i) {
        float x1 = xr[i], x2 = xr[i + half];
        o[i] = x1 * cs[size_t(i)] - x2 * sn[size_t(i)];
        o[i + half] = x2 * cs[size_t(i)] + x1 * sn[size_t(i)];
      }
    }
  }
}

void CpuBackend::softmax(const void* x_, void* y_, int64_t rows, int64_t n, DType dt) {
  cpu_require_f32(dt, "softmax");
  const float* x = F(x_);
  float* y = F(y_);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < n; ++j) mx = std::max(mx, xr[j]);
    double sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      yr[j] = std::exp(xr[j] - mx);
      sum += yr[j];
    }
    float inv = float(1.0 / sum);
    for (int64_t j = 0; j < n; ++j) yr[j] *= inv;
  }
}

void CpuBackend::softmax_backward(const void* y_, const void* dy_, void* dx_, int64_t rows, int64_t n, DType dt) {
  cpu_require_f32(dt, "softmax_backward");
  const float* y = F(y_);
  const float* dy = F(dy_);
  float* dx = F(dx_);
  for (int64_t r = 0; r < rows; ++r) {
    double dot = 0;
    for (int64_t j = 0; j < n; ++j) dot += double(dy[r * n + j]) * y[r * n + j];
    for (int64_t j = 0; j < n; ++j) dx[r * n + j] = y[r * n + j] * (dy[r * n + j] - float(dot));
  }
}

void CpuBackend::swiglu(const void* gate_, const void* up_, void* out_, int64_t n, DType dt) {
  cpu_require_f32(dt, "swiglu");
  const float* g = F(gate_);
  const float* u = F(up_);
  float* o = F(out_);
  for (int64_t i = 0; i < n; ++i) o[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
}

void CpuBackend::swiglu_backward(const void* gate_, const void* up_, const void* dout_, void* dgate_, void* dup_,
                                 int64_t n, DType dt) {
  cpu_require_f32(dt, "swiglu_backward");
  const float* g = F(gate_);
  const float* u = F(up_);
  const float* d = F(dout_);
  float* dg = F(dgate_);
  float* du = F(dup_);
  for (int64_t i = 0; i < n; ++i) {
    float s = 1.f / (1.f + std::exp(-g[i]));
    float silu = g[i] * s;
    du[i] = d[i] * silu;
    dg[i] = d[i] * u[i] * s * (1.f + g[i] * (1.f - s));
  }
}

void CpuBackend::cross_entropy(const void* logits_, const int32_t* targets, float* loss, float* lse, int64_t N,
                               int64_t V, DType dt) {
  cpu_require_f32(dt, "cross_entropy");
  const float* logits = F(logits_);
  for (int64_t r = 0; r < N; ++r) {
    const float* x = logits + r * V;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < V; ++j) mx = std::max(mx, x[j]);
    double sum = 0;
    for (int64_t j = 0; j < V; ++j) sum += std::exp(double(x[j] - mx));
    float l = mx + float(std::log(sum));
    lse[r] = l;
    loss[r] = targets[r] < 0 ? 0.f : l - x[targets[r]];
  }
}

void CpuBackend::cross_entropy_backward(const void* logits_, const int32_t* targets, const float* lse,
                                        const float* dloss, void* dlogits_, int64_t N, int64_t V, DType dt) {
  cpu_require_f32(dt, "cross_entropy_backward");
  const float* logits = F(logits_);
  float* dl = F(dlogits_);
  for (int64_t r = 0; r < N; ++r) {
    float* d = dl + r * V;
    if (targets[r] < 0) {
      std::memset(d, 0, size_t(V) * 4);
      continue;
    }
    const float* x = logits + r * V;
    float g = dloss[r];
    for (int64_t j = 0; j < V; ++j) d[j] = std::exp(x[j] - lse[r]) * g;
    d[targets[r]] -= g;
  }
}

}  // namespace lmtune
