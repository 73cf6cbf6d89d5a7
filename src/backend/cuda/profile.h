// Where a GPU run's time goes, by kernel (LMTUNE_CUDA_PROFILE=1): every kernel launched through
// launch() and every cuBLASLt product is bracketed by two CUDA events on the backend's stream; the
// pairs are resolved in batches and summed by name, and a table (share, total ms, calls, mean us)
// goes to stderr at exit. Launches inside a CUDA graph capture are not timed (a graph's replay is
// one unit). Off, a Scope costs one branch. Internal to src/backend/cuda.
#pragma once
#include <string>

namespace lmtune::cuda_profile {

bool enabled();

class Scope {
 public:
  explicit Scope(const char* name) : on_(enabled()) {
    if (on_) begin(name);
  }
  explicit Scope(const std::string& name) : on_(enabled()) {
    if (on_) begin(name.c_str());
  }
  ~Scope() {
    if (on_) end();
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  void begin(const char* name);
  void end();
  bool on_;
  int slot_ = -1;
};

}  // namespace lmtune::cuda_profile
