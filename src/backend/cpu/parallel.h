// Rows of a CPU kernel split over the cores by one pool of worker threads that lives as long as
// the process: a decode step runs ~100 small products, and starting threads for each (what
// std::thread per call costs: tens of microseconds) was a tenth of a small model's step.
#pragma once
#include <cstdint>
#include <functional>

namespace lmtune::cpu {

// Runs f(r0, r1) over [0, rows) in contiguous pieces, one a core, the calling thread taking the
// first; on the calling thread alone when `work` is below 2 (each caller scales its element count
// so that 2 repays a second core), on one core, or for one row. Returns when every piece has run;
// then rethrows the first exception a piece threw. Not reentrant: f must not call parallel_rows.
void parallel_rows(int64_t rows, int64_t work, const std::function<void(int64_t, int64_t)>& f);

// A streaming kernel over n elements (f(i0, i1) on a piece), split from 2^16 element-costs on:
// `cost` is a rough per-element weight (1 for an add, ~16 for a kernel with an exp).
inline void parallel_elems(int64_t n, int64_t cost, const std::function<void(int64_t, int64_t)>& f) {
  parallel_rows(n, n * cost >> 15, f);
}

// While alive, OpenBLAS runs each call on the calling thread: for products issued from the pool's
// pieces, so that OpenBLAS's own threads and the pool never share the cores at once.
class BlasOneThread {
 public:
  BlasOneThread();
  ~BlasOneThread();
  BlasOneThread(const BlasOneThread&) = delete;
  BlasOneThread& operator=(const BlasOneThread&) = delete;

 private:
  int saved_;
};

}  // namespace lmtune::cpu
