#include "train/sharding.h"

#include <algorithm>
#include <cctype>
#include <utility>

#include "autograd/tape.h"
#include "core/allocator.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "ops/ops.h"
#include "train/data_parallel.h"

namespace lmtune::train {

namespace {

// Elements [rank c, (rank + 1) c) of whole, flattened, as a tensor of c, zero-padded past the end.
Tensor cut_slice(const Tensor& whole, int64_t c, int rank) {
  const int64_t n = whole.numel();
  Tensor s = ops::zeros({c}, whole.dtype(), whole.device());
  const int64_t lo = std::min<int64_t>(n, int64_t(rank) * c), hi = std::min<int64_t>(n, lo + c);
  if (hi > lo) {
    Tensor dst = s.slice_rows(0, hi - lo);
    ops::copy_into(dst, whole.detach().reshape({n}).slice_rows(lo, hi));
  }
  return s;
}

}  // namespace

int64_t block_of_weight(const std::string& name) {
  // "<...>layers.<i>.<...>", the way every family names its blocks' weights.
  for (size_t at = name.find("layers."); at != std::string::npos; at = name.find("layers.", at + 1)) {
    if (at > 0 && name[at - 1] != '.') continue;
    size_t i = at + 7, j = i;
    while (j < name.size() && std::isdigit(static_cast<unsigned char>(name[j]))) ++j;
    if (j > i && j < name.size() && name[j] == '.' && j - i < 10) return std::stoll(name.substr(i, j - i));
  }
  return -1;
}

ShardedWeights::ShardedWeights(Model& model, std::vector<std::pair<std::string, Tensor>> params, dist::Comm* comm,
                               DeviceCollective* device)
    : model_(model), comm_(comm), device_(device) {
  if (comm_) rank_ = comm_->rank(), world_ = comm_->world();
  const auto& masters = std::as_const(model_).masters();
  for (auto& [name, p] : params) {
    const int64_t block = block_of_weight(name);
    if (block < 0 || block >= model_.config().n_layer) {
      replicated_.push_back({name, p});
      params_.push_back({name, p});
      continue;
    }
    LMT_CHECK(p.dtype() == DType::f32, "[shard] ", name, " is ", p.describe(), "; trained weights are f32");
    Entry e;
    e.name = name;
    e.master = masters.count(name) > 0;
    e.numel = p.numel();
    e.c = (e.numel + world_ - 1) / world_;
    e.slice = ag::param(cut_slice(p, e.c, rank_));
    // The whole weight gets a storage of its own, which release() frees and restore() gives back (one
    // read from the checkpoint may share a mapping with every other); the model's entry is replaced,
    // the leaf (its autograd meta) stays. This copy of the old weight goes, so its memory can too.
    e.whole = Tensor::empty(p.shape(), DType::f32, p.device());
    e.whole.set_ag(p.ag());
    (e.master ? model_.masters() : model_.weights()).at(name) = e.whole;
    p = Tensor();
    release_entry(e);
    index_[name] = entries_.size();
    by_block_[block].push_back(entries_.size());
    params_.push_back({name, e.slice});
    entries_.push_back(std::move(e));
  }
  // The whole weights' memory just freed went to the allocator's cache: give it back (a gather asks anew).
  if (!entries_.empty()) allocator(entries_[0].slice.device()).empty_cache();
  model_.set_grad_checkpoint(true);
  model_.set_block_hooks(this);
}

ShardedWeights::~ShardedWeights() { model_.set_block_hooks(nullptr); }

void ShardedWeights::sum(Tensor& buf) const {
  if (!comm_) return;
  if (device_) {
    device_->all_reduce_sum_f32(buf.raw(), size_t(buf.numel()));
  } else if (buf.device() == Device::cpu) {
    comm_->all_reduce_sum(buf.data<float>(), size_t(buf.numel()));
  } else {
    Tensor h = ops::to(buf, Device::cpu);
    comm_->all_reduce_sum(h.data<float>(), size_t(h.numel()));
    ops::copy_into(buf, h);
  }
}

Tensor ShardedWeights::gathered(const Entry& e, const Tensor& slice) const {
  LMT_CHECK(slice.numel() == e.c, "[shard] ", e.name, ": a slice of ", e.c, " elements, got ", slice.describe());
  Tensor buf = ops::zeros({e.c * world_}, DType::f32, slice.device());
  Tensor mine = buf.slice_rows(int64_t(rank_) * e.c, int64_t(rank_ + 1) * e.c);
  ops::copy_into(mine, ops::cast(slice.detach().reshape({e.c}), DType::f32));
  sum(buf);
  return buf.slice_rows(0, e.numel).reshape(e.whole.shape());
}

Tensor ShardedWeights::gather(const std::string& name, const Tensor& slice) const {
  return ops::clone(gathered(entries_.at(index_.at(name)), slice));
}

Tensor ShardedWeights::slice_of(const std::string& name, const Tensor& whole) const {
  const Entry& e = entries_.at(index_.at(name));
  LMT_CHECK(whole.numel() == e.numel, "[shard] ", name, ": ", e.numel, " elements, got ", whole.describe());
  return cut_slice(whole, e.c, rank_);
}

void ShardedWeights::gather_entry(Entry& e) {
  if (!e.whole.storage()->released()) return;
  const Tensor full = gathered(e, e.slice);  // a view of the summed buffer, copied once, into the weight
  e.whole.storage()->restore();
  Tensor dst = e.whole.detach();
  ops::copy_into(dst, full);
  if (e.master) model_.use_master(e.name);  // the weight the forward reads: its cast, recorded
}

void ShardedWeights::release_entry(Entry& e) {
  if (e.master) {
    // The cast the forward read (or, before the first forward, the weight as loaded, which may share
    // its storage with others) is dropped for an empty tensor of its dtype, which use_master reads.
    Tensor& w = model_.weights().at(e.name);
    if (w.numel() > 0) w = ops::zeros({0}, w.dtype(), w.device());
  }
  e.whole.storage()->release();
}

void ShardedWeights::reduce_entry(Entry& e) {
  // The group's sum of this weight's gradient; this rank keeps its slice, added to what the slice
  // holds from earlier micro-batches of an accumulated step.
  Tensor buf = ops::zeros({e.c * world_}, DType::f32, e.slice.device());
  const Tensor& g = e.whole.ag()->grad;
  if (g.defined()) {
    Tensor dst = buf.slice_rows(0, e.numel);
    ops::copy_into(dst, ops::cast(g, DType::f32).reshape({e.numel}));
  }
  sum(buf);
  Tensor mine = ops::clone(buf.slice_rows(int64_t(rank_) * e.c, int64_t(rank_ + 1) * e.c));
  Tensor& sg = e.slice.ag()->grad;
  sg = sg.defined() ? ops::axpby(sg, mine, 1.f, 1.f) : mine;
  ag::zero_grad(e.whole);
}

void ShardedWeights::before_block(int64_t block) {
  auto it = by_block_.find(block);
  if (it == by_block_.end()) return;
  for (size_t i : it->second) gather_entry(entries_[i]);
}

void ShardedWeights::after_block(int64_t block) {
  auto it = by_block_.find(block);
  if (it == by_block_.end()) return;
  for (size_t i : it->second) release_entry(entries_[i]);
}

void ShardedWeights::after_block_backward(int64_t block) {
  auto it = by_block_.find(block);
  if (it == by_block_.end()) return;
  for (size_t i : it->second) {
    reduce_entry(entries_[i]);
    release_entry(entries_[i]);
  }
}

void ShardedWeights::idle_forward() {
  for (auto& [block, idx] : by_block_) {
    before_block(block);
    after_block(block);
  }
}

void ShardedWeights::idle_backward() {
  for (auto it = by_block_.rbegin(); it != by_block_.rend(); ++it) {
    before_block(it->first);
    after_block_backward(it->first);
  }
}

void ShardedWeights::sum_whole_gradients() {
  if (comm_ && !replicated_.empty()) all_reduce_gradients(*comm_, device_, replicated_);
}

double ShardedWeights::gradient_square_sum(const std::map<std::string, Tensor>& grads) const {
  double sliced = 0, whole = 0;
  for (const auto& [name, g] : grads) {
    const double sq = double(ops::item(ops::sum_all(ops::mul(g, g))));
    (is_sharded(name) ? sliced : whole) += sq;
  }
  if (comm_) comm_->all_reduce_sum(&sliced, 1);
  return sliced + whole;
}

std::vector<std::pair<std::string, Tensor>> ShardedWeights::host_copies(bool keep) const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& [name, p] : params_) {
    Tensor t = is_sharded(name) ? gather(name, p) : p.detach();
    if (keep) out.push_back({name, ops::to(t, Device::cpu)});
  }
  return out;
}

void ShardedWeights::write_whole(const std::string& path, const std::vector<FileTensor>& tensors, bool writer) const {
  auto whole = [&](const FileTensor& f) {
    return ops::to(is_sharded(f.name) ? gather(f.name, f.t) : f.t, Device::cpu, DType::f32);
  };
  if (!writer) {
    for (const FileTensor& f : tensors)
      if (is_sharded(f.name)) (void)gather(f.name, f.t);
    return;
  }
  std::vector<TensorEntry> entries;
  for (const FileTensor& f : tensors)
    entries.push_back(
        {f.key, is_sharded(f.name) ? entries_[index_.at(f.name)].whole.shape() : f.t.shape(), DType::f32});
  save_safetensors_streamed(path, entries, [&](size_t i) { return whole(tensors[i]); });
}

void ShardedWeights::assign(const std::vector<std::pair<std::string, Tensor>>& weights) {
  std::map<std::string, Tensor> replicated(replicated_.begin(), replicated_.end());
  for (const auto& [name, t] : weights) {
    if (is_sharded(name)) {
      Entry& e = entries_[index_.at(name)];
      Tensor dst = e.slice.detach();
      ops::copy_into(dst, ops::to(slice_of(name, t), dst.device(), DType::f32));
    } else {
      auto it = replicated.find(name);
      LMT_CHECK(it != replicated.end(), "[shard] '", name, "' is not a trained weight of this model");
      Tensor dst = it->second.detach();
      ops::copy_into(dst, ops::to(t, dst.device(), dst.dtype()));
    }
  }
}

}  // namespace lmtune::train
