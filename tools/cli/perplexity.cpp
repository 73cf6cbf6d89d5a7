// `lmtune perplexity`: mlx_lm.perplexity's flags, defaults and printed lines. The data are the
// train split of a local dataset (a folder's train.jsonl, or a .jsonl file), tokenized as
// `lora` tokenizes it (train/dataset.h); rows are picked as mlx-lm picks them (numpy's seeded
// permutation, train/perplexity.h) and scored with the model's forward and the cross-entropy op
// that `lora --test` uses.
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>

#include "cli_commands.h"
#include "core/error.h"
#include "options.h"
#include "runtime_setup.h"
#include "train/dataset.h"
#include "train/perplexity.h"

namespace fs = std::filesystem;

namespace lmtune::cli {

namespace {

struct PerplexityOptions {
  std::optional<std::string> model;
  bool trust_remote_code = false;
  int64_t batch_size = 8, sequence_length = 512, num_samples = 256, seed = 123;
  std::string data_path = "allenai/tulu-3-sft-mixture";
  LoadOptions load;  // --device, --dtype (lmtune's, as generate's); .model is set from --model
};

void declare(Options& t, PerplexityOptions& o) {
  t.add("--model", &o.model, "MODEL", std::string("Path to model (required): ") + kModelHelp + ".");
  t.add("--trust-remote-code", &o.trust_remote_code, "", "accepted for compatibility; lmtune runs no model code");
  t.add("--batch-size", &o.batch_size, "N", "Batch size for evaluation");
  t.add("--sequence-length", &o.sequence_length, "N", "Sequence length for evaluation (at least 2)");
  t.add("--num-samples", &o.num_samples, "N", "Number of samples to use (-1 for all available)");
  t.add("--data-path", &o.data_path, "PATH",
        "The data: a local folder with train.jsonl (its train split, as mlx-lm loads a dataset folder) or a "
        ".jsonl file, in an mlx-lm dataset format (text, completions or chat). lmtune does not download "
        "Hugging Face datasets.");
  t.add("--seed", &o.seed, "N", "Random seed for data sampling");
  add_device_options(t, o.load);
}

// The train split's file: data_path itself when it is a file, else data_path/train.jsonl.
std::string train_file(const std::string& data_path) {
  if (fs::is_regular_file(data_path)) return data_path;
  if (fs::is_directory(data_path)) {
    std::string f = (fs::path(data_path) / "train.jsonl").string();
    LMT_CHECK(fs::is_regular_file(f), "--data-path ", data_path, ": no train.jsonl in this folder");
    return f;
  }
  fail("--data-path ", data_path,
       ": no such file or folder (lmtune reads local data only: a folder with train.jsonl or a .jsonl file)");
}

int perplexity(const PerplexityOptions& o) {
  if (!o.model) throw UsageError("the following arguments are required: --model");
  if (o.sequence_length < 2)
    throw UsageError("--sequence-length must be at least 2 (got " + std::to_string(o.sequence_length) + ")");
  if (o.batch_size < 1) throw UsageError("--batch-size must be at least 1 (got " + std::to_string(o.batch_size) + ")");
  if (o.seed < 0 || o.seed > 0xffffffffLL)
    throw UsageError("--seed must be between 0 and 2**32 - 1 (got " + std::to_string(o.seed) + ")");
  const std::string data_file = train_file(o.data_path);  // before the model loads: a typo fails at once

  std::printf("Loading model from %s...\n", o.model->c_str());
  std::fflush(stdout);
  LoadOptions lo = o.load;
  lo.model = *o.model;
  LoadedModel lm = load_for_generation(lo);
  std::printf("Model loaded: %.1fM parameters\n", total_parameters(*lm.model) / 1e6);

  std::printf("\nLoading dataset...\n");
  std::printf("  Sequence length: %lld\n", (long long)o.sequence_length);
  // mlx-lm loads --data-path as a Hugging Face dataset (a local folder through `datasets`) and
  // says so; the line is kept for scripts that read the output.
  std::printf("Loading Hugging Face dataset %s.\n", o.data_path.c_str());
  std::fflush(stdout);
  train::Dataset ds = train::load_jsonl_dataset(data_file, *lm.chat, train::DataOptions{});
  LMT_CHECK(!ds.empty(), "--data-path ", o.data_path, ": ", data_file, " has no examples");
  auto rows = train::perplexity_rows(ds, o.sequence_length, o.num_samples, uint32_t(o.seed));
  LMT_CHECK(!rows.empty(), "--data-path ", o.data_path, ": fewer tokens than one sequence of ", o.sequence_length);
  std::printf("  Loaded %zu samples\n", rows.size());

  std::printf("\nEvaluating perplexity with batch size %lld...\n", (long long)o.batch_size);
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  train::PerplexityResult r = train::eval_perplexity(*lm.model, rows, o.batch_size, [](int64_t i, int64_t n) {
    std::printf("  Processed %lld/%lld batches...\r", (long long)i, (long long)n);
    std::fflush(stdout);
  });
  std::printf("\n");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double tokens_evaluated = double(rows.size()) * double(o.sequence_length - 1);

  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  std::printf("\n============================================================\n");
  std::printf("EVALUATION RESULTS\n");
  std::printf("============================================================\n");
  std::printf("Model: %s\n", o.model->c_str());
  std::printf("Perplexity: %.3f \u00b1 %.3f\n", r.ppl, r.se_ppl);
  std::printf("Evaluation time: %.2f seconds\n", secs);
  std::printf("Peak memory: %.2f GB\n", double(ru.ru_maxrss) * 1024 / 1e9);  // the process's peak RSS
  std::printf("Tokens per second: %.0f\n", tokens_evaluated / secs);
  std::printf("\nDataset statistics:\n");
  std::printf("  Total samples: %zu\n", rows.size());
  std::printf("  Total tokens: %lld\n", (long long)rows.size() * (long long)o.sequence_length);
  return 0;
}

}  // namespace

int run_perplexity(int argc, char** argv) {
  PerplexityOptions o;
  Options t("perplexity", "lmtune perplexity --model MODEL [--data-path PATH] [options]",
            "Evaluate the perplexity of a model (mlx_lm.perplexity's flags, defaults and output): the tokens of "
            "the data's examples, in a seeded random order, cut into --num-samples rows of --sequence-length, "
            "exp of the mean next-token cross-entropy, with its standard error.");
  declare(t, o);
  return run_with_options(t, argc, argv, [&] { return perplexity(o); });
}

}  // namespace lmtune::cli
