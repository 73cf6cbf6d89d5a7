// The model interface every architecture family implements, and loading one from a folder (the
// family comes from models/registry.h). Weights are named as in the Hugging Face checkpoint.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "models/config.h"
#include "nn/kv_cache.h"
#include "nn/lora.h"

namespace lmtune {

class SafetensorsModel;

struct TensorSpec {
  std::string name;
  Shape shape;
};

// One sequence of a packed forward (Model::forward_packed): its new tokens' count in the packed
// ids and its own KV cache (batch 1, unbounded or not about to wrap).
struct PackedSequence {
  int64_t length = 0;
  KVCache* cache = nullptr;
  bool every_row = false;  // all `length` rows' logits, not only the last (speculative decoding's verify)
};

// A packed training batch's layout (train::make_packed_batch): several examples concatenated in each
// row. Per token its rotary position (restarting at 0 for each example) and its segment id (the
// example's place in the row, non-decreasing along the row), i32 (B, T) on the CPU. Attention never
// crosses a segment boundary.
struct PackedRows {
  Tensor positions, segments;
};

// Calls around each block of a forward that trains or scores (not one with a KV cache), for sharded
// training (train/sharding.h), which keeps a block's weights whole only while the block runs.
class BlockHooks {
 public:
  virtual ~BlockHooks() = default;
  virtual void before_block(int64_t block) = 0;  // the block is about to run (forward, or recomputed in backward)
  virtual void after_block(int64_t block) = 0;   // it ran in a forward that records no graph
  virtual void after_block_backward(int64_t block) = 0;  // its recomputation's backward is done
  virtual void idle_forward() {}                         // this process has no rows for a forward that its peers run
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
  // Packed rows: ids i32 (B, T) on the CPU laid out as rows says -> logits (B, T, n_vocab); each
  // example's logits are those of forward(its tokens) alone. This default throws (a family whose
  // attention cannot keep to a segment).
  virtual Tensor forward(const Tensor& ids, const PackedRows& rows);
  // Inference with a KV cache: ids i32 (B, T) on the CPU are the tokens after the cached ones
  // (rotary positions from cache.offset()); appends their keys and values, advances the cache
  // and returns logits (B, T, n_vocab), or with last_only the last position's (B, 1, n_vocab)
  // (prefill skips the lm_head on the rest). Records no autograd graph.
  virtual Tensor forward(const Tensor& ids, KVCache& cache, bool last_only = false) = 0;
  // Continuous batching: ids i32 (1, N) on the CPU hold each sequence's new tokens in turn (N =
  // the sum of the lengths; sequences at different positions, e.g. one token of each decoding
  // sequence and a prefill chunk of another). Each cache takes its sequence's keys and values and
  // advances by its length. Returns the logits of each sequence's last new token (n_seq, n_vocab)
  // (of each of its new tokens, in order, for a sequence with every_row: (sum of the rows, n_vocab))
  // in the weights' dtype; each row equals forward(that sequence's ids, its cache, true) up to
  // the rounding of a product over more rows. This default runs the sequences one by one; a
  // family with shared blocks runs every linear layer once over all N rows.
  virtual Tensor forward_packed(const Tensor& ids, const std::vector<PackedSequence>& seqs);
  // Mean next-token cross-entropy: targets i32 (B, T), entries < 0 ignored; f32 scalar. With rows,
  // ids are packed rows (forward(ids, *rows)). Where the family splits off its head (forward_hidden)
  // and runtime_config().fused_xent is on, the head and the loss run fused in chunks
  // (autograd/linear_cross_entropy.h): the logits are never whole.
  Tensor loss(const Tensor& ids, const Tensor& targets, const PackedRows* rows = nullptr);
  // forward(ids) (or with rows, forward(ids, *rows)) stopped before the head, for loss(): the final
  // norm's output (B, T, n_embd) and the head layer that maps it to forward()'s logits (the lm_head
  // or the tied embedding, dense or quantized). Returns false, having run nothing, where the family
  // has no such split or its head carries a bias or an adapter (loss() then takes forward()'s logits).
  virtual bool forward_hidden(const Tensor& ids, Tensor& hidden, nn::Linear& head, const PackedRows* rows = nullptr);

  // Weights by checkpoint name; set_weights checks every spec is present with its shape. A
  // quantized layer (set_quantized, before) holds "<layer>.weight" packed u32 (out, in * bits / 32)
  // with "<layer>.scales" and "<layer>.biases" (out, in / group_size) instead of its dense weight.
  void set_weights(std::map<std::string, Tensor> weights);
  // Layers stored in MLX's affine layout, by layer path ("model.layers.0.mlp.down_proj").
  void set_quantized(std::map<std::string, LayerQuant> layers) { quantized_ = std::move(layers); }
  const std::map<std::string, LayerQuant>& quantized() const { return quantized_; }
  // The dense (out, in) weight of a linear or embedding layer: the weight itself, or the
  // dequantization of a quantized one (a fresh tensor, frozen) in the model's dtype.
  Tensor dense_weight(const std::string& name) const;
  // The non-const accessors let callers restructure the maps, so they mark the model for
  // rebinding: families bind typed weight structs to the map entries before the next forward.
  std::map<std::string, Tensor>& weights() {
    bound_ = false;
    return weights_;
  }
  const std::map<std::string, Tensor>& weights() const { return weights_; }
  const Tensor& weight(const std::string& name) const;
  Device device() const;
  DType dtype() const;

  void set_grad_checkpoint(bool on) { grad_checkpoint_ = on; }
  bool grad_checkpoint() const { return grad_checkpoint_; }
  // Null (the default) or hooks called around every block (above); they need gradient checkpointing
  // when the forward records a graph, since they free a block's weights after it.
  void set_block_hooks(BlockHooks* hooks) { block_hooks_ = hooks; }
  BlockHooks* block_hooks() const { return block_hooks_; }

  // LoRA / DoRA adapters by linear-layer prefix ("model.layers.3.self_attn.q_proj"); the family's
  // linear layers use them in forward (train/adapters.h attaches, saves and loads them).
  std::map<std::string, nn::LoraAdapter>& adapters() {
    bound_ = false;
    return adapters_;
  }
  const std::map<std::string, nn::LoraAdapter>& adapters() const { return adapters_; }

  // f32 master copies of trained weights stored in another dtype (full fine-tuning of a bf16 or
  // f16 model; train/adapters.h makes them): these are the trainable leaves. Each forward reads
  // such a weight as cast(master, its dtype), recorded on the tape, so its gradient, optimizer
  // state and updates stay f32 while the forward runs in the model's dtype (DESIGN.md, Precision).
  std::map<std::string, Tensor>& masters() {
    bound_ = false;
    return masters_;
  }
  const std::map<std::string, Tensor>& masters() const { return masters_; }
  // Casts each master into its weight (frozen, the weight's dtype) and drops the masters.
  void bake_masters();
  // The weight `name` becomes cast(its master), recorded (what every forward does for all masters
  // whose memory is not released; sharded training does it for a block's when it gathers them).
  void use_master(const std::string& name);

 protected:
  virtual void on_weights_set() {}
  // Points the family's typed weight structs at weights_ and adapters_ (looked up by name here,
  // once, not in every forward). Called by ensure_bound() after the maps may have changed.
  virtual void bind() {}
  void ensure_bound() {
    if (!bound_) bind(), bound_ = true;
  }
  // Families call this first in every forward: weights with a master become cast(master).
  void use_masters();
  // Throws unless rows fits ids (i32 (B, T) on the CPU, positions >= 0, segment ids non-decreasing
  // along each row).
  static void check_packed_rows(const Tensor& ids, const PackedRows& rows);
  ModelConfig cfg_;
  std::map<std::string, Tensor> weights_;
  bool grad_checkpoint_ = false;
  BlockHooks* block_hooks_ = nullptr;
  std::map<std::string, nn::LoraAdapter> adapters_;
  std::map<std::string, Tensor> masters_;  // f32 leaves by weight name; empty unless full-FT of non-f32 weights
  bool bound_ = false;
  std::map<std::string, LayerQuant> quantized_;
};

// The family for cfg.model_type (models/registry.h), without weights.
std::unique_ptr<Model> create_model(const ModelConfig& cfg);

// A Hugging Face model folder (config.json + safetensors, sharded or not) with its weights
// cast to dtype on device. The CPU computes in f32, so a CPU model is always f32.
std::unique_ptr<Model> load_model(const std::string& dir, Device device, DType dtype);

// Everything load_model checks of a folder's checkpoint against its config, without converting a
// tensor: every parameter present with the implied shape and a float dtype (or a valid MLX
// quantization), and no tensor the model does not use. Returns the quantized layers.
std::map<std::string, LayerQuant> check_checkpoint(const std::string& dir, const ModelConfig& cfg,
                                                   const std::vector<TensorSpec>& specs, const SafetensorsModel& files);

}  // namespace lmtune
