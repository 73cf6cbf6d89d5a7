// Data parallel's gradient sums overlapped with backward (issue 14), as PyTorch's DDP does it: the
// trainable parameters are grouped into buckets of about LMTUNE_DIST_BUCKET_MB megabytes (default 25)
// in the order backward finishes them (the last block's first), and a worker thread sums a bucket
// across the ranks as soon as every gradient in it is final, while backward goes on with the blocks
// below. The sums are the same element-wise sums in rank order as all_reduce_gradients' one buffer,
// so the result is bit for bit the same, only sooner.
//
// With a device collective (NCCL) a bucket is a device buffer summed on the collective's own stream
// while the device's stream goes on with backward; else host buffers through dist::Comm (the CPU, or
// CUDA without NCCL, where each bucket is copied to the host as it completes) summed by a worker
// thread. LMTUNE_DIST_OVERLAP=0 turns it off (the sums are then made after backward).
#pragma once
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "backend/collective.h"
#include "core/tensor.h"
#include "dist/comm.h"

namespace lmtune::train {

class GradientBuckets {
 public:
  // Hooks every parameter's gradient (autograd's on_grad); starts the worker thread (host path).
  GradientBuckets(dist::Comm& comm, DeviceCollective* device, std::vector<std::pair<std::string, Tensor>> params);
  ~GradientBuckets();  // unhooks, stops the worker
  GradientBuckets(const GradientBuckets&) = delete;
  GradientBuckets& operator=(const GradientBuckets&) = delete;

  // The next backward ends a step (the last micro-batch of an update): sum buckets as they fill.
  void arm();
  // After that backward (or instead of it, on a rank without rows): the buckets not started yet
  // are summed (a parameter without a gradient adds zeros), every sum is waited for, and each
  // parameter's gradient becomes the group's sum. Rethrows the worker's error (a rank gone).
  void finish();
  size_t bucket_count() const { return buckets_.size(); }
  // Of the last finished step: buckets started during backward, and whether they were summed again
  // (a gradient grew after its bucket had started, on some rank).
  size_t started_in_backward() const { return started_in_backward_; }
  bool resummed() const { return resummed_; }

  // Whether the environment leaves the overlap on (LMTUNE_DIST_OVERLAP, default on).
  static bool enabled();

 private:
  struct Bucket {
    std::vector<size_t> params;  // indices into params_
    size_t floats = 0;
    size_t waiting = 0;      // gradients not final yet in this step
    std::vector<float> buf;  // the gradients, then their sums (host path)
    Tensor dev;              // the same on the device (device path)
  };
  void on_grad(size_t param);
  void fill_and_start(size_t bucket);
  void start_ready();  // buckets start in order: the ranks' collectives must line up
  void worker();
  void wait_all(size_t count);  // until count buckets are summed

  dist::Comm& comm_;
  DeviceCollective* device_;
  std::vector<std::pair<std::string, Tensor>> params_;
  std::vector<size_t> bucket_of_, offset_;  // per parameter
  std::vector<bool> seen_;                  // per parameter, in this step
  std::vector<Bucket> buckets_;
  size_t next_ = 0;  // the first bucket not started
  bool armed_ = false;
  bool late_ = false;  // a gradient grew after its bucket was started: redo its sums
  size_t started_in_backward_ = 0;
  bool resummed_ = false;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<size_t> queue_;
  size_t done_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread thread_;
};

}  // namespace lmtune::train
