// Sharded full fine-tuning, ZeRO-3 / FSDP style (issue 14): between the uses of its block no rank
// holds a trained weight whole. Rank r keeps the elements [r c, (r + 1) c) of each block weight's
// flattened f32 values (c = ceil(numel / world), the last slice padded with zeros), and the optimizer
// state of those alone. A block's weights are gathered just before it runs (in the forward, and again
// when gradient checkpointing recomputes it in backward) and freed after; once its backward is done,
// its gradients are summed across the ranks (in rank order, as data parallel sums them) and each rank
// keeps its slice of the sum. Weights outside the blocks (embeddings, final norm, lm_head when they
// are trained) stay whole on every rank, their gradients summed as in data parallel.
//
// The collectives are sums (dist::Comm, or NCCL through DeviceCollective): a gather is the sum of
// buffers that are zero outside each rank's slice, a reduce-scatter a sum of which each rank keeps its
// slice. That is twice the traffic of NCCL's all-gather and reduce-scatter, and exact: every element
// is one rank's value plus zeros, and the gradients equal data parallel's sums bit for bit.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "backend/collective.h"
#include "dist/comm.h"
#include "models/model.h"

namespace lmtune::train {

class ShardedWeights final : public BlockHooks {
 public:
  // Takes over params (trainable_parameters(model), after attach_adapters for full fine-tuning): the
  // blocks' weights are cut into slices and freed; the model's block hooks are set to this and its
  // gradient checkpointing turned on. comm null: one process, each slice a whole weight. The memory
  // is freed only when no one else holds the block weights' tensors: the caller drops its copies.
  ShardedWeights(Model& model, std::vector<std::pair<std::string, Tensor>> params, dist::Comm* comm,
                 DeviceCollective* device);
  // Unhooks the model. Its block weights stay freed: a model trained sharded is written out through
  // host_copies, not run whole again.
  ~ShardedWeights() override;
  ShardedWeights(const ShardedWeights&) = delete;
  ShardedWeights& operator=(const ShardedWeights&) = delete;

  // What the optimizer updates, by the weights' names: each sharded weight's slice (f32, shape (c))
  // and the whole weights. After a step's backward the slices' gradients hold the group's sums; the
  // whole weights' gradients are this rank's until sum_whole_gradients().
  const std::vector<std::pair<std::string, Tensor>>& parameters() const { return params_; }
  void sum_whole_gradients();
  bool is_sharded(const std::string& name) const { return index_.count(name) > 0; }
  // The sum over the group of the squares of every gradient element, each counted once.
  double gradient_square_sum(const std::map<std::string, Tensor>& grads) const;

  // A sharded weight's slice-shaped tensor (a gradient, an optimizer slot) made whole (the weight's
  // shape, the slice's device): a collective every rank calls in the same order. And back.
  Tensor gather(const std::string& name, const Tensor& slice) const;
  Tensor slice_of(const std::string& name, const Tensor& whole) const;

  // Every trained weight whole, as CPU tensors by name in parameters()' order, to write them out: a
  // collective that gathers one weight at a time; `keep` false (ranks that write nothing) returns none.
  std::vector<std::pair<std::string, Tensor>> host_copies(bool keep) const;
  // A file of whole f32 tensors made from this rank's tensors (a sharded weight's slice-shaped ones
  // gathered): each is gathered, written and dropped before the next, so no rank holds more than one
  // whole. A collective; the rank with `writer` writes path (atomically), the others only join.
  struct FileTensor {
    std::string key;   // its name in the file
    std::string name;  // the trained weight it belongs to
    Tensor t;          // slice-shaped for a sharded weight, else whole
  };
  void write_whole(const std::string& path, const std::vector<FileTensor>& tensors, bool writer) const;
  // The trained weights set from whole tensors by name (a checkpoint's, read_adapter_weights): each
  // rank keeps its slices of the sharded ones; the rest are copied in.
  void assign(const std::vector<std::pair<std::string, Tensor>>& weights);

  // A rank without rows in a step joins the others' collectives with zeros.
  void idle_forward() override;
  void idle_backward();

  void before_block(int64_t block) override;
  void after_block(int64_t block) override;
  void after_block_backward(int64_t block) override;

 private:
  struct Entry {
    std::string name;
    Tensor whole;  // the leaf the model reads (or its f32 master)
    Tensor slice;  // this rank's part, a leaf of shape (c)
    bool master = false;
    int64_t numel = 0, c = 0;
  };
  // buf (f32, world * c elements, on the slices' device) summed over the group in place.
  void sum(Tensor& buf) const;
  // e's weight whole from this rank's slice-shaped tensor: a view of the summed buffer (a collective).
  Tensor gathered(const Entry& e, const Tensor& slice) const;
  void gather_entry(Entry& e);
  void release_entry(Entry& e);
  void reduce_entry(Entry& e);

  Model& model_;
  dist::Comm* comm_;
  DeviceCollective* device_;
  int rank_ = 0, world_ = 1;
  std::vector<Entry> entries_;
  std::map<int64_t, std::vector<size_t>> by_block_;  // entries of each block
  std::map<std::string, size_t> index_;
  std::vector<std::pair<std::string, Tensor>> params_, replicated_;
};

// The block a trained weight belongs to ("model.layers.12.mlp.up_proj.weight" -> 12), or -1.
int64_t block_of_weight(const std::string& name);

}  // namespace lmtune::train
