// `lmtune lora`: mlx_lm.lora's flags, YAML config (-c) and defaults with its precedence
// (CLI > config > defaults; lora_options.h), its output lines, and lmtune's additions: --epochs,
// --grad-clip, --resume, --early-stop, --pack, --preview, --device, --dtype. Data from a local folder only.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli_commands.h"
#include "core/error.h"
#include "dist/comm.h"
#include "lora_options.h"
#include "runtime/generate.h"
#include "runtime_setup.h"
#include "train/adapters.h"
#include "train/data_parallel.h"
#include "train/dataset.h"
#include "train/peft.h"
#include "train/trainer.h"

namespace lmtune::cli {

namespace {

using json = nlohmann::json;

void print_preview(const train::Dataset& ds, const Tokenizer& tok, int64_t n, bool color) {
  std::printf("Preview of %s (%s format); the supervised part is between %s:\n", ds.path.c_str(),
              train::data_format_name(ds.format), color ? "the green highlight" : "<<< and >>>");
  for (int64_t i = 0; i < n && i < int64_t(ds.size()); ++i) {
    const train::Example& ex = ds.examples[size_t(i)];
    int64_t sup = std::max<int64_t>(0, int64_t(ex.tokens.size()) - std::max<int64_t>(ex.offset, 1));
    std::printf("\n--- example %lld (line %lld): %zu tokens, %lld supervised ---\n%s\n", (long long)i + 1,
                (long long)ex.line, ex.tokens.size(), (long long)sup, train::preview_example(ex, tok, color).c_str());
  }
}

// --resume-adapter-file: an adapters.safetensors of lmtune / mlx-lm, or a Hugging Face PEFT folder
// or its adapter_model.safetensors (names and layouts converted, config checked against ac).
void load_resume_file(Model& model, const train::AdapterConfig& ac, const std::string& path) {
  namespace fs = std::filesystem;
  fs::path p(path);
  std::string parent = p.has_parent_path() ? p.parent_path().string() : ".";
  if (fs::is_directory(p)) {
    LMT_CHECK(train::is_peft_folder(path), "--resume-adapter-file ", path,
              " is a folder but not a PEFT adapter folder (adapter_config.json + adapter_model.safetensors); "
              "give an adapters .safetensors file");
    train::load_peft_weights_into(model, ac, path);
  } else if (p.filename() == "adapter_model.safetensors" && train::is_peft_folder(parent)) {
    train::load_peft_weights_into(model, ac, path);
  } else {
    train::load_adapter_weights(model, path);
  }
}

// Data parallel (WORLD_SIZE > 1 in the environment, as torchrun sets it): each process uses the GPU
// of its LOCAL_RANK (the LOCAL_RANK-th of CUDA_VISIBLE_DEVICES, set before CUDA starts), ranks other
// than 0 print nothing to stdout (their errors still go to stderr), and the group meets here, before
// the model loads, so that a rank that fails to load stops the others at once.
std::unique_ptr<dist::Comm> join_group() {
  const dist::DistEnv env = dist::dist_env_from_environment();
  if (env.world == 1) return nullptr;
  std::vector<std::string> visible;
  if (const char* v = std::getenv("CUDA_VISIBLE_DEVICES"); v && *v) {
    std::stringstream ss(v);
    for (std::string item; std::getline(ss, item, ',');) visible.push_back(item);
  }
  const std::string mine = visible.empty()                           ? std::to_string(env.local_rank)
                           : size_t(env.local_rank) < visible.size() ? visible[size_t(env.local_rank)]
                                                                     : std::string();
  LMT_CHECK(!mine.empty(), "[dist] LOCAL_RANK ", env.local_rank,
            " has no device in CUDA_VISIBLE_DEVICES=", std::getenv("CUDA_VISIBLE_DEVICES"));
  ::setenv("CUDA_VISIBLE_DEVICES", mine.c_str(), 1);
  if (env.rank > 0) LMT_CHECK(std::freopen("/dev/null", "w", stdout), "[dist] cannot silence rank ", env.rank);
  std::unique_ptr<dist::Comm> comm = dist::connect_tcp(env);
  std::printf("Data parallel: %d processes (WORLD_SIZE), rank 0 at %s:%d; each takes 1 row in %d of every batch\n",
              env.world, env.master_addr.c_str(), env.master_port, env.world);
  std::fflush(stdout);
  return comm;
}

int lora(const LoraOptions& o, const json& recorded) {
  if (o.report_to)
    std::printf(
        "Note: --report-to %s: remote trackers (wandb, swanlab) are not available offline; metrics are "
        "written to %s/metrics.jsonl\n",
        o.report_to->c_str(), o.adapter_path.c_str());
  const bool do_train = o.train, do_test = o.test;
  LMT_CHECK(!o.pack || do_train || o.preview,
            "--pack (pack: true) packs the training batches: it needs --train (testing reads unpacked batches)");
  const train::DataOptions& dopt = o.data_options;
  const std::string& data_dir = o.data;

  if (o.preview) {
    ChatTemplate chat = ChatTemplate::load(resolve_model_dir(o.model));
    train::Dataset ds = train::load_jsonl_dataset(data_dir + "/train.jsonl", chat, dopt);
    LMT_CHECK(!ds.empty(), "Training set not found or empty: ", data_dir, "/train.jsonl");
    print_preview(ds, chat.tokenizer(), *o.preview, isatty(fileno(stdout)));
    return 0;
  }

  std::unique_ptr<dist::Comm> comm = join_group();
  const bool root = !comm || comm->rank() == 0;
  std::printf("Loading pretrained model\n");
  std::fflush(stdout);
  LoadedModel lm = load_for_generation(o.load);
  Model& model = *lm.model;

  std::printf("Loading datasets\n");
  std::fflush(stdout);
  train::DataSplits data = train::load_local_dataset(data_dir, *lm.chat, dopt, do_train, do_test);

  const int64_t batch_size = o.batch_size, max_seq = o.max_seq_length;
  const std::string& adapter_path = o.adapter_path;
  // Declared here, after the model and the group: --test after training still runs sharded.
  std::unique_ptr<DeviceCollective> device_comm;
  std::unique_ptr<train::ShardedWeights> sharded;
  if (do_test && !do_train) {
    if (!adapter_path.empty()) train::load_adapters(model, adapter_path);
  } else if (do_train) {
    std::printf("Training\n");
    train::AdapterConfig ac;
    ac.fine_tune_type = o.fine_tune_type;
    ac.num_layers = o.num_layers;
    ac.train_embeddings = o.train_embeddings;
    if (ac.fine_tune_type != "full") ac.lora = o.lora_parameters;
    // A mixture of experts: the router only when asked, so the keys trained are written out (mlx-lm's
    // default set, which the adapter's loaders would take from a config without keys, includes it).
    if (ac.fine_tune_type != "full" && ac.lora.keys.empty() && model.config().n_expert > 0)
      ac.lora.keys = train::training_lora_keys(model, ac.fine_tune_type);
    if (o.shard) {
      LMT_CHECK(ac.fine_tune_type == "full",
                "--shard splits the weights that full fine-tuning trains (--fine-tune-type "
                "full); ",
                ac.fine_tune_type, " adapters are small enough to stay whole on every process");
      LMT_CHECK(o.optimizer == "adam" || o.optimizer == "adamw" || o.optimizer == "sgd",
                "--shard: each process "
                "updates a slice of every flattened weight, which needs an optimizer that works element by element "
                "(adam, adamw, sgd); ",
                o.optimizer, " works on whole matrices");
    }
    train::attach_adapters(model, ac, uint64_t(o.seed));
    if (o.resume_adapter_file) {
      std::printf("Loading fine-tuned weights from %s\n", o.resume_adapter_file->c_str());
      load_resume_file(model, ac, *o.resume_adapter_file);
    }
    // Counted, not held: --shard frees the weights that no one else holds.
    const double trained = double(train::count_parameters(train::trainable_parameters(model)));
    double trainable = trained / 1e6;
    double total = total_parameters(model);  // mlx-lm's get_total_parameters
    if (ac.fine_tune_type != "full") total += trained;
    total /= 1e6;
    std::printf("Trainable parameters: %.3f%% (%.3fM/%.3fM)\n", trainable * 100 / total, trainable, total);
    if (root) train::save_adapter_config(adapter_path, ac, recorded);

    // Both come from the config file only: their errors name it and the key.
    const std::string config_file = o.config ? *o.config + ": " : std::string();
    train::Schedule lr;
    try {
      lr = train::build_schedule(o.lr_schedule, o.learning_rate);
    } catch (const std::exception& e) {
      fail("[config] ", config_file, "lr_schedule: ", e.what());
    }
    std::unique_ptr<train::Optimizer> opt;
    try {
      opt = train::make_optimizer(o.optimizer, o.optimizer_config.value(o.optimizer, json::object()), lr);
    } catch (const std::exception& e) {  // a keyword unknown, or of the wrong type
      fail("[config] ", config_file, "optimizer_config.", o.optimizer, ": ", e.what());
    }

    train::TrainingArgs ta;
    ta.batch_size = batch_size;
    ta.iters = o.iters;
    ta.epochs = o.epochs;
    ta.val_batches = o.val_batches;
    ta.steps_per_report = o.steps_per_report;
    ta.steps_per_eval = o.steps_per_eval;
    ta.save_every = o.save_every;
    ta.max_seq_length = max_seq;
    ta.grad_accumulation_steps = o.grad_accumulation_steps;
    ta.grad_checkpoint = o.grad_checkpoint || o.shard;
    ta.pack = o.pack;
    ta.grad_clip = o.grad_clip;
    ta.early_stop = o.early_stop;
    ta.seed = uint64_t(o.seed);
    ta.adapter_path = adapter_path;
    ta.resume = o.resume.value_or("");
    // The bar goes to stderr, and only when stdout is a terminal too: under `| tee log` it would
    // interleave with the piped lines.
    ta.progress = root && isatty(fileno(stdout)) && isatty(fileno(stderr));
    ta.comm = comm.get();
    if (comm && model.device() == Device::cuda) {
      std::string why;
      device_comm = train::make_group_collective(*comm, model.device(), &why);
      if (device_comm)
        std::printf("Data parallel: gradients summed with NCCL\n");
      else
        std::printf("Data parallel: gradients summed through host memory over TCP (NCCL: %s)\n", why.c_str());
      ta.device_comm = device_comm.get();
    }
    if (o.shard) {
      sharded = std::make_unique<train::ShardedWeights>(model, train::trainable_parameters(model), comm.get(),
                                                        device_comm.get());
      ta.sharded = sharded.get();
      std::printf(
          "Sharded: each of %d processes holds 1/%d of the blocks' weights, gradients and optimizer state "
          "(gradient checkpointing on)\n",
          comm ? comm->world() : 1, comm ? comm->world() : 1);
    }
    train::train(model, *opt, lr, data.train, data.valid, ta, stdout);
  }
  if (do_test) {
    std::printf("Testing\n");
    std::fflush(stdout);
    double loss = train::evaluate(model, data.test, batch_size, o.test_batches, max_seq, uint64_t(o.seed), comm.get());
    std::printf("Test loss %.3f, Test ppl %.3f.\n", loss, std::exp(loss));
  }
  return 0;
}

}  // namespace

int run_lora(int argc, char** argv) {
  LoraOptions o;
  Options t("lora", "lmtune lora --model MODEL --train --data DIR [options]",
            "Fine-tune a model with LoRA, DoRA or full fine-tuning (mlx_lm.lora's flags, YAML config and output). "
            "Precedence: command-line flag > -c config.yaml > defaults.");
  declare_lora_options(t, o);
  return run_with_options(t, argc, argv, [&] {
    json recorded = merge_lora_config(t, o);
    if (!o.train && !o.test && !o.preview) throw UsageError("Must provide at least one of --train or --test");
    if (o.preview && *o.preview < 0) throw UsageError("--preview needs N >= 0");
    // a config's `iters: -5` lands here too: name both spellings
    if (o.iters < 0 || (o.iters == 0 && o.train && o.epochs == 0))
      throw UsageError("--iters (iters in a config) must be a positive number of steps, got " +
                       std::to_string(o.iters) + "; nothing would be trained");
    if (o.epochs < 0) throw UsageError("--epochs must be 0 (use --iters) or more, got " + std::to_string(o.epochs));
    if (!std::isfinite(o.learning_rate) || o.learning_rate < 0)
      throw UsageError("--learning-rate (learning_rate in a config) must be a finite number >= 0, got " +
                       show_default(o.learning_rate));
    if (o.gpus < 0) throw UsageError("--gpus must be 0 or more, got " + std::to_string(o.gpus));
    if (o.gpus > 1) {
      const char* world = std::getenv("WORLD_SIZE");
      if (!world) return launch_local_ranks(int(o.gpus), argc, argv);
      // A rank the launcher (or torchrun) started: --gpus must agree with the group it is in.
      if (std::to_string(o.gpus) != world)
        throw UsageError("--gpus " + std::to_string(o.gpus) + " in a process started with WORLD_SIZE=" + world +
                         " (torchrun starts the processes itself: leave --gpus out)");
    }
    return lora(o, recorded);
  });
}

}  // namespace lmtune::cli
