// `lmtune lora`'s options: mlx_lm.lora's flags and config keys with its defaults (lora.py
// CONFIG_DEFAULTS) and lmtune's additions, declared once in one table and merged
// command line > -c config.yaml > defaults into LoraOptions.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "options.h"
#include "runtime_setup.h"
#include "train/adapters.h"
#include "train/dataset.h"

namespace lmtune::cli {

struct LoraOptions {
  // mlx_lm.lora's flags (each also a config key: --batch-size is batch_size)
  std::string model = "Qwen/Qwen3-0.6b";
  bool train = false;
  std::string data = "mlx-community/WikiSQL";
  std::string fine_tune_type = "lora";
  std::string optimizer = "adam";
  int64_t num_layers = 16;
  int64_t batch_size = 4;
  int64_t iters = 1000;
  int64_t val_batches = 25;
  double learning_rate = 1e-5;
  int64_t steps_per_report = 10;
  int64_t steps_per_eval = 200;
  int64_t grad_accumulation_steps = 1;
  std::optional<std::string> resume_adapter_file;
  std::string adapter_path = "adapters";
  int64_t save_every = 100;
  bool test = false;
  int64_t test_batches = 500;
  int64_t max_seq_length = 2048;
  std::optional<std::string> config;
  bool grad_checkpoint = false;
  nlohmann::json clear_cache_threshold = 0;  // mlx-lm takes a size string such as 2GB; recorded only
  std::optional<std::string> report_to, project_name;
  int64_t seed = 0;
  bool trust_remote_code = false;
  // mlx_lm.lora's config-only keys; mask_prompt and the *_feature names live in data
  train::DataOptions data_options;
  train::LoraParameters lora_parameters;
  nlohmann::json optimizer_config;  // {optimizer: {keyword: value}}, passed to make_optimizer
  nlohmann::json lr_schedule;       // {name, arguments, warmup, warmup_init} or null, as written
  nlohmann::json hf_dataset;        // refused: only local data folders are read
  // lmtune's additions
  int64_t epochs = 0;
  double grad_clip = 0.0;
  std::optional<std::string> resume;
  int64_t early_stop = 0;
  bool train_embeddings = false;
  bool shard = false;  // full fine-tuning sharded across the data-parallel ranks (train/sharding.h)
  bool pack = false;
  std::optional<int64_t> preview;
  int64_t gpus = 0;  // > 1: start that many ranks of this command on this node (lora_launch.cpp)
  LoadOptions load;  // --device, --dtype (model is copied in after the merge)

  LoraOptions();
};

// Adds LoraOptions' rows to t, in --help's order and groups.
void declare_lora_options(Options& t, LoraOptions& o);

// After t.parse: reads the -c config into the rows the command line left alone, warning about
// keys no row reads. Returns the merged namespace as mlx-lm records it in adapter_config.json:
// every key, the config's unknown keys, and device / dtype / the feature names only when given.
nlohmann::json merge_lora_config(Options& t, LoraOptions& o);

}  // namespace lmtune::cli
