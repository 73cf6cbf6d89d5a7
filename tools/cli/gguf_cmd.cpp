// `lmtune gguf`: a model folder (or Hub id) as a llama.cpp GGUF file, or, with --adapter-path, its
// LoRA adapter as a llama.cpp `--lora` GGUF; and the glue of fuse's --export-gguf.
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>

#include "cli_commands.h"
#include "core/error.h"
#include "gguf_export.h"
#include "io/hub.h"
#include "options.h"
#include "runtime/generate.h"
#include "runtime_setup.h"

namespace fs = std::filesystem;

namespace lmtune::cli {

namespace gguf_export {

std::optional<FuseRequest> fuse_request(bool export_gguf, const std::optional<std::string>& gguf_path,
                                        const std::optional<std::string>& gguf_type, const std::string& save_path,
                                        const std::string& model_dir) {
  if (!export_gguf) {
    if (gguf_path) throw UsageError("--gguf-path names the file of --export-gguf; add --export-gguf");
    if (gguf_type) throw UsageError("--gguf-type is the type of --export-gguf's file; add --export-gguf");
    return std::nullopt;
  }
  FuseRequest r;
  if (gguf_type) r.type = parse_out_type(*gguf_type);
  // mlx-lm: os.path.join(save_path, gguf_path), so an absolute --gguf-path is used as it is.
  const std::string name = gguf_path ? *gguf_path : std::string("ggml-model-") + out_type_name(r.type) + ".gguf";
  r.path = (fs::path(save_path) / name).string();
  if (fs::path(name).is_absolute())
    LMT_CHECK(!fs::exists(fs::symlink_status(r.path)), "[gguf] ", r.path,
              " already exists; delete it or name another --gguf-path");
  check_model(model_dir, r.type);  // family, config, tokenizer, type: refused before anything is written
  return r;
}

void fuse_export(const FuseRequest& r, const std::string& save_path) {
  try {
    export_model(save_path, r.path, r.type);
  } catch (const std::exception& e) {
    std::error_code ec;
    fs::remove_all(save_path, ec);
    fail(e.what(), " (the fused folder ", save_path, " was removed: the fuse did not complete)");
  }
}

}  // namespace gguf_export

namespace {

struct GgufOptions {
  std::string model;
  std::optional<std::string> adapter_path, gguf_path, gguf_type;
};

}  // namespace

int run_gguf(int argc, char** argv) {
  GgufOptions o;
  Options t(
      "gguf", "lmtune gguf --model MODEL [--adapter-path PATH] [--gguf-path PATH] [--gguf-type TYPE]",
      "Write a model as a GGUF file for llama.cpp (llama, mistral, mixtral, granite, smollm3, olmo2, gemma, gemma2, "
      "gemma3_text, phi3, qwen2, qwen3, qwen3_moe; a quantized model is "
      "dequantized first), or with --adapter-path its LoRA adapter as a llama.cpp --lora GGUF to use with "
      "the base model's GGUF. `lmtune fuse --export-gguf` writes the fused model's GGUF.");
  t.add("--model", &o.model, "MODEL",
        std::string("The model (the LoRA's base with --adapter-path): ") + kModelHelp + ".");
  t.add("--adapter-path", &o.adapter_path, "PATH",
        "A LoRA adapter folder (adapters.safetensors + adapter_config.json of lmtune lora / mlx_lm.lora): write "
        "it as a llama.cpp LoRA adapter GGUF instead of the model (DoRA and full adapters: fuse them).");
  t.add("--gguf-path", &o.gguf_path, "PATH", "The GGUF file to write (it must not exist).")
      .default_text("ggml-model-TYPE.gguf, or ggml-adapter-TYPE.gguf with --adapter-path");
  t.add("--gguf-type", &o.gguf_type, "TYPE",
        std::string("The type of the 2-D weights (") + gguf_export::kOutTypes +
            "; q4_k_s ... q6_k are llama-quantize's K-quant mixes, a type per tensor as it chooses them; norms "
            "and biases stay f32; a LoRA adapter: f32, f16 or bf16).")
      .default_text("f16");
  return run_with_options(t, argc, argv, [&] {
    if (o.model.empty()) throw UsageError("the following arguments are required: --model");
    const gguf_export::OutType type = gguf_export::parse_out_type(o.gguf_type.value_or("f16"));
    const std::string dir = resolve_model_dir(o.model);
    const std::string kind = o.adapter_path ? "ggml-adapter-" : "ggml-model-";
    const std::string path = o.gguf_path.value_or(kind + gguf_export::out_type_name(type) + ".gguf");
    if (o.adapter_path)
      gguf_export::export_lora(dir, *o.adapter_path, path, type);
    else
      gguf_export::export_model(dir, path, type);
    return 0;
  });
}

}  // namespace lmtune::cli
