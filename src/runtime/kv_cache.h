// DenseKVCache: per-layer keys and values in the model's dtype on its device, growing in chunks;
// with max_size it becomes mlx-lm's RotatingKVCache (the first `keep` tokens stay as attention
// sinks, the oldest of the others are overwritten), so memory stays bounded. With a KVQuantization
// it becomes mlx-lm's QuantizedKVCache once it holds `start` tokens (--kv-bits), rotating or not.
#pragma once
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "models/model.h"
#include "ops/ops.h"

namespace lmtune {

// mlx_lm.generate's --kv-bits / --kv-group-size / --quantized-kv-start. After a forward leaves the
// cache holding >= start tokens (mlx-lm's maybe_quantize_kv_cache: offset >= quantized_kv_start),
// every key and value held is replaced by MLX's affine quantization along head_dim (u32 codes +
// a scale and a bias per group, in the model's dtype), and so is every later one as it is stored;
// attention reads them dequantized. bits 0 = off.
struct KVQuantization {
  int bits = 0;          // 0 (off), 2, 3, 4, 5, 6 or 8
  int group_size = 64;   // 32, 64 or 128, dividing head_dim
  int64_t start = 5000;  // tokens held before the cache is quantized (>= 0)
  bool enabled() const { return bits > 0; }
};

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
  bool update_rotary_by(int64_t layer, DType dtype, const RotaryWriter& write, Tensor& q_rot, View& view) override;
  bool decode_planes(int64_t layer, DType dtype, Tensor& k, Tensor& v) override;

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

  // --kv-bits: set before the first token (throws on bad values, naming the field, or once the
  // cache holds tokens). The quantized state: keys and values are stored packed from now on.
  void set_quantization(const KVQuantization& q);
  const KVQuantization& quantization() const { return quant_; }
  bool quantized() const { return quantized_; }
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

  // Prompt cache files (runtime/prompt_cache_file.h; defined in kv_cache_held.cpp). held_planes:
  // a layer's stored planes (dense {k, v}; quantized {k codes, k scales, k biases, v codes, v
  // scales, v biases}), each a CPU copy of the held rows (B, offset(), n_kv_head, width); a
  // rotating cache is refused. load_held: an empty, non-rotating cache takes n tokens per layer in
  // that layout (quantized ones need set_quantization first), checked against plane_specs.
  std::vector<Tensor> held_planes(int64_t layer);
  // The server's prompt cache (runtime/prompt_cache.h; defined in kv_cache_copy.cpp): a new cache
  // on the same device holding a copy of this one's first n tokens (0 < n <= offset()), made by
  // device copies, quantized or not as this one is, with the same quantization settings and block
  // step; it grows as any cache does. A rotating or position-bound cache is refused.
  std::unique_ptr<DenseKVCache> copy_prefix(int64_t n);
  void load_held(const std::vector<std::vector<Tensor>>& layers, int64_t n, bool quantized);
  int64_t n_layer() const { return n_layer_; }
  int64_t n_kv_head() const { return n_kv_head_; }
  int64_t head_dim() const { return head_dim_; }
  int64_t batch() const { return batch_; }
  DType dtype() const { return dtype_; }

 private:
  View update_at(int64_t layer, const Tensor& k, const Tensor& v);  // with a bound position
  void make_room(int64_t T);  // for T entries at offset(): grow, or check the bound capacity
  // update_rotary and update_rotary_by: T tokens of dtype stored by `write` where the cache can take them fused.
  bool rotary(int64_t layer, int64_t T, DType dtype, Tensor& q_rot, View& view, const RotaryWriter& write);
  // Batch 1: layer's first S entries, for queries at q_offset (+ the bound position, if any).
  View prefix_view(int64_t layer, int64_t S, int64_t q_offset) const;
  // The layer's stored planes, each (B, capacity, n_kv_head, width): dense {k, v}; quantized
  // {k codes, k scales, k biases, v codes, v scales, v biases}; and their widths and dtypes.
  std::vector<Tensor*> planes(int64_t layer);
  std::vector<std::pair<int64_t, DType>> plane_specs() const;
  // Writes rows [row, row + T) of each plane from news[i] (B, T, n_kv_head, width_i).
  void store_rows(int64_t layer, int64_t row, const std::vector<Tensor>& news);
  void quantize_held();  // dense -> quantized: every held entry, then the dense buffers go
  // Quantized: batch row b's first S keys or values (plane 0 or 3) dequantized, (S, H, D).
  Tensor dequantized(int64_t layer, int first_plane, int64_t b, int64_t S);
  int64_t n_layer_, n_kv_head_, head_dim_, batch_;
  Device device_;
  DType dtype_;
  int64_t max_size_, keep_, step_;
  int64_t offset_ = 0, capacity_ = 0;
  std::vector<Tensor> k_, v_;  // per layer: dtype (B, capacity, n_kv_head, head_dim); undefined once quantized
  // per layer, once quantized: codes u32 (B, capacity, n_kv_head, head_dim * bits / 32), scales
  // and biases dtype (B, capacity, n_kv_head, head_dim / group_size)
  std::vector<ops::AffineQuantized> kq_, vq_;
  Tensor position_;  // bound run-time position, or undefined
  KVQuantization quant_;
  bool quantized_ = false;
};

}  // namespace lmtune
