// The one tolerance helper: |a - r| <= atol + rtol * |r| elementwise, reporting the worst
// elements on failure.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

inline ::testing::AssertionResult all_close(const std::vector<float>& a, const std::vector<float>& r, double atol,
                                            double rtol) {
  if (a.size() != r.size()) return ::testing::AssertionFailure() << "size " << a.size() << " vs reference " << r.size();
  std::vector<std::pair<double, size_t>> bad;
  double worst_rel = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    double err = std::fabs(double(a[i]) - r[i]);
    double lim = atol + rtol * std::fabs(r[i]);
    if (!(err <= lim)) bad.push_back({err / (lim > 0 ? lim : 1), i});
    worst_rel = std::max(worst_rel, err / std::max(1e-30, std::fabs(double(r[i]))));
  }
  if (bad.empty()) return ::testing::AssertionSuccess();
  std::sort(bad.rbegin(), bad.rend());
  std::ostringstream os;
  os << bad.size() << " of " << a.size() << " elements outside atol " << atol << " rtol " << rtol << "; worst:";
  for (size_t j = 0; j < std::min<size_t>(5, bad.size()); ++j)
    os << " [" << bad[j].second << "] " << a[bad[j].second] << " vs " << r[bad[j].second];
  return ::testing::AssertionFailure() << os.str();
}

inline void expect_close(const std::vector<float>& a, const std::vector<float>& r, double atol, double rtol,
                         const std::string& what) {
  EXPECT_TRUE(all_close(a, r, atol, rtol)) << what;
}

// max |a - r| / max |r|: the relative error of a whole tensor.
inline double max_rel_error(const std::vector<float>& a, const std::vector<float>& r) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < r.size(); ++i) {
    num = std::max(num, std::fabs(double(a[i]) - r[i]));
    den = std::max(den, std::fabs(double(r[i])));
  }
  return den > 0 ? num / den : num;
}
