// CPU causal attention with grouped-query heads and an optional sliding window (packed rows one
// segment at a time): per (batch, head) the scores of a block of query rows against the keys the
// block sees are materialized with sgemm; backward recomputes them from lse. The (batch, head) pairs are split over the
// pool's threads (parallel.h; backward: the (batch, kv head) pairs, a pair's query heads in order, so dK and dV sum in
// the same order on any split).
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

// Gemma2's soft-cap of a row's visible scores: s = cap * tanh(s / cap); the tanh values are kept
// in t (when given) for the backward's derivative cap * (1 - t^2) / cap.
void soft_cap(float cap, float* row, float* t, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float th = std::tanh(row[i] / cap);
    if (t) t[i] = th;
    row[i] = cap * th;
  }
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
// Packed rows (a.segment): each segment is a causal self-attention of its own (B 1, T = S = its
// length), so no score across segments is computed. run(sub, lse) runs one; sub's q, k, v, out
// (and in backward dq, dk, dv) point into the full tensors, whose row strides it shares; its lse
// (n_head, length) is a scratch the caller copies from or into the full (B, n_head, T) one.
template <typename Run>
void for_each_segment(const AttentionArgs& a, Run run) {
  const int64_t D = a.head_dim, ldq = a.n_head * D, ldk = a.n_kv_head * D, es = 4;
  std::vector<float> lse;
  for (int64_t b = 0; b < a.B; ++b) {
    const int32_t* seg = a.segment + b * a.T;
    for (int64_t s0 = 0, s1; s0 < a.T; s0 = s1) {
      for (s1 = s0 + 1; s1 < a.T && seg[s1] == seg[s0];) ++s1;
      AttentionArgs sub = a;
      sub.B = 1, sub.T = sub.S = s1 - s0, sub.segment = nullptr;
      const int64_t qoff = (b * a.T + s0) * ldq * es, koff = (b * a.S + s0) * ldk * es;
      sub.q = static_cast<const char*>(a.q) + qoff, sub.out = static_cast<char*>(a.out) + qoff;
      sub.k = static_cast<const char*>(a.k) + koff, sub.v = static_cast<const char*>(a.v) + koff;
      lse.resize(size_t(a.n_head * sub.T));
      sub.lse = lse.data();
      run(sub, b, s0, qoff, koff);
    }
  }
}

// Copies a segment's lse (n_head, len) from or into the full lse (B, n_head, T) at (b, :, s0).
void copy_lse(const AttentionArgs& a, const AttentionArgs& sub, int64_t b, int64_t s0, bool into_full) {
  for (int64_t h = 0; h < a.n_head; ++h) {
    float* full = a.lse + (b * a.n_head + h) * a.T + s0;
    float* part = sub.lse + h * sub.T;
    if (into_full)
      std::memcpy(full, part, size_t(sub.T) * 4);
    else
      std::memcpy(part, full, size_t(sub.T) * 4);
  }
}

// Query rows go in blocks of kRowBlock; a block's products span only the keys some row of it sees
// (from its first row's lo to its last row's hi), so a causal score matrix costs about half of
// T x S instead of all of it.
constexpr int64_t kRowBlock = 64;

struct RowBlock {
  int64_t t0, t1, k0, k1;  // query rows [t0, t1), keys [k0, k1)
  int64_t rows() const { return t1 - t0; }
  int64_t keys() const { return k1 - k0; }
};

RowBlock row_block(const AttentionArgs& a, int64_t t0) {
  const int64_t t1 = std::min(a.T, t0 + kRowBlock);
  int64_t lo0, hi0, lo1, hi1;
  visible_range(a, t0, &lo0, &hi0);
  visible_range(a, t1 - 1, &lo1, &hi1);
  const int64_t k1 = std::max(hi0, hi1);
  return {t0, t1, std::min(lo0, k1), k1};
}

// The block's scores (rows, keys) = scale * Q_h[t0:t1] K_g[k0:k1]^T for batch b, head h, row
// stride keys().
void block_scores(const AttentionArgs& a, int64_t b, int64_t h, const RowBlock& r, float* sc) {
  const int64_t group = a.n_head / a.n_kv_head, D = a.head_dim, ldq = a.n_head * D, ldk = a.n_kv_head * D;
  const float* q = static_cast<const float*>(a.q) + (b * a.T + r.t0) * ldq + h * D;
  const float* k = static_cast<const float*>(a.k) + (b * a.S + r.k0) * ldk + (h / group) * D;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(r.rows()), int(r.keys()), int(D), a.scale, q, int(ldq), k,
              int(ldk), 0.f, sc, int(r.keys()));
}

// Row t's visible keys [lo, hi) as offsets into its block's keys.
void block_span(const AttentionArgs& a, const RowBlock& r, int64_t t, int64_t* lo, int64_t* hi) {
  visible_range(a, t, lo, hi);
  *lo = std::clamp(*lo - r.k0, int64_t(0), r.keys()), *hi = std::clamp(*hi - r.k0, *lo, r.keys());
}
}  // namespace

void CpuBackend::attention(const AttentionArgs& args) {
  if (args.segment) {
    cpu_require_f32(args.dtype, "attention");
    return for_each_segment(args, [&](const AttentionArgs& sub, int64_t b, int64_t s0, int64_t, int64_t) {
      attention(sub);
      copy_lse(args, sub, b, s0, true);
    });
  }
  LMT_CPU_PROFILE("attention");
  const AttentionArgs a = resolve_offset(args);
  cpu_require_f32(a.dtype, "attention");
  const int64_t T = a.T, S = a.S, D = a.head_dim, group = a.n_head / a.n_kv_head, ldq = a.n_head * D;
  const int64_t ldk = a.n_kv_head * D;
  const float ninf = -std::numeric_limits<float>::infinity();
  cpu::parallel_rows(a.B * a.n_head, a.B * a.n_head * T * S * D >> 17, [&](int64_t u0, int64_t u1) {
    std::vector<float> sc(static_cast<size_t>(std::min(T, kRowBlock) * S));
    for (int64_t bh = u0; bh < u1; ++bh) {
      const int64_t b = bh / a.n_head, h = bh % a.n_head;
      float* out = static_cast<float*>(a.out) + b * T * ldq + h * D;
      for (int64_t t0 = 0; t0 < T; t0 += kRowBlock) {
        const RowBlock r = row_block(a, t0);
        if (r.keys() <= 0) {  // no row of the block sees a key
          for (int64_t t = r.t0; t < r.t1; ++t) {
            std::fill(out + t * ldq, out + t * ldq + D, 0.f);
            a.lse[(b * a.n_head + h) * T + t] = ninf;
          }
          continue;
        }
        block_scores(a, b, h, r, sc.data());
        for (int64_t t = r.t0; t < r.t1; ++t) {
          float* row = sc.data() + (t - r.t0) * r.keys();
          int64_t lo, hi;
          block_span(a, r, t, &lo, &hi);
          if (a.softcap > 0) soft_cap(a.softcap, row + lo, nullptr, hi - lo);
          const float mx = cpu::max_of(row + lo, hi - lo);
          const double sum = hi > lo ? cpu::exp_sub_sum(row + lo, mx, row + lo, hi - lo) : 0.0;
          const float inv = sum > 0 ? float(1.0 / sum) : 0.f;
          std::fill(row, row + lo, 0.f);
          std::fill(row + hi, row + r.keys(), 0.f);
          for (int64_t s = lo; s < hi; ++s) row[s] *= inv;
          a.lse[(b * a.n_head + h) * T + t] = sum > 0 ? mx + float(std::log(sum)) : ninf;
        }
        const float* v = static_cast<const float*>(a.v) + (b * S + r.k0) * ldk + (h / group) * D;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(r.rows()), int(D), int(r.keys()), 1.f, sc.data(),
                    int(r.keys()), v, int(ldk), 0.f, out + r.t0 * ldq, int(ldq));
      }
    }
  });
}

void CpuBackend::attention_backward(const AttentionBackwardArgs& ab) {
  if (ab.fwd.segment) {
    cpu_require_f32(ab.fwd.dtype, "attention_backward");
    return for_each_segment(ab.fwd, [&](AttentionArgs& sub, int64_t b, int64_t s0, int64_t qoff, int64_t koff) {
      copy_lse(ab.fwd, sub, b, s0, false);
      AttentionBackwardArgs sb{sub, static_cast<const char*>(ab.dout) + qoff, static_cast<char*>(ab.dq) + qoff,
                               static_cast<char*>(ab.dk) + koff, static_cast<char*>(ab.dv) + koff};
      attention_backward(sb);
    });
  }
  LMT_CPU_PROFILE("attention_backward");
  const AttentionArgs& a = ab.fwd;
  LMT_CHECK(!a.q_offset_at, "[attention_backward] a run-time q_offset is for inference only");
  cpu_require_f32(a.dtype, "attention_backward");
  const int64_t T = a.T, S = a.S, D = a.head_dim, group = a.n_head / a.n_kv_head;
  const int64_t ldq = a.n_head * D, ldk = a.n_kv_head * D;
  std::memset(ab.dk, 0, size_t(a.B * S * ldk) * 4);
  std::memset(ab.dv, 0, size_t(a.B * S * ldk) * 4);
  cpu::parallel_rows(a.B * a.n_kv_head, a.B * a.n_head * T * S * D >> 16, [&](int64_t u0, int64_t u1) {
    const size_t block = static_cast<size_t>(std::min(T, kRowBlock) * S);
    std::vector<float> p(block), dp(block), delta(static_cast<size_t>(T));
    std::vector<float> th(a.softcap > 0 ? block : 0);  // the soft-cap's tanh values
    // Pair u = b * n_kv_head + g holds the query heads u * group ... of b * n_head + h; their
    // blocks run in order, so dK and dV sum in the same order on any split.
    for (int64_t bh = u0 * group; bh < u1 * group; ++bh) {
      const int64_t b = bh / a.n_head, h = bh % a.n_head, g = h / group;
      const float* q = static_cast<const float*>(a.q) + b * T * ldq + h * D;
      const float* k = static_cast<const float*>(a.k) + b * S * ldk + g * D;
      const float* v = static_cast<const float*>(a.v) + b * S * ldk + g * D;
      const float* o = static_cast<const float*>(a.out) + b * T * ldq + h * D;
      const float* dout = static_cast<const float*>(ab.dout) + b * T * ldq + h * D;
      float* dq = static_cast<float*>(ab.dq) + b * T * ldq + h * D;
      float* dk = static_cast<float*>(ab.dk) + b * S * ldk + g * D;
      float* dv = static_cast<float*>(ab.dv) + b * S * ldk + g * D;
      const float* lse = a.lse + (b * a.n_head + h) * T;
      for (int64_t t = 0; t < T; ++t) {
        double d = 0;
        for (int64_t j = 0; j < D; ++j) d += double(dout[t * ldq + j]) * o[t * ldq + j];
        delta[size_t(t)] = float(d);
      }
      for (int64_t t0 = 0; t0 < T; t0 += kRowBlock) {
        const RowBlock r = row_block(a, t0);
        const int64_t n = r.keys(), m = r.rows();
        if (n <= 0) {  // the block's rows see no key: no gradient for their queries
          for (int64_t t = r.t0; t < r.t1; ++t) std::fill(dq + t * ldq, dq + t * ldq + D, 0.f);
          continue;
        }
        block_scores(a, b, h, r, p.data());
        for (int64_t t = r.t0; t < r.t1; ++t) {
          float* row = p.data() + (t - r.t0) * n;
          int64_t lo, hi;
          block_span(a, r, t, &lo, &hi);
          if (a.softcap > 0) soft_cap(a.softcap, row + lo, th.data() + (t - r.t0) * n + lo, hi - lo);
          if (hi > lo) cpu::exp_sub_sum(row + lo, lse[t], row + lo, hi - lo);
          std::fill(row, row + lo, 0.f);
          std::fill(row + hi, row + n, 0.f);
        }
        // dV_g[k0:k1] += P^T dO[t0:t1] ; dP = dO[t0:t1] V_g[k0:k1]^T
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(n), int(D), int(m), 1.f, p.data(), int(n),
                    dout + r.t0 * ldq, int(ldq), 1.f, dv + r.k0 * ldk, int(ldk));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(n), int(D), 1.f, dout + r.t0 * ldq, int(ldq),
                    v + r.k0 * ldk, int(ldk), 0.f, dp.data(), int(n));
        for (int64_t t = r.t0; t < r.t1; ++t) {
          const size_t at = size_t((t - r.t0) * n);
          const float dt = delta[size_t(t)];
          for (int64_t s = 0; s < n; ++s) dp[at + s] = p[at + s] * (dp[at + s] - dt);
        }
        if (a.softcap > 0)  // through s = cap * tanh(u / cap): du = ds * (1 - tanh^2); p is 0 where th is unset
          for (size_t i = 0; i < size_t(m * n); ++i) dp[i] *= 1.f - th[i] * th[i];
        // dQ[t0:t1] = scale * dS K_g[k0:k1] ; dK_g[k0:k1] += scale * dS^T Q[t0:t1]
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(m), int(D), int(n), a.scale, dp.data(), int(n),
                    k + r.k0 * ldk, int(ldk), 0.f, dq + r.t0 * ldq, int(ldq));
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(n), int(D), int(m), a.scale, dp.data(), int(n),
                    q + r.t0 * ldq, int(ldq), 1.f, dk + r.k0 * ldk, int(ldk));
      }
    }
  });
}

}  // namespace lmtune
