// See fuse_report.h.
#include "fuse_report.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "runtime_setup.h"
#include "train/dataset.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace lmtune::cli::fuse_report {

namespace {

struct EvalSettings {
  int64_t batch_size = 4, max_seq_length = 2048;  // mlx_lm.lora's defaults
  train::DataOptions data;
};

EvalSettings settings_of(const std::string& adapter_path) {
  EvalSettings s;
  const std::string p = adapter_path + "/adapter_config.json";
  std::ifstream in(p);
  if (!in) return s;
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    fail("[fuse] ", p, ": not valid JSON: ", e.what());
  }
  auto int_of = [&](const char* key, int64_t& out) {
    if (!j.contains(key) || j[key].is_null()) return;
    LMT_CHECK(j[key].is_number_integer() && j[key].get<int64_t>() > 0, "[fuse] ", p, ": '", key,
              "' must be a positive integer, got ", j[key].dump());
    out = j[key].get<int64_t>();
  };
  int_of("batch_size", s.batch_size);
  int_of("max_seq_length", s.max_seq_length);
  if (j.contains("mask_prompt") && j["mask_prompt"].is_boolean()) s.data.mask_prompt = j["mask_prompt"].get<bool>();
  return s;
}

double val_loss(const std::string& model_dir, const std::string& adapter_path, const std::string& valid,
                const EvalSettings& s, int64_t& n_examples) {
  LoadOptions lo;
  lo.model = model_dir;
  lo.adapter_path = adapter_path;
  lo.device = "cpu";
  LoadedModel lm = load_for_generation(lo);
  train::Dataset ds = train::load_jsonl_dataset(valid, *lm.chat, s.data);
  LMT_CHECK(!ds.empty(), "[fuse] --data: ", valid, " has no examples");
  n_examples = int64_t(ds.examples.size());
  return train::evaluate(*lm.model, ds, s.batch_size, -1, s.max_seq_length);
}

}  // namespace

void check_data(const std::string& dir) {
  const std::string valid = dir + "/valid.jsonl";
  LMT_CHECK(fs::is_regular_file(valid), "[fuse] --data ", dir, ": ", valid,
            " not found (the folder of `lmtune lora --data`, with valid.jsonl)");
}

double report(const std::string& base_dir, const std::string& adapter_path, const std::string& fused_dir,
              const std::string& data_dir) {
  const std::string valid = data_dir + "/valid.jsonl";
  const EvalSettings s = settings_of(adapter_path);
  int64_t n = 0;
  const double base = val_loss(base_dir, "", valid, s, n);
  const double adapter = val_loss(base_dir, adapter_path, valid, s, n);
  const double fused = val_loss(fused_dir, "", valid, s, n);
  std::printf("Validation loss on %s (%lld examples, batch size %lld):\n", valid.c_str(), (long long)n,
              (long long)s.batch_size);
  std::printf("  base           %.4f\n  base + adapter %.4f\n  fused          %.4f\n", base, adapter, fused);
  double kept = std::numeric_limits<double>::quiet_NaN();
  if (!(base - adapter > 0)) {
    std::printf("The adapter does not lower the base's validation loss: no gain to keep.\n");
  } else {
    kept = (base - fused) / (base - adapter);
    std::printf("The fused model keeps %.1f%% of the adapter's gain ((base - fused) / (base - adapter)).\n",
                100 * kept);
    if (kept < kKeptGainWarning) {
      const char* fmt =
          "[WARN] The fused model keeps only %.1f%% of the adapter's validation-loss gain (under %.0f%%): "
          "use the adapter with --adapter-path, fuse with --dequantize, or (on a quantized base) raise "
          "--keep-threshold.\n";
      std::printf(fmt, 100 * kept, 100 * kKeptGainWarning);
      std::fprintf(stderr, fmt, 100 * kept, 100 * kKeptGainWarning);
    }
  }
  std::fflush(stdout);
  return kept;
}

}  // namespace lmtune::cli::fuse_report
