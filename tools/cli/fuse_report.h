// fuse --data DIR (lmtune's): the validation loss of the base, the base with the adapter and the
// fused model on DIR/valid.jsonl (lora's data pipeline and evaluate(), as `lora --test` computes
// its loss), and the share of the adapter's gain the fused model keeps.
#pragma once
#include <string>

namespace lmtune::cli::fuse_report {

// The gain fused must keep, as a fraction of the adapter's: below it fuse warns.
constexpr double kKeptGainWarning = 0.9;

// Throws naming the file when dir/valid.jsonl is missing (called before any work).
void check_data(const std::string& dir);

// Prints the three losses (CPU, f32) and the kept share of the gain; warns on stdout and stderr
// below kKeptGainWarning. The batch size, max_seq_length and mask_prompt are the adapter's
// training settings (adapter_config.json; mlx-lm's defaults where absent). Returns the kept share
// (NaN when the adapter does not lower the base's loss).
double report(const std::string& base_dir, const std::string& adapter_path, const std::string& fused_dir,
              const std::string& data_dir);

}  // namespace lmtune::cli::fuse_report
