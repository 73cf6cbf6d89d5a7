// Fine-tuning targets as mlx-lm sets them up (tuner/utils.py: linear_to_lora_layers, lora.py):
// LoRA / DoRA adapters on the linear layers of the last num_layers blocks, or those blocks'
// weights unfrozen for full fine-tuning; and the adapter folder (adapters.safetensors +
// adapter_config.json) in mlx-lm's layout, written atomically.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "models/model.h"

namespace lmtune::train {

struct LoraParameters {
  int64_t rank = 8;
  float scale = 20.f;  // mlx-lm's default since June 2025 (it was 10.0)
  float dropout = 0.f;
  std::vector<std::string> keys;  // block-relative ("self_attn.q_proj"); empty: every linear of a block
};

struct AdapterConfig {
  std::string fine_tune_type = "lora";  // lora | dora | full
  int64_t num_layers = 16;              // counted from the last block; <= 0 means all (as mlx-lm's slice)
  LoraParameters lora;                  // ignored for full
  bool train_embeddings = false;        // full only (lmtune's addition): also train the weights outside the
                                        // blocks (embeddings, final norm, lm_head), e.g. pretraining from scratch
};

// mlx-lm's default keys (an adapter config without keys): every linear layer inside a block (for
// the Llama family self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj), read from the family's
// tensor list; in a mixture of experts also the router ("block_sparse_moe.gate") and the experts
// as mlx-lm stacks them ("block_sparse_moe.switch_mlp.gate_proj", ...), the experts left out for
// dora (mlx-lm has no DoRA for them).
std::vector<std::string> default_lora_keys(const Model& model, const std::string& fine_tune_type = "lora");
// What `lmtune lora` trains when no keys are given: mlx-lm's defaults without a mixture's router
// (whose routing a low-rank update would shift for every expert at once); ask for it by key.
std::vector<std::string> training_lora_keys(const Model& model, const std::string& fine_tune_type);
// The blocks' dense linear layers only (no router, no experts): the modules PEFT's "all-linear"
// finds in a transformers model.
std::vector<std::string> block_linear_keys(const Model& model);

// Freezes the model (no weight is a parameter, adapters removed, masters baked in), then attaches
// fresh adapters (lora | dora; lora_a from seed) or unfreezes the last num_layers blocks (full;
// norms included, embeddings and lm_head stay frozen unless cfg.train_embeddings). For full, an
// f32 weight becomes the trainable leaf itself; a bf16 / f16 weight gets an f32 master copy
// (Model::masters) that is trained while the forward reads its cast. Throws on an unknown type, a
// key that names no linear layer of a block, or num_layers above the model's block count.
void attach_adapters(Model& model, const AdapterConfig& cfg, uint64_t seed = 0);

// The trainable tensors by mlx-lm's names, sorted: "<linear>.lora_a" (in, r), ".lora_b" (r, out),
// ".m" (out) for adapters; the checkpoint names of unfrozen weights for full (their f32 masters
// where the model is not f32). All are f32 and the model's own leaves: updating them in place
// trains the model.
std::vector<std::pair<std::string, Tensor>> trainable_parameters(Model& model);
int64_t count_parameters(const std::vector<std::pair<std::string, Tensor>>& params);

// adapter_config.json: `extra` (mlx-lm writes its whole argument namespace) overlaid with
// fine_tune_type, num_layers and lora_parameters {rank, dropout, scale[, keys]} (null for full);
// keys sorted, indent 4, as mlx-lm's save_config.
void save_adapter_config(const std::string& dir, const AdapterConfig& cfg, const nlohmann::json& extra = {});
AdapterConfig load_adapter_config(const std::string& dir);

// Writes the trainable parameters to `path` (CPU copies, f32: adapters, and for full the f32
// weights or masters, so that updates below the model dtype's resolution are kept; mlx-lm's
// load_weights and lmtune's loader cast them to the model's dtype). A mixture's experts are
// written stacked as mlx-lm's SwitchLinear holds them: "<block>.switch_mlp.gate_proj.lora_a"
// (n_expert, r, in), ".lora_b" (n_expert, out, r), ".weight" (n_expert, out, in); the loaders
// below read that layout back into each expert's own tensors.
void save_adapter_weights(const std::string& path, Model& model);
// The same for tensors already taken out of the model: trainable_parameters' names, CPU tensors in
// their shapes (sharded training gathers them one by one, train/sharding.h).
void save_adapter_tensors(const std::string& path, const ModelConfig& cfg,
                          std::vector<std::pair<std::string, Tensor>> tensors);
// Reads adapter_config.json and adapters.safetensors from dir, attaches the adapters and copies
// the stored values in; like mlx-lm's load_adapters, every stored name must be a trainable
// parameter (lora_a / lora_b / m leaves for lora and dora) with the right shape. A Hugging Face
// PEFT folder (train/peft.h) is read as the lmtune adapter it equals.
AdapterConfig load_adapters(Model& model, const std::string& dir);
// Copies the tensors of a safetensors file into the model's trainable parameters (names and
// shapes checked as above); used for --resume-adapter-file.
void load_adapter_weights(Model& model, const std::string& path);
// The same file's tensors by trainable_parameters' names, checked, not copied (CPU, in place in the
// file's mapping): sharded training takes its slices of them.
std::vector<std::pair<std::string, Tensor>> read_adapter_weights(Model& model, const std::string& path);

}  // namespace lmtune::train
