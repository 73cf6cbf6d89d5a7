// Typed model configuration parsed from a Hugging Face config.json: the fields every decoder
// shares, then the family differences as typed fields that each family's parser sets (the
// families and their parsers are listed in models/registry.h).
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/quant_format.h"
#include "nn/activation.h"

namespace lmtune {

struct RopeConfig {
  std::string type = "default";  // default | linear | llama3 | longrope (also read as "su")
  double theta = 10000.0;
  double factor = 1.0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
  // longrope (Phi-3.5, Phi-3-128k): per-frequency divisors (head_dim / 2 each), the long set while a
  // forward reaches past original_max_position_embeddings, as transformers switches it; and the
  // factor cos and sin are multiplied by (the file's attention_factor, or sqrt(1 + ln(factor) /
  // ln(original)) with factor = max_position_embeddings / original), folded into the score scale
  // as its square.
  std::vector<double> short_factor, long_factor;
  double attention_factor = 1.0;
};

// How a layer's weight is quantized (MLX's layout, any mode: core/quant_format.h).
using LayerQuant = QuantFormat;

// config.json's "quantization" (mlx-lm): the defaults, and per-layer entries keyed by the layer's
// path ("model.layers.0.mlp.down_proj"): their own parameters, or nullopt (false: not quantized).
// Which layers are quantized is settled at load time (models/model.cpp): an entry here, or else a
// "<layer>.scales" tensor in the checkpoint, as mlx-lm decides it.
struct QuantizationConfig {
  bool present = false;
  LayerQuant defaults;
  std::map<std::string, std::optional<LayerQuant>> layers;
};

// Where a block's RMS norms sit. pre (llama): on the attention's and the MLP's inputs. sandwich
// (gemma2/3): on their inputs and on their outputs before each residual add. post (olmo2): on their
// outputs only.
enum class NormLayout { pre, sandwich, post };

struct ModelConfig {
  std::string model_type;  // a row of models/registry.cpp
  int64_t n_vocab = 0, n_embd = 0, n_ff = 0, n_layer = 0, n_head = 0, n_kv_head = 0, head_dim = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  // The sliding layers' own rotary settings where they differ from the full layers' (gemma3: a local
  // base of 10,000 and no scaling); unset: every layer takes `rope`.
  std::optional<RopeConfig> rope_sliding;
  bool tie_word_embeddings = false;
  int64_t max_position_embeddings = 0;
  std::string torch_dtype;  // as the file says ("bfloat16", ...), may be empty
  // The text model inside a multimodal checkpoint (model_type gemma3): the config read from its
  // text_config, its tensors under this prefix ("language_model.") in the files lmtune reads and
  // writes (models/checkpoint_layout.h). Empty for a plain text model.
  std::string checkpoint_prefix;
  // Rotary positions on the first rotary_dim dimensions of each head only (phi3's
  // partial_rotary_factor, Phi-4-mini); 0: all head_dim.
  int64_t rotary_dim = 0;
  QuantizationConfig quantization;

  // Family differences (DESIGN.md, "Architectures are declarations"). The defaults are Llama's.
  bool attention_bias = false;  // q/k/v/o biases (llama's attention_bias, qwen3's)
  bool qkv_bias = false;        // q/k/v only (qwen2)
  bool mlp_bias = false;        // gate/up/down biases
  bool qk_norm = false;         // RMS norm over head_dim of q and k before rotary (qwen3)
  bool qk_norm_whole = false;   // with qk_norm: over all heads' features at once, (n_head * head_dim) weights (olmo2)
  nn::Activation activation = nn::Activation::silu;  // of the gated MLP's gate
  std::vector<int64_t> layer_window;                 // per layer: 0 = full attention, else sliding window size
  std::vector<bool> layer_rope;                      // per layer: false = no rotary positions (smollm3's NoPE)
  // Declared for the families that come next (Gemma, Phi-3); the decoder refuses values other
  // than these defaults until its blocks implement them, so a config is never half-honoured.
  bool norm_unit_offset = false;  // norms scale by (1 + w) (gemma)
  NormLayout norm_layout = NormLayout::pre;
  double embed_scale = 1.0;          // embeddings multiplied by this (gemma: sqrt(n_embd); granite)
  double residual_scale = 1.0;       // attention and MLP outputs times this before their residual add (granite)
  double logit_scale = 1.0;          // logits times this (granite: 1 / logits_scaling)
  double attn_logit_softcap = 0.0;   // tanh soft-cap of attention scores, 0 = none (gemma2)
  double final_logit_softcap = 0.0;  // tanh soft-cap of the logits, 0 = none (gemma2)
  double attn_scale = 0.0;           // on q.k; 0 = 1 / sqrt(head_dim)
  bool fused_qkv = false;            // one qkv_proj weight (phi3)
  bool fused_gate_up = false;        // one gate_up_proj weight (phi3)
  // Mixture of experts (mixtral, qwen3_moe): in the layers marked in layer_moe, the MLP is n_expert
  // gated MLPs of width n_ff_expert behind a router that picks n_expert_used per token.
  int64_t n_expert = 0, n_expert_used = 0, n_ff_expert = 0;
  bool norm_topk_prob = true;     // the chosen experts' weights renormalized to sum to 1
  std::vector<bool> layer_moe;    // per layer: a MoE MLP (else the dense one, of width n_ff)
  std::string moe_block = "mlp";  // the MoE MLP's module name (mixtral: block_sparse_moe)
  // Its experts' gate, up and down layers (mixtral: w1, w3, w2).
  std::string expert_gate = "gate_proj", expert_up = "up_proj", expert_down = "down_proj";

  // Throws naming the file and the field on a missing, mistyped or unsupported value.
  static ModelConfig from_json_text(const std::string& text, const std::string& source);
  static ModelConfig load(const std::string& model_dir);  // reads model_dir/config.json
};

// Typed reads of config.json fields for the family parsers; each error names the file and field.
struct ConfigReader {
  const nlohmann::json& j;
  const std::string& src;
  bool has(const char* key) const;
  int64_t int_or(const char* key, int64_t dflt) const;
  int64_t required_int(const char* key) const;  // present and positive
  double num_or(const char* key, double dflt) const;
  bool bool_or(const char* key, bool dflt) const;
  std::string str_or(const char* key, const std::string& dflt) const;
};

// The rotary inverse frequencies (head_dim / 2) after the config's scaling: cfg.rope's, or with
// sliding, the sliding layers' (cfg.rope_sliding where set).
// With longrope, the short set unless long.
std::vector<float> rope_inv_freq(const ModelConfig& cfg, bool sliding = false, bool long_factors = false);

}  // namespace lmtune
