// Checkpoint layouts other than the per-layer one lmtune's families read, mapped onto it where the
// files are opened (load_model, convert, inspect), and back where lmtune writes (adapters, convert,
// fuse):
// - A mixture of experts: Hugging Face checkpoints keep one linear layer per expert
//   ("<block>.experts.<e>.<w1|gate_proj>"); mlx-lm stacks a layer's experts into one
//   (n_expert, out, in) tensor under "<block>.switch_mlp.<gate_proj|up_proj|down_proj>" (its
//   sanitize, SwitchLinear), and names adapters, quantization entries and saved weights that way.
// - A text tower inside a multimodal checkpoint (gemma3): every tensor of the language model under
//   ModelConfig::checkpoint_prefix ("language_model."), the vision tower's and projector's beside
//   them, which a text model drops (mlx-lm's sanitize does too).
#pragma once
#include <string>

#include "models/config.h"

namespace lmtune {

class SafetensorsModel;

// Presents a folder's tensors under lmtune's names: the checkpoint prefix stripped (and the vision
// tower's tensors dropped), stacked switch_mlp tensors (weight, and scales / biases when quantized)
// as per-expert slices of the same file (no copy). Throws naming the tensor when a stacked one's
// first axis is not n_expert.
void read_checkpoint_layout(const ModelConfig& cfg, SafetensorsModel& files);

// "model.layers.3.block_sparse_moe.experts.2.w1" -> "model.layers.3.block_sparse_moe.switch_mlp.gate_proj"
// with expert = 2; the same for a block-relative path ("block_sparse_moe.experts.2.w1"). Returns ""
// (expert untouched) for a path that is not an expert's linear layer of cfg.
std::string stacked_expert_path(const ModelConfig& cfg, const std::string& path, int64_t* expert = nullptr);

// The inverse: expert e's layer of a stacked path ("...switch_mlp.gate_proj", e = 2 ->
// "...experts.2.w1"); "" for a path that is not a stacked expert layer of cfg.
std::string per_expert_path(const ModelConfig& cfg, const std::string& stacked, int64_t e);

}  // namespace lmtune
