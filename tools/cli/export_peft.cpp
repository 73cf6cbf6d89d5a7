// `lmtune export-peft`: an adapter folder of lmtune lora / mlx_lm.lora (LoRA or DoRA) written as a
// Hugging Face PEFT folder that peft's PeftModel.from_pretrained loads on the transformers model
// (train/peft.h: names, layouts, config); built under a temporary name and renamed into place.
#include <cstdio>
#include <filesystem>
#include <string>

#include "cli_commands.h"
#include "core/error.h"
#include "io/hub.h"
#include "options.h"
#include "runtime/generate.h"
#include "runtime_setup.h"
#include "train/adapters.h"
#include "train/peft.h"

namespace fs = std::filesystem;

namespace lmtune::cli {

namespace {

struct ExportPeftOptions {
  std::string model;
  std::string adapter_path = "adapters";
  std::string save_path = "peft_adapter";
  std::string base_model_name;
};

int export_peft(const ExportPeftOptions& o) {
  if (o.model.empty()) throw UsageError("the following arguments are required: --model");
  if (fs::exists(fs::symlink_status(o.save_path)))
    fail("Cannot save to the path ", o.save_path,
         " as it already exists. Please delete the file/directory or specify a new path to save to.");
  LMT_CHECK(fs::is_directory(o.adapter_path), "The adapter path does not exist: ", o.adapter_path);
  const std::string dir = resolve_model_dir(o.model);
  // The adapters are read and checked (names, shapes) as generate --adapter-path reads them, on the
  // base loaded as fuse loads it (CPU, its dtype: the adapters themselves are f32 whatever it is).
  std::string cfg_dtype = ModelConfig::load(dir).torch_dtype;
  DType dtype = cfg_dtype == "float32" ? DType::f32 : cfg_dtype == "float16" ? DType::f16 : DType::bf16;
  std::unique_ptr<Model> model = load_model(dir, Device::cpu, dtype);
  train::AdapterConfig cfg = train::load_adapters(*model, o.adapter_path);
  std::string base = o.base_model_name.empty()
                         ? (is_hub_repo_id(o.model) ? o.model.substr(0, o.model.find('@')) : o.model)
                         : o.base_model_name;
  train::export_peft(*model, cfg, base, o.save_path);
  std::printf("Saved %s adapter (rank %lld, %zu linear layers) as a PEFT folder to %s\n", cfg.fine_tune_type.c_str(),
              (long long)cfg.lora.rank, model->adapters().size(), o.save_path.c_str());
  return 0;
}

}  // namespace

int run_export_peft(int argc, char** argv) {
  ExportPeftOptions o;
  Options t("export-peft", "lmtune export-peft --model MODEL [--adapter-path PATH] [--save-path PATH]",
            "Write a LoRA or DoRA adapter folder (lmtune lora / mlx_lm.lora) as a Hugging Face PEFT adapter "
            "(adapter_config.json + adapter_model.safetensors) for PeftModel.from_pretrained.");
  t.add("--model", &o.model, "MODEL", std::string("The base model the adapter was trained on: ") + kModelHelp + ".");
  t.add("--adapter-path", &o.adapter_path, "PATH", "the adapter folder (adapters.safetensors + adapter_config.json)");
  t.add("--save-path", &o.save_path, "PATH", "the PEFT folder to write (it must not exist)");
  t.add("--base-model-name", &o.base_model_name, "NAME", "base_model_name_or_path written into adapter_config.json")
      .default_text("--model as given");
  return run_with_options(t, argc, argv, [&] { return export_peft(o); });
}

}  // namespace lmtune::cli
