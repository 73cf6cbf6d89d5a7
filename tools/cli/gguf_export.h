// GGUF export for llama.cpp (and Ollama, LM Studio): a model folder of a family lmtune supports
// (llama, mistral -> llama.cpp's "llama"; granite, smollm3, olmo2, gemma, gemma2, gemma3_text ->
// "gemma3", phi3, qwen2, qwen3; mixtral -> "llama" with experts, qwen3_moe -> "qwen3moe": gguf_arch.cpp),
// dense or quantized (dequantized first), written with llama.cpp's tensor names, hyper-parameters,
// rope layout and tokenizer metadata; and an lmtune / mlx-lm LoRA adapter as llama.cpp's `--lora` GGUF.
#pragma once
#include <optional>
#include <string>

#include "models/config.h"

namespace lmtune::cli::gguf_export {

// f32 ... q4_0: every 2-D weight in that type (as convert_hf_to_gguf --outtype); q4_k_s ... q6_k:
// llama-quantize's K-quant mixes, a type per tensor (gguf_mix.h).
enum class OutType { f32, f16, bf16, q8_0, q4_0, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k };
constexpr const char* kOutTypes = "f32, f16, bf16, q8_0, q4_0, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k";
OutType parse_out_type(const std::string& name);  // throws naming the value and the choices
const char* out_type_name(OutType t);

struct Arch {
  std::string name;         // general.architecture: llama | granite | ... | phi3 | qwen2 | qwen3
  bool permute_qk = false;  // llama.cpp's llama rope pairs adjacent dims: q/k rows are permuted
};

// The llama.cpp architecture of cfg, or an error naming what llama.cpp's loader would not take.
Arch arch_of(const ModelConfig& cfg, const std::string& dir);

// Everything that can be refused before any weight is read: the family, the config, the tokenizer,
// the type (a K-quant mix of a mixture of experts).
void check_model(const std::string& dir, OutType type);

// Writes the model in dir to path (which must not exist), atomically. Prints one line per tensor
// written in another type than asked (rows that are not whole blocks) and a summary of the types.
void export_model(const std::string& dir, const std::string& path, OutType type);

// Writes the LoRA adapter of adapter_dir (adapters.safetensors + adapter_config.json, checked
// against the base in model_dir as `generate --adapter-path` checks it) as a llama.cpp LoRA GGUF:
// <base tensor>.lora_a (r, in) and .lora_b (out, r), adapter.lora.alpha = scale * r. DoRA and full
// adapters are refused (fuse them instead). type: f32, f16 or bf16.
void export_lora(const std::string& model_dir, const std::string& adapter_dir, const std::string& path, OutType type);

}  // namespace lmtune::cli::gguf_export

namespace lmtune::cli::gguf_export {

// fuse's --export-gguf / --gguf-path / --gguf-type: checked before fuse writes anything.
struct FuseRequest {
  std::string path;  // --gguf-path joined to --save-path as os.path.join does (an absolute path stays)
  OutType type = OutType::f16;
};
// nullopt without --export-gguf (then --gguf-path / --gguf-type are refused, naming them); else
// the request, after check_model(model_dir, type) and a refusal of an existing absolute --gguf-path.
std::optional<FuseRequest> fuse_request(bool export_gguf, const std::optional<std::string>& gguf_path,
                                        const std::optional<std::string>& gguf_type, const std::string& save_path,
                                        const std::string& model_dir);
// Writes the fused folder's GGUF; on failure removes the fused folder (so a failed fuse leaves no
// output) and rethrows, saying so.
void fuse_export(const FuseRequest& r, const std::string& save_path);

}  // namespace lmtune::cli::gguf_export
