#include "train/grad_buckets.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "autograd/tape.h"
#include "core/error.h"
#include "ops/ops.h"
#include "train/sharding.h"

namespace lmtune::train {

namespace {

size_t bucket_floats() {
  double mb = 25;
  if (const char* v = std::getenv("LMTUNE_DIST_BUCKET_MB"); v && *v) {
    char* end = nullptr;
    mb = std::strtod(v, &end);
    LMT_CHECK(end && *end == '\0' && mb > 0 && mb <= 1e6, "[dist] LMTUNE_DIST_BUCKET_MB=", v,
              " is not a number of megabytes above 0");
  }
  return std::max<size_t>(1, size_t(mb * 1e6 / sizeof(float)));
}

}  // namespace

bool GradientBuckets::enabled() {
  const char* v = std::getenv("LMTUNE_DIST_OVERLAP");
  if (!v || !*v) return true;
  LMT_CHECK(std::string(v) == "0" || std::string(v) == "1", "[dist] LMTUNE_DIST_OVERLAP=", v, " is not 0 or 1");
  return v[0] == '1';
}

GradientBuckets::GradientBuckets(dist::Comm& comm, DeviceCollective* device,
                                 std::vector<std::pair<std::string, Tensor>> params)
    : comm_(comm), device_(device), params_(std::move(params)) {
  // Backward finishes the last block first: buckets from the last block down, the weights outside
  // the blocks (the embeddings finish last) at the end; by name within a block.
  std::vector<size_t> order(params_.size());
  std::iota(order.begin(), order.end(), size_t(0));
  auto key = [&](size_t i) {
    const int64_t b = block_of_weight(params_[i].first);
    return std::make_pair(b < 0 ? INT64_MAX : -b, params_[i].first);
  };
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return key(x) < key(y); });
  const size_t cap = bucket_floats();
  bucket_of_.assign(params_.size(), 0);
  offset_.assign(params_.size(), 0);
  seen_.assign(params_.size(), false);
  for (size_t i : order) {
    const size_t n = size_t(params_[i].second.numel());
    if (buckets_.empty() || (buckets_.back().floats > 0 && buckets_.back().floats + n > cap)) buckets_.emplace_back();
    Bucket& b = buckets_.back();
    bucket_of_[i] = buckets_.size() - 1;
    offset_[i] = b.floats;
    b.params.push_back(i);
    b.floats += n;
  }
  for (Bucket& b : buckets_) b.waiting = b.params.size();
  for (size_t i = 0; i < params_.size(); ++i) params_[i].second.ag()->on_grad = [this, i] { on_grad(i); };
  if (!device_) thread_ = std::thread([this] { worker(); });
}

GradientBuckets::~GradientBuckets() {
  for (auto& [name, p] : params_) p.ag()->on_grad = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void GradientBuckets::arm() { armed_ = true; }

void GradientBuckets::on_grad(size_t i) {
  if (!armed_) return;
  if (seen_[i]) {  // a second backward pass added to it (a weight used in two checkpointed blocks)
    late_ = true;
    return;
  }
  seen_[i] = true;
  --buckets_[bucket_of_[i]].waiting;
  start_ready();
}

void GradientBuckets::start_ready() {
  while (next_ < buckets_.size() && buckets_[next_].waiting == 0) fill_and_start(next_++);
}

void GradientBuckets::fill_and_start(size_t bi) {
  Bucket& b = buckets_[bi];
  if (device_) {  // copies queued on the device's stream; the sum waits for them on its own
    const Device dev = params_[b.params[0]].second.device();
    b.dev = ops::zeros({int64_t(b.floats)}, DType::f32, dev);
    for (size_t i : b.params) {
      const Tensor& g = params_[i].second.ag()->grad;
      if (!g.defined()) continue;
      const int64_t n = g.numel();
      Tensor dst = b.dev.slice_rows(int64_t(offset_[i]), int64_t(offset_[i]) + n);
      ops::copy_into(dst, ops::cast(g, DType::f32).reshape({n}));
    }
    device_->start_all_reduce_sum_f32(b.dev.raw(), b.floats);
    return;
  }
  b.buf.assign(b.floats, 0.f);
  for (size_t i : b.params) {
    const Tensor& g = params_[i].second.ag()->grad;
    if (!g.defined()) continue;  // no gradient on this rank: zeros
    LMT_CHECK(g.numel() == params_[i].second.numel(), "[train] the gradient of ", params_[i].first, " is ",
              g.describe(), "; the parameter is ", params_[i].second.describe());
    Tensor h = ops::to(g, Device::cpu, DType::f32);
    std::memcpy(b.buf.data() + offset_[i], h.data<float>(), size_t(h.numel()) * sizeof(float));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(bi);
  }
  cv_.notify_all();
}

void GradientBuckets::worker() {
  for (;;) {
    size_t bi;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping
      bi = queue_.front();
      queue_.pop_front();
    }
    std::exception_ptr err;
    if (!error_) {  // after an error the group is broken: the rest is only counted
      try {
        comm_.all_reduce_sum(buckets_[bi].buf.data(), buckets_[bi].buf.size());
      } catch (...) {
        err = std::current_exception();
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (err && !error_) error_ = err;
      ++done_;
    }
    cv_.notify_all();
  }
}

void GradientBuckets::wait_all(size_t count) {
  if (device_) {
    device_->wait_started();
    return;
  }
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return done_ == count; });
  if (error_) std::rethrow_exception(error_);
}

void GradientBuckets::finish() {
  started_in_backward_ = next_;
  while (next_ < buckets_.size()) fill_and_start(next_++);
  wait_all(buckets_.size());
  // Every rank says whether a gradient grew after its bucket was sent; if one did, all sum again.
  double late = late_ ? 1 : 0;
  comm_.all_reduce_sum(&late, 1);
  resummed_ = late > 0;
  if (late > 0) {
    for (size_t bi = 0; bi < buckets_.size(); ++bi) fill_and_start(bi);  // from the final gradients
    wait_all(2 * buckets_.size());
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    const Bucket& b = buckets_[bucket_of_[i]];
    const Tensor& p = params_[i].second;
    const int64_t n = p.numel(), at = int64_t(offset_[i]);
    if (device_) {  // a view of the bucket (gradients are never written in place)
      p.ag()->grad = b.dev.slice_rows(at, at + n).reshape(p.shape());
      continue;
    }
    Tensor g = Tensor::empty(p.shape(), DType::f32);
    std::memcpy(g.data<float>(), b.buf.data() + at, g.nbytes());
    p.ag()->grad = ops::to(g, p.device());
  }
  for (Bucket& b : buckets_) b.waiting = b.params.size(), b.buf.clear(), b.buf.shrink_to_fit(), b.dev = Tensor();
  std::fill(seen_.begin(), seen_.end(), false);
  next_ = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = 0;
  }
  armed_ = false;
  late_ = false;
}

}  // namespace lmtune::train
