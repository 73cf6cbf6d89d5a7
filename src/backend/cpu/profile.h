// An opt-in wall-time profile of the CPU backend's kernels: with LMTUNE_CPU_PROFILE=1 in the
// environment every CpuBackend call adds its wall time to its kernel's row, and at exit a table
// (calls, total ms, share of the time since the first call) goes to stderr. Off, a scope costs
// one load of a cached flag. LMTUNE_CPU_PROFILE=shapes: the products get a row per shape and layout
// (M x N x K, which operands are transposed, the batch), to see which ones run below the rest.
#pragma once
#include <chrono>

namespace lmtune::cpu {

bool profiling();
// LMTUNE_CPU_PROFILE=shapes: rows per product shape.
bool profiling_shapes();
// Adds one call of `ns` nanoseconds to the row `name` (a string literal).
void profile_add(const char* name, long long ns);

class ProfileScope {
 public:
  explicit ProfileScope(const char* name) : name_(profiling() ? name : nullptr) {
    if (name_) t0_ = std::chrono::steady_clock::now();
  }
  ~ProfileScope() {
    if (name_)
      profile_add(name_,
                  std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0_).count());
  }
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  const char* name_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace lmtune::cpu

#define LMT_CPU_PROFILE_CAT2(a, b) a##b
#define LMT_CPU_PROFILE_CAT(a, b) LMT_CPU_PROFILE_CAT2(a, b)
#define LMT_CPU_PROFILE(name) ::lmtune::cpu::ProfileScope LMT_CPU_PROFILE_CAT(lmt_prof_, __LINE__)(name)
