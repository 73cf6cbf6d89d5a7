#include "backend/cpu/profile.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace lmtune::cpu {

namespace {

struct Row {
  long long calls = 0, ns = 0;
};

class Profile {
 public:
  ~Profile() { print(); }
  void add(const char* name, long long ns) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!started_) {
      start_ = std::chrono::steady_clock::now() - std::chrono::nanoseconds(ns);
      started_ = true;
    }
    Row& r = rows_[name];
    ++r.calls;
    r.ns += ns;
  }

 private:
  void print() {
    if (!started_) return;
    double wall = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count();
    std::vector<std::pair<std::string, Row>> v(rows_.begin(), rows_.end());
    std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
    double sum = 0;
    std::fprintf(stderr, "\nLMTUNE_CPU_PROFILE: wall time per CPU kernel, %.1f ms since the first call\n", wall);
    std::fprintf(stderr, "%-34s %10s %12s %7s %10s\n", "kernel", "calls", "total ms", "share", "us/call");
    for (const auto& [name, r] : v) {
      double ms = double(r.ns) / 1e6;
      sum += ms;
      std::fprintf(stderr, "%-34s %10lld %12.1f %6.1f%% %10.1f\n", name.c_str(), r.calls, ms, 100 * ms / wall,
                   1e3 * ms / double(r.calls));
    }
    std::fprintf(stderr, "%-34s %10s %12.1f %6.1f%%\n", "(all kernels)", "", sum, 100 * sum / wall);
    std::fprintf(stderr, "%-34s %10s %12.1f %6.1f%%\n", "(outside the kernels)", "", wall - sum,
                 100 * (wall - sum) / wall);
  }
  std::mutex mu_;
  std::map<std::string, Row> rows_;
  std::chrono::steady_clock::time_point start_;
  bool started_ = false;
};

Profile& profile() {
  static Profile p;
  return p;
}

// LMTUNE_CPU_PROFILE, read once: 0 off, 1 on, 2 on with a row per product shape ("shapes").
int profile_mode() {
  static const int mode = [] {
    const char* e = std::getenv("LMTUNE_CPU_PROFILE");
    if (!e || !*e || std::strcmp(e, "0") == 0) return 0;
    return std::strcmp(e, "shapes") == 0 ? 2 : 1;
  }();
  return mode;
}

}  // namespace

bool profiling() { return profile_mode() != 0; }

bool profiling_shapes() { return profile_mode() == 2; }

void profile_add(const char* name, long long ns) { profile().add(name, ns); }

}  // namespace lmtune::cpu
