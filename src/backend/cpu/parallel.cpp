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

// A job's rows are cut into fixed chunks (a few a thread) that the threads take one at a time
// from a shared counter, the calling thread too: when another process holds a core (the shared
// 2-core machine), the threads that run take the chunks of the one that does not, instead of
// waiting for its fixed half. Which thread runs a chunk never changes a result (the callers'
// rows are independent). Workers wait for a new job number; after a job they spin a short while
// before sleeping, since decoding issues the next product within microseconds.
class Pool {
 public:
  explicit Pool(int workers) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { loop(); });
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

  void run(int64_t rows, const std::function<void(int64_t, int64_t)>& f, int per_thread) {
    std::lock_guard<std::mutex> serial(run_mu_);  // one job at a time (callers on several threads)
    uint64_t job;
    {
      std::lock_guard<std::mutex> lock(mu_);
      f_ = &f;
      rows_ = rows;
      chunks_ = std::min<int64_t>(rows, int64_t(size()) * std::max(1, per_thread));
      done_.store(0, std::memory_order_relaxed);
      job = ++job_;
      next_.store(job << 32, std::memory_order_release);  // chunk 0 of this job
      job_seen_.store(job, std::memory_order_release);
    }
    cv_.notify_all();
    work(job);
    while (done_.load(std::memory_order_acquire) != chunks_) std::this_thread::yield();
    std::exception_ptr err;
    std::swap(err, error_);
    if (err) std::rethrow_exception(err);
  }

 private:
  // Takes and runs chunks of job `job` until none is left (or a newer job has started: a worker
  // that woke late). A chunk's exception is kept (the first of a job) for run() to rethrow.
  void work(uint64_t job) {
    uint64_t s = next_.load(std::memory_order_acquire);
    for (;;) {
      if ((s >> 32) != job) return;
      const int64_t c = int64_t(s & 0xffffffffu), chunks = chunks_, rows = rows_;
      if (c >= chunks) return;
      if (!next_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
      try {
        (*f_)(c * rows / chunks, (c + 1) * rows / chunks);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mu_);
        if (!error_) error_ = std::current_exception();
      }
      done_.fetch_add(1, std::memory_order_acq_rel);
      s = next_.load(std::memory_order_acquire);
    }
  }
  void loop() {
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
      work(done);
    }
  }

  std::vector<std::thread> threads_;
  std::mutex mu_, run_mu_, error_mu_;
  std::exception_ptr error_;
  std::condition_variable cv_;
  uint64_t job_ = 0;
  std::atomic<uint64_t> job_seen_{0};
  std::atomic<uint64_t> next_{0};  // (job << 32) | the next chunk to take
  std::atomic<int64_t> done_{0};   // chunks of the current job finished
  bool stop_ = false;
  const std::function<void(int64_t, int64_t)>* f_ = nullptr;
  int64_t rows_ = 0, chunks_ = 0;
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

void parallel_rows(int64_t rows, int64_t work, const std::function<void(int64_t, int64_t)>& f, int per_thread) {
  if (threads() <= 1 || rows < 2 || work < 2) return f(0, rows);
  pool().run(rows, f, per_thread);
}

}  // namespace lmtune::cpu
