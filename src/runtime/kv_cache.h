// DenseKVCache: per-layer keys and values in the model's dtype on its device, growing in chunks;
// with max_size it becomes mlx-lm's RotatingKVCache (the first `keep` tokens stay as attention
// sinks, the oldest of the others are overwritten), so memory stays bounded.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "models/model.h"

namespace lmtune {

class DenseKVCache final : public KVCache {
 public:
  // max_size 0 = unbounded; else at most max_size entries per layer, `keep` of them sinks.
  DenseKVCache(const ModelConfig& cfg, Device device, DType dtype, int64_t batch = 1, int64_t max_size = 0,
               int64_t keep = 4, int64_t step = 256);

  int64_t offset() const override { return offset_; }
  int64_t max_step() const override;
  View update(int64_t layer, const Tensor& k, const Tensor& v) override;
  void advance(int64_t T) override;
  // Batch 1, linear (or a bound position): one fused kernel where the backend has it.
  bool update_rotary(int64_t layer, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& inv_freq,
                     Tensor& q_rot, View& view) override;

  int64_t size() const;  // entries held per layer: min(offset, max_size)
  int64_t capacity() const { return capacity_; }
  bool rotating() const { return max_size_ > 0; }
  int64_t max_size() const { return max_size_; }
  // Forget everything after the first n tokens (n <= offset; a rotating cache only while it has
  // not wrapped). Chat uses it to drop a turn's tail that re-templating tokenizes differently.
  bool can_trim_to(int64_t n) const;
  void trim_to(int64_t n);
  void reset() { trim_to(0); }
  size_t nbytes() const;  // bytes held by the buffers
  // capacity >= n (rounded up to step, capped at max_size); new buffers are zero-filled, so a
  // key past the written ones is never garbage. Growing moves the buffers.
  void reserve(int64_t n);

  // Run-time position (batch 1, not rotating): while bound, update() writes the new entries at
  // row *pos (an i32 scalar on the cache's device, read when the kernels run) and returns the
  // whole capacity with view.q_offset_at = pos, so one recorded decode step serves every
  // position below capacity(). The caller reserves capacity first and keeps offset() == *pos.
  void bind_position(const Tensor& pos);
  void unbind_position() { position_ = Tensor(); }
  const Tensor* position() const override { return position_.defined() ? &position_ : nullptr; }

 private:
  View update_at(int64_t layer, const Tensor& k, const Tensor& v);  // with a bound position
  void make_room(int64_t T);  // for T entries at offset(): grow, or check the bound capacity
  // Batch 1: layer's first S entries, for queries at q_offset (+ the bound position, if any).
  View prefix_view(int64_t layer, int64_t S, int64_t q_offset) const;
  int64_t n_layer_, n_kv_head_, head_dim_, batch_;
  Device device_;
  DType dtype_;
  int64_t max_size_, keep_, step_;
  int64_t offset_ = 0, capacity_ = 0;
  std::vector<Tensor> k_, v_;  // per layer: dtype (B, capacity, n_kv_head, head_dim)
  Tensor position_;            // bound run-time position, or undefined
};

}  // namespace lmtune
