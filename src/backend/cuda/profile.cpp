// LMTUNE_CUDA_PROFILE: kernel times by name from CUDA events (profile.h).
#include "backend/cuda/profile.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "core/runtime_config.h"

namespace lmtune::cuda_profile {
namespace {

struct Pending {
  std::string name;
  cudaEvent_t start = nullptr, stop = nullptr;
};
struct Total {
  double ms = 0;
  int64_t calls = 0;
};

// Every timed launch of the process; guarded by mu (launches come from one thread at a time, but
// the server's scheduler and a CLI's main thread may both launch).
struct Profile {
  std::mutex mu;
  std::vector<Pending> pending;
  std::vector<cudaEvent_t> pool;
  std::map<std::string, Total> totals;
  int64_t skipped_captured = 0;
  bool registered = false;

  cudaEvent_t event() {
    if (!pool.empty()) {
      cudaEvent_t e = pool.back();
      pool.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    LMT_CUDA_CHECK(cudaEventCreate(&e));
    return e;
  }
  // Waits for every pending pair and adds it to the totals.
  void resolve() {
    if (pending.empty()) return;
    LMT_CUDA_CHECK(cudaStreamSynchronize(cuda_impl().stream()));
    for (Pending& p : pending) {
      float ms = 0;
      if (p.stop && cudaEventElapsedTime(&ms, p.start, p.stop) == cudaSuccess) {
        Total& t = totals[p.name];
        t.ms += ms;
        t.calls += 1;
      }
      pool.push_back(p.start);
      if (p.stop) pool.push_back(p.stop);
    }
    pending.clear();
  }
};

Profile& profile() {
  static Profile* p = new Profile;  // never destroyed: the report runs at exit
  return *p;
}

void report() {
  Profile& p = profile();
  std::lock_guard<std::mutex> lock(p.mu);
  try {
    p.resolve();
  } catch (...) {
    return;  // the device is gone (a failed run): nothing trustworthy to print
  }
  std::vector<std::pair<std::string, Total>> rows(p.totals.begin(), p.totals.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
  double all = 0;
  int64_t calls = 0;
  for (const auto& r : rows) all += r.second.ms, calls += r.second.calls;
  std::fprintf(stderr, "[profile] CUDA kernel time by name (LMTUNE_CUDA_PROFILE=1): %lld launches, %.3f ms in all",
               (long long)calls, all);
  if (p.skipped_captured)
    std::fprintf(stderr, " (%lld launches inside graph captures not timed)", (long long)p.skipped_captured);
  std::fprintf(stderr, "\n[profile]  share   total ms     calls    mean us  name\n");
  for (const auto& [name, t] : rows)
    std::fprintf(stderr, "[profile] %5.1f%% %10.3f %9lld %10.2f  %s\n", all > 0 ? 100.0 * t.ms / all : 0.0, t.ms,
                 (long long)t.calls, 1000.0 * t.ms / double(std::max<int64_t>(1, t.calls)), name.c_str());
}

}  // namespace

bool enabled() {
  static const bool on = runtime_config().cuda_profile;
  return on;
}

void Scope::begin(const char* name) {
  Profile& p = profile();
  cudaStream_t s = cuda_impl().stream();
  cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  LMT_CUDA_CHECK(cudaStreamIsCapturing(s, &cs));
  std::lock_guard<std::mutex> lock(p.mu);
  if (cs != cudaStreamCaptureStatusNone) {
    ++p.skipped_captured;
    return;
  }
  if (!p.registered) {
    p.registered = true;
    std::atexit(report);
  }
  if (p.pending.size() >= 4096) p.resolve();
  Pending e;
  e.name = name;
  e.start = p.event();
  LMT_CUDA_CHECK(cudaEventRecord(e.start, s));
  slot_ = int(p.pending.size());
  p.pending.push_back(std::move(e));
}

void Scope::end() {
  if (slot_ < 0) return;
  Profile& p = profile();
  std::lock_guard<std::mutex> lock(p.mu);
  if (slot_ >= int(p.pending.size())) return;  // resolved meanwhile (cannot happen on one thread)
  Pending& e = p.pending[size_t(slot_)];
  e.stop = p.event();
  LMT_CUDA_CHECK(cudaEventRecord(e.stop, cuda_impl().stream()));
}

}  // namespace lmtune::cuda_profile
