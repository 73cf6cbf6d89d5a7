// The CPU backend's threading and vectorized pieces: products large enough to be split over the
// pool (by rows, by columns, the one-row GEMV by outputs) against a double reference in every
// transpose; the same product twice gives the same bits; parallel_rows covers each row once
// and passes a chunk's exception on; exp_poly within 2 ulp of exp.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "backend/cpu/parallel.h"
#include "backend/cpu/vexp.h"
#include "ops/ops.h"

using namespace lmtune;

namespace {
std::vector<float> vec(const Tensor& t) { return ops::to(t, Device::cpu, DType::f32).to_f32_vector(); }
}  // namespace

TEST(CpuParallel, SplitProductsMatchTheReference) {
  struct Case {
    int64_t M, K, N;
  };
  // Rows split (M >= N), columns split (M < N), the GEMV split (M = 1), and a LoRA-like K = 8.
  for (Case c : {Case{300, 200, 8}, Case{8, 200, 300}, Case{1, 300, 600}, Case{300, 8, 200}})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        Tensor a = ops::randn(ta ? Shape{c.K, c.M} : Shape{c.M, c.K}, 1);
        Tensor b = ops::randn(tb ? Shape{c.N, c.K} : Shape{c.K, c.N}, 2);
        auto got = vec(ops::matmul(a, b, ta, tb)), again = vec(ops::matmul(a, b, ta, tb));
        auto av = vec(a), bv = vec(b);
        for (int64_t i = 0; i < c.M; ++i)
          for (int64_t j = 0; j < c.N; ++j) {
            double ref = 0;
            for (int64_t k = 0; k < c.K; ++k)
              ref += double(ta ? av[size_t(k * c.M + i)] : av[size_t(i * c.K + k)]) *
                     double(tb ? bv[size_t(j * c.K + k)] : bv[size_t(k * c.N + j)]);
            ASSERT_NEAR(got[size_t(i * c.N + j)], ref, 1e-4 * (1 + std::fabs(ref)))
                << "M " << c.M << " K " << c.K << " N " << c.N << " ta " << ta << " tb " << tb << " at " << i << ","
                << j;
          }
        ASSERT_EQ(got, again) << "the same product gave other bits";
      }
}

TEST(CpuParallel, RowsCoveredOnceAndErrorsPassed) {
  for (int64_t rows : {2, 3, 7, 8, 9, 1000}) {
    std::vector<std::atomic<int>> seen(static_cast<size_t>(rows));
    cpu::parallel_rows(rows, 1 << 20, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) seen[size_t(r)].fetch_add(1);
    });
    for (int64_t r = 0; r < rows; ++r) ASSERT_EQ(seen[size_t(r)].load(), 1) << "row " << r << " of " << rows;
  }
  EXPECT_THROW(cpu::parallel_rows(100, 1 << 20,
                                  [](int64_t r0, int64_t r1) {
                                    if (r0 <= 50 && 50 < r1) throw std::runtime_error("chunk failed");
                                  }),
               std::runtime_error);
  int64_t after = 0;  // the pool still works after a failed job
  cpu::parallel_rows(1, 1 << 20, [&](int64_t r0, int64_t r1) { after += r1 - r0; });
  EXPECT_EQ(after, 1);
}

TEST(CpuParallel, ExpPolyWithinTwoUlp) {
  double worst = 0;
  for (float x = -87.f; x <= 88.f; x += 0.0137f) {
    const double e = std::exp(double(x)), got = cpu::exp_poly(x);
    worst = std::max(worst, std::fabs(got - e) / e);
  }
  EXPECT_LT(worst, 2 * 5.97e-8) << "relative error " << worst;
  EXPECT_EQ(cpu::exp_poly(-std::numeric_limits<float>::infinity()), 0.f);
  EXPECT_EQ(cpu::exp_poly(0.f), 1.f);
  EXPECT_EQ(cpu::exp_poly(std::numeric_limits<float>::infinity()), std::numeric_limits<float>::infinity());
  // NaN stays NaN (a NaN loss must stop training), with no undefined float-to-int conversion on the way
  // (UBSan in the sanitized build: NaN weights through the CLI).
  EXPECT_TRUE(std::isnan(cpu::exp_poly(std::numeric_limits<float>::quiet_NaN())));
  std::vector<float> x(37), y(37);
  for (size_t i = 0; i < x.size(); ++i) x[i] = -0.25f * float(i);
  const double sum = cpu::exp_sub_sum(x.data(), -1.f, y.data(), int64_t(x.size()));
  double ref = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(y[i], cpu::exp_poly(x[i] + 1.f));
    ref += std::exp(double(x[i]) + 1.0);
  }
  EXPECT_NEAR(sum, ref, 1e-6 * ref);
  EXPECT_EQ(cpu::max_of(x.data(), int64_t(x.size())), 0.f);
}
