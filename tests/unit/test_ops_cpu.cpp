// CPU kernels against naive scalar references, on odd sizes.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "ops/ops.h"
#include "tolerance.h"

using namespace lmtune;

namespace {
std::vector<float> vec(const Tensor& t) { return ops::to(t, Device::cpu, DType::f32).to_f32_vector(); }
Tensor rnd(const Shape& s, uint64_t seed) { return ops::randn(s, seed); }
}  // namespace

TEST(OpsCpu, MatmulAllTransposesAndBatches) {
  for (int64_t M : {7, 1})  // M = 1 takes the GEMV path
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        int64_t Bt = 3, K = 13, N = 5;
        Tensor a = rnd(ta ? Shape{Bt, K, M} : Shape{Bt, M, K}, 1);
        Tensor b = rnd(tb ? Shape{Bt, N, K} : Shape{Bt, K, N}, 2);
        Tensor c = ops::matmul(a, b, ta, tb);
        ASSERT_EQ(c.shape(), (Shape{Bt, M, N}));
        auto av = vec(a), bv = vec(b);
        std::vector<float> ref(static_cast<size_t>(Bt * M * N));
        for (int64_t z = 0; z < Bt; ++z)
          for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < N; ++j) {
              double s = 0;
              for (int64_t k = 0; k < K; ++k) {
                float x = ta ? av[size_t(z * K * M + k * M + i)] : av[size_t(z * M * K + i * K + k)];
                float y = tb ? bv[size_t(z * N * K + j * K + k)] : bv[size_t(z * K * N + k * N + j)];
                s += double(x) * y;
              }
              ref[size_t(z * M * N + i * N + j)] = float(s);
            }
        expect_close(vec(c), ref, 1e-5, 1e-5, "matmul");
      }
    }
  Tensor a = rnd({2, 3, 4}, 3), w = rnd({4, 6}, 4);
  Tensor c = ops::matmul(a, w);  // broadcast b folds the batch into rows
  Tensor c0 = ops::matmul(a.slice_rows(1, 2).reshape({3, 4}), w);
  expect_close(vec(c.slice_rows(1, 2)), vec(c0), 1e-6, 1e-6, "broadcast matmul");
  EXPECT_THROW(ops::matmul(rnd({2, 3}, 1), rnd({4, 2}, 1)), Error);
}

// LoRA's rank-r products (one side <= 32 wide, the others >= 64), with alpha and beta, against a
// double reference: x A and dY B^T (N narrow), (x A)^T dY (M narrow) and x^T (dY B^T) (N narrow, A
// transposed); odd sizes, and 33 wide.
TEST(OpsCpu, ThinProducts) {
  struct Case {
    int64_t M, K, N;
    bool ta, tb;
  };
  std::vector<Case> cases;
  for (int64_t N : {1, 5, 8, 17, 32, 33})
    for (int64_t K : {64, 100, 515})
      for (bool tb : {false, true}) cases.push_back({129, K, N, false, tb});
  for (int64_t M : {3, 8, 32})
    for (int64_t N : {64, 70, 531}) cases.push_back({M, 97, N, true, false});
  for (int64_t N : {5, 8, 20})
    for (int64_t M : {64, 100, 515}) cases.push_back({M, 64, N, true, false});
  for (const Case& t : cases)
    for (float beta : {0.f, 0.5f}) {
      Tensor a = rnd(t.ta ? Shape{t.K, t.M} : Shape{t.M, t.K}, 31);
      Tensor b = rnd(t.tb ? Shape{t.N, t.K} : Shape{t.K, t.N}, 32);
      Tensor c = rnd({t.M, t.N}, 33);
      const std::vector<float> av = vec(a), bv = vec(b), c0 = vec(c);
      ops::gemm_into(c, a, b, t.ta, t.tb, 0.7f, beta);
      std::vector<float> ref(size_t(t.M * t.N));
      for (int64_t i = 0; i < t.M; ++i)
        for (int64_t j = 0; j < t.N; ++j) {
          double sum = 0;
          for (int64_t k = 0; k < t.K; ++k)
            sum += double(t.ta ? av[size_t(k * t.M + i)] : av[size_t(i * t.K + k)]) *
                   (t.tb ? bv[size_t(j * t.K + k)] : bv[size_t(k * t.N + j)]);
          ref[size_t(i * t.N + j)] = float(0.7 * sum + beta * c0[size_t(i * t.N + j)]);
        }
      expect_close(vec(c), ref, 2e-5, 1e-5,
                   ("thin product M " + std::to_string(t.M) + " K " + std::to_string(t.K) + " N " +
                    std::to_string(t.N) + (t.ta ? " ta" : "") + (t.tb ? " tb" : "") + " beta " + std::to_string(beta))
                       .c_str());
    }
}

TEST(OpsCpu, LinearWithBias) {
  Tensor x = rnd({2, 3, 5}, 5), w = rnd({4, 5}, 6), b = rnd({4}, 7);
  auto y = vec(ops::linear(x, w, b));
  auto xv = vec(x), wv = vec(w), bv = vec(b);
  std::vector<float> ref(24);
  for (int r = 0; r < 6; ++r)
    for (int o = 0; o < 4; ++o) {
      double s = bv[o];
      for (int i = 0; i < 5; ++i) s += double(xv[r * 5 + i]) * wv[o * 5 + i];
      ref[r * 4 + o] = float(s);
    }
  expect_close(y, ref, 1e-5, 1e-5, "linear");
}

TEST(OpsCpu, RmsNorm) {
  int64_t rows = 5, dim = 33;
  Tensor x = rnd({rows, dim}, 8), w = rnd({dim}, 9);
  auto r = ops::rms_norm(x, w, 1e-5f);
  auto xv = vec(x), wv = vec(w);
  std::vector<float> ref(static_cast<size_t>(rows * dim));
  for (int64_t i = 0; i < rows; ++i) {
    double ss = 0;
    for (int64_t j = 0; j < dim; ++j) ss += double(xv[size_t(i * dim + j)]) * xv[size_t(i * dim + j)];
    double s = 1.0 / std::sqrt(ss / dim + 1e-5);
    for (int64_t j = 0; j < dim; ++j) ref[size_t(i * dim + j)] = float(xv[size_t(i * dim + j)] * s * wv[size_t(j)]);
  }
  expect_close(vec(r.out), ref, 1e-5, 1e-5, "rms_norm");
}

TEST(OpsCpu, RopeRotatesHalvesAndInverts) {
  int64_t B = 2, T = 5, H = 3, D = 8;
  Tensor x = rnd({B, T, H, D}, 10);
  std::vector<float> inv{1.f, 0.1f, 0.01f, 0.001f};
  Tensor f = Tensor::from_f32(inv, {4});
  Tensor y = ops::rope(x, f, 3, 1.f, false);
  auto xv = vec(x), yv = vec(y);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < D / 2; ++i) {
          size_t base = size_t(((b * T + t) * H + h) * D);
          float ang = float(3 + t) * inv[size_t(i)];
          float x1 = xv[base + i], x2 = xv[base + i + D / 2];
          EXPECT_NEAR(yv[base + i], x1 * std::cos(ang) - x2 * std::sin(ang), 1e-5);
          EXPECT_NEAR(yv[base + i + D / 2], x2 * std::cos(ang) + x1 * std::sin(ang), 1e-5);
        }
  expect_close(vec(ops::rope(y, f, 3, 1.f, true)), xv, 1e-5, 1e-5, "rope inverse");
}

namespace {
// Naive attention in double: softmax over visible keys.
std::vector<float> naive_attention(const std::vector<float>& q, const std::vector<float>& k,
                                   const std::vector<float>& v, int64_t B, int64_t T, int64_t S, int64_t H, int64_t KV,
                                   int64_t D, float scale, int64_t window, int64_t off) {
  std::vector<float> out(static_cast<size_t>(B * T * H * D));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      int64_t g = h / (H / KV);
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> sc(static_cast<size_t>(S), -INFINITY);
        double mx = -INFINITY;
        for (int64_t s = 0; s < S; ++s) {
          int64_t qp = off + t;
          if (s > qp || (window > 0 && qp - s >= window)) continue;
          double d = 0;
          for (int64_t j = 0; j < D; ++j)
            d += double(q[size_t(((b * T + t) * H + h) * D + j)]) * k[size_t(((b * S + s) * KV + g) * D + j)];
          sc[size_t(s)] = d * scale;
          mx = std::max(mx, sc[size_t(s)]);
        }
        double sum = 0;
        for (auto& x : sc) sum += (x = std::isinf(x) ? 0 : std::exp(x - mx));
        for (int64_t j = 0; j < D; ++j) {
          double o = 0;
          for (int64_t s = 0; s < S; ++s) o += sc[size_t(s)] / sum * v[size_t(((b * S + s) * KV + g) * D + j)];
          out[size_t(((b * T + t) * H + h) * D + j)] = float(o);
        }
      }
    }
  return out;
}
}  // namespace

TEST(OpsCpu, AttentionGqaWindowOffset) {
  struct Case {
    int64_t B, T, S, H, KV, D, window, off;
  };
  // The last four span several of the CPU kernel's 64-row query blocks (each block's products cover
  // only the keys its rows see): causal, a window shorter and longer than a block, a run-time-like
  // offset where the first rows see most keys.
  for (Case c : {Case{2, 7, 7, 4, 2, 8, 0, 0}, Case{1, 9, 9, 6, 3, 16, 3, 0}, Case{1, 3, 10, 2, 1, 8, 0, 7},
                 Case{2, 5, 5, 3, 3, 4, 2, 0}, Case{2, 150, 150, 2, 1, 8, 0, 0}, Case{1, 150, 150, 4, 2, 8, 40, 0},
                 Case{1, 200, 200, 2, 2, 4, 90, 0}, Case{1, 70, 200, 2, 1, 8, 0, 130}}) {
    Tensor q = rnd({c.B, c.T, c.H, c.D}, 11), k = rnd({c.B, c.S, c.KV, c.D}, 12), v = rnd({c.B, c.S, c.KV, c.D}, 13);
    float scale = 1.f / std::sqrt(float(c.D));
    auto r = ops::attention(q, k, v, scale, true, c.window, c.off);
    auto ref = naive_attention(vec(q), vec(k), vec(v), c.B, c.T, c.S, c.H, c.KV, c.D, scale, c.window, c.off);
    expect_close(vec(r.out), ref, 1e-5, 1e-5, "attention");
  }
  EXPECT_THROW(ops::attention(rnd({1, 2, 3, 4}, 1), rnd({1, 2, 2, 4}, 1), rnd({1, 2, 2, 4}, 1), 1.f, true, 0, 0),
               Error);
}

TEST(OpsCpu, SoftmaxSwigluCrossEntropyEmbedding) {
  Tensor x = rnd({3, 17}, 14);
  auto y = vec(ops::softmax(x));
  auto xv = vec(x);
  for (int r = 0; r < 3; ++r) {
    double mx = -INFINITY, sum = 0;
    for (int j = 0; j < 17; ++j) mx = std::max(mx, double(xv[r * 17 + j]));
    for (int j = 0; j < 17; ++j) sum += std::exp(xv[r * 17 + j] - mx);
    for (int j = 0; j < 17; ++j) EXPECT_NEAR(y[r * 17 + j], std::exp(xv[r * 17 + j] - mx) / sum, 1e-6);
  }
  Tensor g = rnd({19}, 15), u = rnd({19}, 16);
  auto s = vec(ops::swiglu(g, u));
  auto gv = vec(g), uv = vec(u);
  for (int i = 0; i < 19; ++i) EXPECT_NEAR(s[i], gv[i] / (1 + std::exp(-gv[i])) * uv[i], 1e-6);

  Tensor logits = rnd({4, 11}, 17);
  Tensor tg = Tensor::from_i32({3, -1, 0, 10}, {4});
  auto ce = ops::cross_entropy(logits, tg);
  auto lv = vec(logits), loss = vec(ce.loss);
  int tgt[4] = {3, -1, 0, 10};
  for (int r = 0; r < 4; ++r) {
    double mx = -INFINITY, sum = 0;
    for (int j = 0; j < 11; ++j) mx = std::max(mx, double(lv[r * 11 + j]));
    for (int j = 0; j < 11; ++j) sum += std::exp(lv[r * 11 + j] - mx);
    double ref = tgt[r] < 0 ? 0 : mx + std::log(sum) - lv[r * 11 + tgt[r]];
    EXPECT_NEAR(loss[r], ref, 1e-5);
  }
  EXPECT_THROW(ops::cross_entropy(logits, Tensor::from_i32({0, 0, 0, 11}, {4})), Error);

  Tensor w = rnd({6, 5}, 18);
  Tensor e = ops::embedding(w, Tensor::from_i32({5, 0, 5}, {3}));
  auto ev = vec(e), wv = vec(w);
  for (int j = 0; j < 5; ++j) {
    EXPECT_EQ(ev[j], wv[25 + j]);
    EXPECT_EQ(ev[5 + j], wv[j]);
  }
  EXPECT_THROW(ops::embedding(w, Tensor::from_i32({6}, {1})), Error);
  EXPECT_THROW(ops::embedding(w, Tensor::from_i32({-1}, {1})), Error);
}

TEST(OpsCpu, ReduceAndAdamW) {
  Tensor x = rnd({3, 4, 5}, 19);
  auto s = vec(ops::sum_axis(x, 1, DType::f32));
  auto xv = vec(x);
  for (int a = 0; a < 3; ++a)
    for (int c = 0; c < 5; ++c) {
      double r = 0;
      for (int b = 0; b < 4; ++b) r += xv[(a * 4 + b) * 5 + c];
      EXPECT_NEAR(s[a * 5 + c], r, 1e-5);
    }
  Tensor p = rnd({7}, 20), g = rnd({7}, 21);
  Tensor m = ops::zeros({7}, DType::f32, Device::cpu), v = ops::zeros({7}, DType::f32, Device::cpu);
  auto pv = vec(p), gv = vec(g);
  ops::adamw_(p, g, m, v, 0.1f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.1f, 0.001f);
  auto out = vec(p);
  for (int i = 0; i < 7; ++i) {
    double mm = 0.1 * gv[i], vv = 0.001 * gv[i] * gv[i];
    double ref = pv[i] - 0.1 * (mm / 0.1 / (std::sqrt(vv / 0.001) + 1e-8) + 0.01 * pv[i]);
    EXPECT_NEAR(out[i], ref, 1e-5);
  }
}
