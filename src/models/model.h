// The model interface every architecture family implements, and the registry that maps a
// config's model_type to its family. Weights are named as in the Hugging Face checkpoint.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "models/config.h"
#include "nn/lora.h"

namespace lmtune {

struct TensorSpec {
  std::string name;
  Shape shape;
};

// What a cached forward needs from a KV cache; runtime/kv_cache.h implements it (the cache lives
// above the models layer, so the model sees only this interface).
class KVCache {
 public:
  // The keys and values to attend over after an update, all on the model's device.
  struct View {
    Tensor k, v;        // (B, S, n_kv_head, head_dim) contiguous, the model's dtype
    int64_t q_offset = 0;    // query t of the update sits at key index q_offset + t (causal over indices)
    bool positional = true;  // key index == absolute position, so sliding windows apply as usual
    Tensor q_offset_at; // defined while a run-time position is bound: added to q_offset on the device
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
  virtual bool update_rotary(int64_t layer, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& inv_freq, Tensor& q_rot, View& view) {
    return false;
  }
  // While a decode step is captured for replay (runtime/decode_graph.h), the absolute position
  // of the first new token lives in this i32 scalar on the device, and rotary positions come from
  // it rather than from offset(); null otherwise.
  virtual const Tensor* position() const { return nullptr; }
};

class Model {
 public:
  explicit Model(ModelConfig cfg) : cfg_(std::move(cfg)) {}
  virtual ~Model() = default;
  const ModelConfig& config() const { return cfg_; }

  // Every tensor the family reads from a checkpoint, in checkpoint order.
  virtual std::vector<TensorSpec> tensor_specs() const = 0;
  // ids i32 (B, T) on the CPU -> logits (B, T, n_vocab) in the weights' dtype.
  virtual Tensor forward(const Tensor& ids, int64_t pos_offset = 0) = 0;
  // Inference with a KV cache: ids i32 (B, T) on the CPU are the tokens after the cached ones
  // (rotary positions from cache.offset()); appends their keys and values, advances the cache
  // and returns logits (B, T, n_vocab), or with last_only the last position's (B, 1, n_vocab)
  // (prefill skips the lm_head on the rest). Records no autograd graph.
  virtual Tensor forward(const Tensor& ids, KVCache& cache, bool last_only = false) = 0;
  // Mean next-token cross-entropy: targets i32 (B, T), entries < 0 ignored; f32 scalar.
  Tensor loss(const Tensor& ids, const Tensor& targets);

  // Weights by checkpoint name; set_weights checks every spec is present with its shape.
  void set_weights(std::map<std::string, Tensor> weights);
  std::map<std::string, Tensor>& weights() { return weights_; }
  const Tensor& weight(const std::string& name) const;
  Device device() const;
  DType dtype() const;

  void set_grad_checkpoint(bool on) { grad_checkpoint_ = on; }

  // LoRA / DoRA adapters by linear-layer prefix ("model.layers.3.self_attn.q_proj"); the family's
  // linear layers use them in forward (train/adapters.h attaches, saves and loads them).
  std::map<std::string, nn::LoraAdapter>& adapters() { return adapters_; }
  const std::map<std::string, nn::LoraAdapter>& adapters() const { return adapters_; }

  // f32 master copies of trained weights stored in another dtype (full fine-tuning of a bf16 or
  // f16 model; train/adapters.h makes them): these are the trainable leaves. Each forward reads
  // such a weight as cast(master, its dtype), recorded on the tape, so its gradient, optimizer
  // state and updates stay f32 while the forward runs in the model's dtype (DESIGN.md, Precision).
  std::map<std::string, Tensor>& masters() { return masters_; }
  // Casts each master into its weight (frozen, the weight's dtype) and drops the masters.
  void bake_masters();

 protected:
  virtual void on_weights_set() {}
  // Families call this first in every forward: weights with a master become cast(master).
  void use_masters();
  ModelConfig cfg_;
  std::map<std::string, Tensor> weights_;
  bool grad_checkpoint_ = false;
  std::map<std::string, nn::LoraAdapter> adapters_;
  std::map<std::string, Tensor> masters_;  // f32 leaves by weight name; empty unless full-FT of non-f32 weights
};

// The family for cfg.model_type (llama, mistral, qwen2), without weights.
std::unique_ptr<Model> create_model(const ModelConfig& cfg);

// A Hugging Face model folder (config.json + safetensors, sharded or not) with its weights
// cast to dtype on device. The CPU computes in f32, so a CPU model is always f32.
std::unique_ptr<Model> load_model(const std::string& dir, Device device, DType dtype);

}  // namespace lmtune
