// The two layouts of a mixture of experts' weights. Hugging Face checkpoints keep one linear layer
// per expert ("<block>.experts.<e>.<w1|gate_proj>"); mlx-lm stacks the experts of each layer into
// one (n_expert, out, in) tensor under "<block>.switch_mlp.<gate_proj|up_proj|down_proj>" (its
// sanitize, SwitchLinear), and names adapters, quantization entries and saved weights that way.
// lmtune's model works on the per-expert names; these map the stacked ones onto them.
#pragma once
#include <string>

#include "models/config.h"

namespace lmtune {

class SafetensorsModel;

// Presents a folder's stacked switch_mlp tensors (weight, and scales / biases when quantized) under
// the per-expert names of cfg's layout (slices of the same file: no copy). A folder already in the
// per-expert layout is left as it is. Throws naming the tensor when its first axis is not n_expert.
void read_stacked_experts(const ModelConfig& cfg, SafetensorsModel& files);

// "model.layers.3.block_sparse_moe.experts.2.w1" -> "model.layers.3.block_sparse_moe.switch_mlp.gate_proj"
// with expert = 2; the same for a block-relative path ("block_sparse_moe.experts.2.w1"). Returns ""
// (expert untouched) for a path that is not an expert's linear layer of cfg.
std::string stacked_expert_path(const ModelConfig& cfg, const std::string& path, int64_t* expert = nullptr);

// The inverse: expert e's layer of a stacked path ("...switch_mlp.gate_proj", e = 2 ->
// "...experts.2.w1"); "" for a path that is not a stacked expert layer of cfg.
std::string per_expert_path(const ModelConfig& cfg, const std::string& stacked, int64_t e);

}  // namespace lmtune
