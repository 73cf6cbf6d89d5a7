// Rows of a CPU kernel split over the cores by one pool of worker threads that lives as long as
// the process: a decode step runs ~100 small products, and starting threads for each (what
// std::thread per call costs: tens of microseconds) was a tenth of a small model's step.
#pragma once
#include <cstdint>
#include <functional>

namespace lmtune::cpu {

// The CPU backend's threads: OpenBLAS's count as it starts (OPENBLAS_NUM_THREADS, else
// OMP_NUM_THREADS, else the cores), at most the cores. The first call also sets OpenBLAS to one
// thread for good: every product runs on its caller's thread and the pool below does all the
// splitting, so OpenBLAS's threads (which spin for a while after each call) and the pool's never
// compete for the same cores. Call it before any OpenBLAS call.
int threads();

// Runs f(r0, r1) over [0, rows) in contiguous chunks (a fixed cut, up to `per_thread` a thread) that the
// threads (threads(), the calling one included) take as they come free; on the calling thread
// alone when `work` is below 2 (each caller scales its element count so that 2 repays a second
// core), on one thread, or for one row. f must give each row the same result whichever chunk or
// thread runs it. Returns when every chunk has run; then rethrows the first exception a chunk
// threw. Not reentrant: f must not call parallel_rows. More chunks share a loaded machine's free
// core better; fewer cost less where each chunk repeats work (an sgemm packs all of B again).
void parallel_rows(int64_t rows, int64_t work, const std::function<void(int64_t, int64_t)>& f, int per_thread = 4);

// A streaming kernel over n elements (f(i0, i1) on a piece), split from 2^16 element-costs on:
// `cost` is a rough per-element weight (1 for an add, ~16 for a kernel with an exp).
inline void parallel_elems(int64_t n, int64_t cost, const std::function<void(int64_t, int64_t)>& f) {
  parallel_rows(n, n * cost >> 15, f);
}

}  // namespace lmtune::cpu
