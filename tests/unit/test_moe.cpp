// The mixture-of-experts MLP (nn/moe.h): top-k choice and its ties, the gather/scatter path against
// a per-token loop over the chosen experts, and scatter_rows' gradient.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "nn/moe.h"

using namespace lmtune;

TEST(MoeRouting, TopKBestFirstTiesToTheLowerIndex) {
  // Row 0: a clear order; row 1: all equal; row 2: a tie for second place.
  const std::vector<float> p = {0.1f, 0.6f, 0.3f, 0.0f, 0.25f, 0.25f, 0.25f, 0.25f, 0.5f, 0.2f, 0.1f, 0.2f};
  EXPECT_EQ(nn::MoeMlp::choose(p, 3, 4, 2), (std::vector<int32_t>{1, 2, 0, 1, 0, 1}));
  EXPECT_EQ(nn::MoeMlp::choose(p, 3, 4, 3), (std::vector<int32_t>{1, 2, 0, 0, 1, 2, 0, 1, 3}));
}

namespace {
float silu(float v) { return v / (1.f + std::exp(-v)); }
}  // namespace

TEST(MoeMlp, EqualsAPerTokenLoopOverTheChosenExperts) {
  const int64_t C = 6, F = 5, E = 4, N = 7;
  std::vector<Tensor> owned;  // the LinearRefs point at these
  owned.reserve(1 + 3 * E);
  owned.push_back(ops::randn({E, C}, 1, 0.8f));
  for (int64_t e = 0; e < E; ++e) {
    owned.push_back(ops::randn({F, C}, 10 + e, 0.5f));
    owned.push_back(ops::randn({F, C}, 20 + e, 0.5f));
    owned.push_back(ops::randn({C, F}, 30 + e, 0.5f));
  }
  const Tensor x = ops::randn({1, N, C}, 2);
  for (bool norm : {true, false}) {
    nn::MoeMlp moe;
    moe.router.weight = &owned[0];
    moe.top_k = 2, moe.norm_topk = norm;
    for (int64_t e = 0; e < E; ++e) {
      nn::GatedMlp m;
      m.gate.weight = &owned[size_t(1 + 3 * e)], m.up.weight = &owned[size_t(2 + 3 * e)];
      m.down.weight = &owned[size_t(3 + 3 * e)];
      moe.experts.push_back(m);
    }
    const std::vector<float> got = moe.forward(x).to_f32_vector();
    const std::vector<float> xs = x.to_f32_vector(), r = owned[0].to_f32_vector();
    for (int64_t t = 0; t < N; ++t) {
      const float* xt = xs.data() + t * C;
      std::vector<float> logit(static_cast<size_t>(E)), prob(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e) {
        double s = 0;
        for (int64_t c = 0; c < C; ++c) s += double(r[size_t(e * C + c)]) * xt[c];
        logit[size_t(e)] = float(s);
      }
      const float mx = *std::max_element(logit.begin(), logit.end());
      double z = 0;
      for (int64_t e = 0; e < E; ++e) z += std::exp(double(logit[size_t(e)] - mx));
      for (int64_t e = 0; e < E; ++e) prob[size_t(e)] = float(std::exp(double(logit[size_t(e)] - mx)) / z);
      const std::vector<int32_t> chosen = nn::MoeMlp::choose(prob, 1, E, 2);
      const double total = norm ? double(prob[size_t(chosen[0])]) + prob[size_t(chosen[1])] : 1.0;
      std::vector<double> want(static_cast<size_t>(C), 0.0);
      for (int32_t e : chosen) {
        const std::vector<float> g = owned[size_t(1 + 3 * e)].to_f32_vector(),
                                 u = owned[size_t(2 + 3 * e)].to_f32_vector(),
                                 d = owned[size_t(3 + 3 * e)].to_f32_vector();
        std::vector<double> h(static_cast<size_t>(F));
        for (int64_t f = 0; f < F; ++f) {
          double gs = 0, us = 0;
          for (int64_t c = 0; c < C; ++c)
            gs += double(g[size_t(f * C + c)]) * xt[c], us += double(u[size_t(f * C + c)]) * xt[c];
          h[size_t(f)] = double(silu(float(gs))) * us;
        }
        for (int64_t c = 0; c < C; ++c) {
          double o = 0;
          for (int64_t f = 0; f < F; ++f) o += double(d[size_t(c * F + f)]) * h[size_t(f)];
          want[size_t(c)] += prob[size_t(e)] / total * o;
        }
      }
      for (int64_t c = 0; c < C; ++c)
        EXPECT_NEAR(got[size_t(t * C + c)], want[size_t(c)], 1e-5 + 1e-4 * std::fabs(want[size_t(c)]))
            << "token " << t << " feature " << c << (norm ? " (renormalized)" : "");
    }
  }
}

TEST(MoeMlp, GatherAndScatterRowsGradients) {
  const Tensor ids = Tensor::from_i32({3, 0, 3, 1}, {4});  // row 3 twice: its gradient is read twice
  ag::GradcheckResult r = ag::gradcheck(
      [&](const std::vector<Tensor>& in) {
        Tensor s = ag::scatter_rows(in[0], ids, 5);
        return ag::sum(ag::mul(s, s));
      },
      {ops::randn({4, 3}, 5)});
  EXPECT_TRUE(r.ok) << r.report;
  ag::GradcheckResult g = ag::gradcheck(
      [&](const std::vector<Tensor>& in) {
        Tensor s = ag::gather_rows(in[0], ids);
        return ag::sum(ag::mul(s, s));
      },
      {ops::randn({5, 3}, 6)});
  EXPECT_TRUE(g.ok) << g.report;
}
