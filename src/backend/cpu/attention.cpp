// CPU causal attention with grouped-query heads and an optional sliding window: per
// (batch, head) the score matrix is materialized with sgemm; backward recomputes it from lse.
// The (batch, head) pairs are split over the pool's threads (parallel.h; backward: the (batch, kv
// head) pairs, a pair's query heads in order, so dK and dV sum in the same order on any split).
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/parallel.h"
#include "backend/cpu/profile.h"
#include "backend/cpu/vexp.h"
#include "core/error.h"

namespace lmtune {

namespace {
// The keys query t sees, [lo, hi): with causal, key s is visible iff s <= q_offset + t and, with
// a window, q_offset + t - s < window.
void visible_range(const AttentionArgs& a, int64_t t, int64_t* lo, int64_t* hi) {
  *lo = 0, *hi = a.S;
  if (!a.causal) return;
  int64_t qp = a.q_offset + t;
  *hi = std::clamp<int64_t>(qp + 1, 0, a.S);
  if (a.window > 0) *lo = std::clamp<int64_t>(qp - a.window + 1, 0, *hi);
}

// scores (T, S) = scale * Q_h K_g^T for batch b, head h.
void scores(const AttentionArgs& a, int64_t b, int64_t h, float* sc) {
  int64_t group = a.n_head / a.n_kv_head, g = h / group, D = a.head_dim;
  const float* q = static_cast<const float*>(a.q) + (b * a.T * a.n_head + h) * D;
  const float* k = static_cast<const float*>(a.k) + (b * a.S * a.n_kv_head + g) * D;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(a.T), int(a.S), int(D), a.scale, q, int(a.n_head * D), k,
              int(a.n_kv_head * D), 0.f, sc, int(a.S));
}

// A run-time offset (q_offset_at, host memory on the CPU) folded into q_offset; with one batch
// row the keys past the last query are dropped (they are invisible, and may be stale).
AttentionArgs resolve_offset(const AttentionArgs& in) {
  AttentionArgs a = in;
  if (!a.q_offset_at) return a;
  a.q_offset += *a.q_offset_at;
  a.q_offset_at = nullptr;
  if (a.causal && a.B == 1) a.S = std::max<int64_t>(0, std::min(a.S, a.q_offset + a.T));
  return a;
}
}  // namespace

void CpuBackend::attention(const AttentionArgs& args) {
  LMT_CPU_PROFILE("attention");
  const AttentionArgs a = resolve_offset(args);
  cpu_require_f32(a.dtype, "attention");
  int64_t T = a.T, S = a.S, D = a.head_dim, group = a.n_head / a.n_kv_head;
  const float ninf = -std::numeric_limits<float>::infinity();
  cpu::parallel_rows(a.B * a.n_head, a.B * a.n_head * T * S * D >> 17, [&](int64_t u0, int64_t u1) {
    std::vector<float> sc(static_cast<size_t>(T * S));
    for (int64_t bh = u0; bh < u1; ++bh) {
      const int64_t b = bh / a.n_head, h = bh % a.n_head;
      scores(a, b, h, sc.data());
      for (int64_t t = 0; t < T; ++t) {
        float* row = sc.data() + t * S;
        int64_t lo, hi;
        visible_range(a, t, &lo, &hi);
        const float mx = cpu::max_of(row + lo, hi - lo);
        const double sum = hi > lo ? cpu::exp_sub_sum(row + lo, mx, row + lo, hi - lo) : 0.0;
        std::fill(row, row + lo, 0.f);
        std::fill(row + hi, row + S, 0.f);
        float inv = sum > 0 ? float(1.0 / sum) : 0.f;
        for (int64_t s = lo; s < hi; ++s) row[s] *= inv;
        a.lse[(b * a.n_head + h) * T + t] = sum > 0 ? mx + float(std::log(sum)) : ninf;
      }
      const float* v = static_cast<const float*>(a.v) + (b * S * a.n_kv_head + h / group) * D;
      float* out = static_cast<float*>(a.out) + (b * T * a.n_head + h) * D;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(T), int(D), int(S), 1.f, sc.data(), int(S), v,
                  int(a.n_kv_head * D), 0.f, out, int(a.n_head * D));
    }
  });
}

void CpuBackend::attention_backward(const AttentionBackwardArgs& ab) {
  LMT_CPU_PROFILE("attention_backward");
  const AttentionArgs& a = ab.fwd;
  LMT_CHECK(!a.q_offset_at, "[attention_backward] a run-time q_offset is for inference only");
  cpu_require_f32(a.dtype, "attention_backward");
  int64_t T = a.T, S = a.S, D = a.head_dim, group = a.n_head / a.n_kv_head;
  int64_t ldq = a.n_head * D, ldk = a.n_kv_head * D;
  std::memset(ab.dk, 0, size_t(a.B * S * ldk) * 4);
  std::memset(ab.dv, 0, size_t(a.B * S * ldk) * 4);
  cpu::parallel_rows(a.B * a.n_kv_head, a.B * a.n_head * T * S * D >> 16, [&](int64_t u0, int64_t u1) {
    std::vector<float> p(static_cast<size_t>(T * S)), dp(static_cast<size_t>(T * S)), delta(static_cast<size_t>(T));
    // Pair u = b * n_kv_head + g holds the query heads u * group ... of b * n_head + h.
    for (int64_t bh = u0 * group; bh < u1 * group; ++bh) {
      const int64_t b = bh / a.n_head, h = bh % a.n_head, g = h / group;
      const float* q = static_cast<const float*>(a.q) + (b * T * a.n_head + h) * D;
      const float* k = static_cast<const float*>(a.k) + (b * S * a.n_kv_head + g) * D;
      const float* v = static_cast<const float*>(a.v) + (b * S * a.n_kv_head + g) * D;
      const float* o = static_cast<const float*>(a.out) + (b * T * a.n_head + h) * D;
      const float* dout = static_cast<const float*>(ab.dout) + (b * T * a.n_head + h) * D;
      float* dq = static_cast<float*>(ab.dq) + (b * T * a.n_head + h) * D;
      float* dk = static_cast<float*>(ab.dk) + (b * S * a.n_kv_head + g) * D;
      float* dv = static_cast<float*>(ab.dv) + (b * S * a.n_kv_head + g) * D;
      scores(a, b, h, p.data());
      const float* lse = a.lse + (b * a.n_head + h) * T;
      for (int64_t t = 0; t < T; ++t) {
        double d = 0;
        for (int64_t j = 0; j < D; ++j) d += double(dout[t * ldq + j]) * o[t * ldq + j];
        delta[t] = float(d);
        int64_t lo, hi;
        visible_range(a, t, &lo, &hi);
        float* row = p.data() + t * S;
        if (hi > lo) cpu::exp_sub_sum(row + lo, lse[t], row + lo, hi - lo);
        std::fill(row, row + lo, 0.f);
        std::fill(row + hi, row + S, 0.f);
      }
      // dV_g += P^T dO ; dP = dO V^T
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(S), int(D), int(T), 1.f, p.data(), int(S), dout,
                  int(ldq), 1.f, dv, int(ldk));
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(S), int(D), 1.f, dout, int(ldq), v, int(ldk),
                  0.f, dp.data(), int(S));
      for (int64_t t = 0; t < T; ++t)
        for (int64_t s = 0; s < S; ++s) dp[t * S + s] = p[t * S + s] * (dp[t * S + s] - delta[t]);
      // dQ = scale * dS K ; dK_g += scale * dS^T Q
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(T), int(D), int(S), a.scale, dp.data(), int(S), k,
                  int(ldk), 0.f, dq, int(ldq));
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(S), int(D), int(T), a.scale, dp.data(), int(S), q,
                  int(ldq), 1.f, dk, int(ldk));
    }
  });
}

}  // namespace lmtune
