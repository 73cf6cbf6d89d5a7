// Hugging Face PEFT LoRA / DoRA adapter folders (adapter_config.json + adapter_model.safetensors)
// read into lmtune's adapters and written from them: names `base_model.model.<module>.lora_A.weight`
// (r, in), `.lora_B.weight` (out, r), `.lora_magnitude_vector` (out) <-> lmtune's `<module>.lora_a`
// (in, r), `.lora_b` (r, out), `.m` (out); scale = lora_alpha / r (lora_alpha / sqrt(r) with rsLoRA).
#pragma once
#include <string>
#include <vector>

#include "models/model.h"
#include "train/adapters.h"

namespace lmtune::train {

// True when dir is a PEFT adapter folder: it holds adapter_model.safetensors (or .bin), or its
// adapter_config.json has a "peft_type".
bool is_peft_folder(const std::string& dir);

// A PEFT adapter folder read and checked against a model: the lmtune adapter config it equals and
// its tensors under lmtune's names and layouts (f32, CPU), sorted by name.
struct PeftTensor {
  std::string name;    // lmtune's: "model.layers.3.self_attn.q_proj.lora_a"
  std::string source;  // PEFT's: "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"
  Tensor value;        // f32 CPU in lmtune's layout: lora_a (in, r), lora_b (r, out), m (out)
};
struct PeftAdapter {
  AdapterConfig cfg;  // fine_tune_type lora | dora, num_layers, rank, scale, dropout, keys
  std::vector<PeftTensor> tensors;
  std::string weights_path;  // the adapter_model.safetensors read
};

// The adapter config a PEFT adapter_config.json equals on this model (the first half of
// read_peft_adapter; refusals as described there).
AdapterConfig read_peft_config(const Model& model, const std::string& config_path);

// Reads dir/adapter_config.json and dir/adapter_model.safetensors. Refuses, naming the field or
// tensor: a peft_type other than LORA, options lmtune cannot honour (bias, modules_to_save,
// fan_in_fan_out, rank/alpha patterns, targets outside the blocks such as lm_head, layer
// selections other than the last N blocks, ...), and tensors that do not fit the model (rank,
// layer count, shapes, missing or extra names).
PeftAdapter read_peft_adapter(const Model& model, const std::string& dir, const std::string& weights_file = "");

// read_peft_adapter, then attach_adapters with its config and copy the tensors in.
AdapterConfig load_peft_adapters(Model& model, const std::string& dir);

// --resume-adapter-file with a PEFT folder or its adapter_model.safetensors: the adapters the
// training attached (cfg) are filled with the PEFT weights; its type, rank, scale, keys and
// layers must equal cfg's (each difference is named).
void load_peft_weights_into(Model& model, const AdapterConfig& cfg, const std::string& path);

// Writes the model's LoRA / DoRA adapters (attached by load_adapters) as a PEFT folder at
// save_path: adapter_config.json (peft_type LORA, task_type CAUSAL_LM, r, lora_alpha = scale * r,
// target_modules, layers_to_transform when not every block is adapted, use_dora, ...) and
// adapter_model.safetensors (f32), and README.md, a model card like peft's save_pretrained writes
// (front matter: base_model, library_name peft, pipeline_tag, tags). Built as save_path.tmp.<pid>
// and renamed; an existing save_path is refused.
void export_peft(const Model& model, const AdapterConfig& cfg, const std::string& base_model,
                 const std::string& save_path);

}  // namespace lmtune::train
