// One decode step (a token in, the next token's logits out) recorded once as a CUDA graph and
// replayed at every position: the ~600 kernel launches of a 32-layer step become one, so the
// host no longer sets the pace of batch-1 decoding. The token and its position travel in a
// small device buffer written before each replay; the KV cache is read over its whole capacity
// with the position applied on the device (DenseKVCache::bind_position). The step is recorded
// again when the cache's buffers move (its capacity grows every `step` tokens). Not used where
// the backend has no graphs, for a rotating cache, or with LMTUNE_CUDA_GRAPH=0.
#pragma once
#include <cstdint>
#include <vector>

#include "core/allocator.h"
#include "core/tensor.h"
#include "models/model.h"
#include "runtime/kv_cache.h"

namespace lmtune {

class DecodeGraph {
 public:
  // model and cache must outlive this.
  DecodeGraph(Model& model, DenseKVCache& cache);
  ~DecodeGraph();
  DecodeGraph(const DecodeGraph&) = delete;
  DecodeGraph& operator=(const DecodeGraph&) = delete;

  // Whether decoding model with cache can go through a graph here.
  static bool usable(const Model& model, const DenseKVCache& cache);

  // Feeds token at position cache.offset(), advances the cache and returns the logits of the
  // next token as host f32 (n_vocab). Equal to Model::forward(token, cache, true), cast.
  std::vector<float> step(int32_t token);

  int64_t recordings() const { return recordings_; }  // how often the step was recorded

 private:
  void record();
  void drop();
  Model& model_;
  DenseKVCache& cache_;
  Tensor io_;      // i32 (2) on the device: the token, its position
  Tensor ids_;     // (1, 1) view of io_[0]
  Tensor pos_;     // (1) view of io_[1]
  Tensor logits_;  // f32 (1, 1, n_vocab) on the device, written by every replay
  void* graph_ = nullptr;
  int64_t capacity_ = -1;  // the cache capacity the graph was recorded for
  int64_t recordings_ = 0;
  std::vector<CachingAllocator::Block> held_;  // the recorded step's intermediates
};

}  // namespace lmtune
