#include "backend/cpu/parallel.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace lmtune::cpu {

namespace {

// Workers wait for a new job number; each runs its piece, then counts itself done. After a job
// they spin a short while before sleeping, since decoding issues the next product within
// microseconds.
class Pool {
 public:
  explicit Pool(int workers) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this, i] { loop(i + 1); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      ++job_;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }
  int size() const { return int(threads_.size()) + 1; }

  void run(int64_t rows, const std::function<void(int64_t, int64_t)>& f) {
    std::lock_guard<std::mutex> serial(run_mu_);  // one job at a time (callers on several threads)
    const int n = size();
    {
      std::lock_guard<std::mutex> lock(mu_);
      f_ = &f;
      rows_ = rows;
      pieces_ = n;
      pending_.store(n - 1, std::memory_order_relaxed);
      job_seen_.store(job_ + 1, std::memory_order_release);
      ++job_;
    }
    cv_.notify_all();
    guarded(0);
    while (pending_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
    std::exception_ptr err;
    std::swap(err, error_);
    if (err) std::rethrow_exception(err);
  }

 private:
  void piece(int i) {
    const int64_t per = (rows_ + pieces_ - 1) / pieces_, r0 = std::min(rows_, i * per), r1 = std::min(rows_, r0 + per);
    if (r0 < r1) (*f_)(r0, r1);
  }
  // A piece, its exception kept (the first of a job) for run() to rethrow once all are done.
  void guarded(int i) {
    try {
      piece(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mu_);
      if (!error_) error_ = std::current_exception();
    }
  }
  void loop(int index) {
    uint64_t done = 0;
    for (;;) {
      // Spin ~50 us for the next job, then sleep on the condition variable.
      bool got = false;
      for (int spin = 0; spin < 2000 && !got; ++spin) {
        got = job_seen_.load(std::memory_order_acquire) != done;
        if (!got) std::this_thread::yield();
      }
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return job_ != done; });
      done = job_;
      if (stop_) return;
      lock.unlock();
      guarded(index);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  std::vector<std::thread> threads_;
  std::mutex mu_, run_mu_, error_mu_;
  std::exception_ptr error_;
  std::condition_variable cv_;
  uint64_t job_ = 0;
  std::atomic<uint64_t> job_seen_{0};
  bool stop_ = false;
  const std::function<void(int64_t, int64_t)>* f_ = nullptr;
  int64_t rows_ = 0;
  int pieces_ = 1;
  std::atomic<int> pending_{0};
};

Pool& pool() {
  static Pool p(threads() - 1);
  return p;
}

}  // namespace

int threads() {
  static const int n = [] {
    const int hw = std::max(1, int(std::thread::hardware_concurrency()));
    const int blas = openblas_get_num_threads();  // OPENBLAS_NUM_THREADS, else OMP_NUM_THREADS, else the cores
    openblas_set_num_threads(1);
    return std::clamp(blas, 1, hw);
  }();
  return n;
}

void parallel_rows(int64_t rows, int64_t work, const std::function<void(int64_t, int64_t)>& f) {
  if (threads() <= 1 || rows < 2 || work < 2) return f(0, rows);
  pool().run(rows, f);
}

}  // namespace lmtune::cpu
