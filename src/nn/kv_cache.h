// What a cached forward needs from a KV cache. runtime/kv_cache.h implements it; the cache lives
// above the nn and models layers, so attention sees only this interface.
#pragma once
#include <cstdint>
#include <functional>

#include "core/tensor.h"

namespace lmtune {

class KVCache {
 public:
  // The keys and values to attend over after an update, all on the model's device.
  struct View {
    Tensor k, v;             // (B, S, n_kv_head, head_dim) contiguous, the model's dtype
    int64_t q_offset = 0;    // query t of the update sits at key index q_offset + t (causal over indices)
    bool positional = true;  // key index == absolute position, so sliding windows apply as usual
    Tensor q_offset_at;      // defined while a run-time position is bound: added to q_offset on the device
  };
  virtual ~KVCache() = default;
  // Tokens the cache has seen: the absolute position of the next token.
  virtual int64_t offset() const = 0;
  // The most tokens one forward may append at the current offset (a rotating cache that is
  // about to wrap takes one at a time); forward splits longer inputs.
  virtual int64_t max_step() const = 0;
  // Stores layer's new k, v (B, T, n_kv_head, head_dim) (rotary positions already applied) at
  // positions offset() .. offset() + T - 1 and returns what that layer's queries attend over.
  virtual View update(int64_t layer, const Tensor& k, const Tensor& v) = 0;
  // After every layer was updated: the T new tokens count.
  virtual void advance(int64_t T) = 0;
  // Decoding's fused path: rotates q and k (B, T, heads, head_dim) at the new tokens' positions,
  // stores k and v like update() and sets q_rot and view. False where the cache or the backend has
  // no fused path: then nothing was stored, and the caller rotates and calls update().
  virtual bool update_rotary(int64_t layer, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& inv_freq,
                             Tensor& q_rot, View& view) {
    return false;
  }
  // Decoding's fused path where the q/k/v products' own launch rotates and stores one token (batch 1): `write` gets the
  // layer's planes k, v (capacity, n_kv_head, head_dim), the row to write and the bound run-time position (or null),
  // writes k and v there and returns q rotated, or an undefined tensor where it cannot (having written nothing). True:
  // stored, q_rot and view set as update_rotary sets them. False: nothing was stored.
  using RotaryWriter = std::function<Tensor(Tensor& k, Tensor& v, int64_t row, const Tensor* pos_at)>;
  virtual bool update_rotary_by(int64_t layer, DType dtype, const RotaryWriter& write, Tensor& q_rot, View& view) {
    return false;
  }
  // A packed batch's decoding row (nn::Attention::forward_packed): room made for one new entry at
  // offset(), the layer's planes k, v (capacity, n_kv_head, head_dim), written by the caller at
  // row offset(). False where the cache is not a plain dense one (quantized, rotating, batch > 1,
  // a bound position, another dtype): then nothing changed and the caller takes update_rotary().
  virtual bool decode_planes(int64_t layer, DType dtype, Tensor& k, Tensor& v) { return false; }
  // While a decode step is captured for replay (runtime/decode_graph.h), the absolute position
  // of the first new token lives in this i32 scalar on the device, and rotary positions come from
  // it rather than from offset(); null otherwise.
  virtual const Tensor* position() const { return nullptr; }
};

}  // namespace lmtune
