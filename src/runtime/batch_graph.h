// A packed decoding step of n sequences (one token each, each over its own dense KV cache),
// recorded once as a CUDA graph and replayed at every later step with n sequences: the ~450
// launches of an eager 32-layer step (each with the op layer's host work) become one, as
// DecodeGraph does for a sequence alone. What changes between steps is written before a replay:
// the n tokens into a device buffer, and each layer's rows (position and cache planes of every
// sequence) into the recorded rope + append and attention launches (Backend::graph_set_rows). A
// cache that grows moves its planes; the next replay reads the new ones. Recorded again when a
// recorded attention launch cannot take the new positions (its split of the keys changes, small n
// only). Not used where the backend has no graphs, for rotating or quantized caches, or with
// LMTUNE_CUDA_GRAPH=0.
#pragma once
#include <cstdint>
#include <vector>

#include "core/allocator.h"
#include "core/tensor.h"
#include "models/model.h"
#include "runtime/kv_cache.h"

namespace lmtune {

class BatchGraph {
 public:
  static constexpr int64_t kMaxRows = 64;  // one launch of the rows kernels (Backend::DecodeRows::kMax)

  // model must outlive this; n in [2, kMaxRows].
  BatchGraph(Model& model, int64_t n);
  ~BatchGraph();
  BatchGraph(const BatchGraph&) = delete;
  BatchGraph& operator=(const BatchGraph&) = delete;

  // Whether n sequences decoding over these caches can go through a recorded step.
  static bool usable(const Model& model, const std::vector<DenseKVCache*>& caches);

  // Feeds ids[i] to the sequence of caches[i] (n of each) as Model::forward_packed would, advances
  // every cache by one and returns the next tokens' logits as host f32 (n, n_vocab), row i for
  // sequence i. On a failed recording the caches are as they were and the error is thrown.
  std::vector<float> step(const std::vector<int32_t>& ids, const std::vector<DenseKVCache*>& caches);

  int64_t recordings() const { return recordings_; }
  int64_t replays() const { return replays_; }

 private:
  void record(const std::vector<DenseKVCache*>& caches);
  bool set_rows(const std::vector<DenseKVCache*>& caches);
  void drop();
  Model& model_;
  int64_t n_;
  Tensor ids_;     // i32 (1, n) on the device
  Tensor logits_;  // f32 (n, n_vocab) on the device, written by every replay
  void* graph_ = nullptr;
  int64_t recordings_ = 0, replays_ = 0;
  std::vector<CachingAllocator::Block> held_;  // the recorded step's intermediates
};

}  // namespace lmtune
