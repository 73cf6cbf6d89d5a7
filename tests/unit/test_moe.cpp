// The mixture-of-experts MLP (nn/moe.h): top-k choice and its ties, the gather/scatter path against
// a per-token loop over the chosen experts, the grouped path (one gather, grouped products, one
// scatter) against the loop over the experts with all gradients (CPU f32; CUDA bf16 and f16 against
// the CPU and against CUDA's own loop), ops::grouped_matmul with empty groups, and scatter_rows'
// gradient.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "backend/backend.h"
#include "core/error.h"
#include "core/runtime_config.h"
#include "nn/moe.h"
#include "tolerance.h"

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

namespace {

// Forward and backward of a mixture with every weight and x trainable, by the grouped path or the
// loop over the experts; all values read back as f32.
struct MoeRun {
  std::vector<float> out, dx, drouter;
  std::vector<std::vector<float>> dexp;  // gate, up, down of expert 0, then of expert 1, ...
};

MoeRun run_moe(Device dev, DType dt, bool grouped, int64_t top_k, bool norm, nn::Activation act) {
  RuntimeConfig rc = runtime_config();
  rc.moe_grouped = grouped;
  ScopedRuntimeConfig scoped(rc);
  const int64_t C = 16, F = 24, E = 6, N = 23;
  auto leaf = [&](const Tensor& t) { return ag::param(ops::to(ops::cast(t, dt), dev)); };
  // x in (0, 1) and the last expert's router row strongly negative: expert 5 is never chosen (an
  // empty group in every product).
  std::vector<float> r = ops::randn({E, C}, 1, 0.8f).to_f32_vector();
  for (int64_t c = 0; c < C; ++c) r[size_t((E - 1) * C + c)] = -4.f;
  std::vector<Tensor> owned;
  owned.reserve(size_t(1 + 3 * E));
  owned.push_back(leaf(Tensor::from_f32(r, {E, C})));
  for (int64_t e = 0; e < E; ++e) {
    owned.push_back(leaf(ops::randn({F, C}, 10 + e, 0.3f)));
    owned.push_back(leaf(ops::randn({F, C}, 20 + e, 0.3f)));
    owned.push_back(leaf(ops::randn({C, F}, 30 + e, 0.3f)));
  }
  const Tensor x = leaf(ops::uniform({1, N, C}, 2, 0.f, 1.f));
  nn::MoeMlp moe;
  moe.router.weight = &owned[0];
  moe.top_k = top_k, moe.norm_topk = norm;
  for (int64_t e = 0; e < E; ++e) {
    nn::GatedMlp m;
    m.gate.weight = &owned[size_t(1 + 3 * e)], m.up.weight = &owned[size_t(2 + 3 * e)];
    m.down.weight = &owned[size_t(3 + 3 * e)];
    m.act = act;
    moe.experts.push_back(m);
  }
  EXPECT_EQ(moe.grouped(dt), grouped);  // dense experts take the grouped path unless it is switched off
  const Tensor out = moe.forward(x);
  const Tensor cot = ops::to(ops::cast(ops::randn({1, N, C}, 3), dt), dev);
  ag::backward(ag::sum(ag::mul(out, cot)));
  auto host = [](const Tensor& t) { return ops::to(ops::cast(t, DType::f32), Device::cpu).to_f32_vector(); };
  MoeRun run;
  run.out = host(out);
  run.dx = host(ag::grad(x));
  run.drouter = host(ag::grad(owned[0]));
  for (size_t i = 1; i < owned.size(); ++i) {
    const Tensor& g = ag::grad(owned[i]);
    // The never-chosen expert gets no gradient from the loop (undefined) and zeros from the grouped path.
    run.dexp.push_back(g.defined() ? host(g) : std::vector<float>(size_t(owned[i].numel()), 0.f));
  }
  return run;
}

void expect_runs_close(const MoeRun& a, const MoeRun& r, double atol, double rtol, const std::string& what) {
  expect_close(a.out, r.out, atol, rtol, what + ": output");
  expect_close(a.dx, r.dx, atol, rtol, what + ": d x");
  expect_close(a.drouter, r.drouter, atol, rtol, what + ": d router");
  ASSERT_EQ(a.dexp.size(), r.dexp.size());
  for (size_t i = 0; i < a.dexp.size(); ++i)
    expect_close(a.dexp[i], r.dexp[i], atol, rtol, what + ": d expert weight " + std::to_string(i));
}

}  // namespace

TEST(MoeMlp, GroupedEqualsTheLoopOverExpertsWithGradients) {
  for (int64_t k : {1, 2, 3})
    for (bool norm : {true, false})
      for (nn::Activation act : {nn::Activation::silu, nn::Activation::gelu_tanh}) {
        const std::string what = "top " + std::to_string(k) + (norm ? " renormalized" : "") +
                                 (act == nn::Activation::silu ? " silu" : " gelu");
        const MoeRun g = run_moe(Device::cpu, DType::f32, true, k, norm, act);
        const MoeRun l = run_moe(Device::cpu, DType::f32, false, k, norm, act);
        // The same products on the same rows and one f32 sum per token in the same order: equal. d x and
        // d router also sum the router's share with the experts' in an order the tape sets: a few ulps.
        EXPECT_EQ(g.out, l.out) << what;
        EXPECT_EQ(g.dexp, l.dexp) << what;
        expect_close(g.dx, l.dx, 1e-7, 1e-6, what + ": d x");
        expect_close(g.drouter, l.drouter, 1e-7, 1e-6, what + ": d router");
      }
}

TEST(MoeMlp, GroupedMatmulSkipsEmptyGroupsAndChecksOffsets) {
  const Tensor x = ops::randn({5, 3}, 7);
  const std::vector<Tensor> ws = {ops::randn({4, 3}, 8), ops::randn({4, 3}, 9), ops::randn({4, 3}, 10)};
  const std::vector<int64_t> off = {0, 2, 2, 5};  // group 1 empty
  const std::vector<float> y = ops::grouped_matmul(x, ws, off, true).to_f32_vector();
  for (size_t g : {size_t(0), size_t(2)}) {
    const std::vector<float> want = ops::linear(x.slice_rows(off[g], off[g + 1]), ws[g]).to_f32_vector();
    const std::vector<float> got(y.begin() + off[g] * 4, y.begin() + off[g + 1] * 4);
    EXPECT_EQ(got, want) << "group " << g;
  }
  const std::vector<Tensor> dw =
      ops::grouped_matmul_wgrad(ops::full({5, 4}, 1.f, DType::f32, Device::cpu), x, off, {true, true, false});
  EXPECT_EQ(dw[1].to_f32_vector(), std::vector<float>(12, 0.f));  // an empty group's gradient is zero
  EXPECT_FALSE(dw[2].defined());
  EXPECT_THROW(ops::grouped_matmul(x, ws, {0, 2, 1, 5}, true), Error);  // decreasing
  EXPECT_THROW(ops::grouped_matmul(x, ws, {0, 2, 5}, true), Error);     // too few offsets
  EXPECT_THROW(ops::grouped_matmul(x, ws, {0, 2, 2, 4}, true), Error);  // not ending at the rows
  EXPECT_THROW(ops::grouped_matmul(x, {ws[0], ops::randn({4, 2}, 1), ws[2]}, off, true), Error);  // shapes differ
}

TEST(MoeMlp, CudaGroupedAgainstCpuAndTheLoop) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device (or lmtune built without CUDA): skipping";
  const MoeRun ref = run_moe(Device::cpu, DType::f32, true, 2, true, nn::Activation::silu);
  for (bool one_launch : {false, true})  // cuBLASLt product by product, or cuBLAS's grouped GEMM
    for (DType dt : {DType::bf16, DType::f16}) {
      RuntimeConfig rc = runtime_config();
      rc.cuda_grouped_gemm = one_launch;
      ScopedRuntimeConfig scoped(rc);
      const MoeRun g = run_moe(Device::cuda, dt, true, 2, true, nn::Activation::silu);
      const MoeRun l = run_moe(Device::cuda, dt, false, 2, true, nn::Activation::silu);
      // 16-bit weights and activations against f32: the inputs themselves are rounded (2^-8 for bf16).
      const double tol = dt == DType::bf16 ? 3e-2 : 5e-3;
      const std::string what = std::string(dtype_name(dt)) + (one_launch ? " (one launch)" : " (cuBLASLt each)");
      expect_runs_close(g, ref, tol, tol, what + " grouped vs CPU f32");
      expect_runs_close(g, l, tol, tol, what + " grouped vs CUDA's loop");
    }
}
