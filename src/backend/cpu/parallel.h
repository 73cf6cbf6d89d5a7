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

}  // namespace lmtune::cpu
