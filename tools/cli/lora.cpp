// `lmtune lora`: mlx_lm.lora's flags, YAML config (-c) and defaults with its precedence
// (CLI > config > defaults), its output lines, and lmtune's additions: --epochs, --grad-clip,
// --resume, --early-stop, --preview, --device, --dtype. Data from a local folder only.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "cli_commands.h"
#include "core/error.h"
#include "runtime/generate.h"
#include "runtime_setup.h"
#include "train/adapters.h"
#include "train/dataset.h"
#include "train/trainer.h"

namespace lmtune::cli {

namespace {

using json = nlohmann::json;

const char kUsage[] =
    "usage: lmtune lora --model DIR --train --data DIR [options]\n"
    "\n"
    "Fine-tune a model with LoRA, DoRA or full fine-tuning (mlx_lm.lora's flags, YAML config and output).\n"
    "Precedence: command-line flag > -c config.yaml > defaults.\n"
    "\n"
    "  --model DIR                    the model folder to fine-tune\n"
    "  --train                        do training\n"
    "  --data DIR                     folder with train.jsonl, valid.jsonl, test.jsonl (data)\n"
    "  --fine-tune-type lora|dora|full  (lora)\n"
    "  --optimizer adam|adamw|sgd|adafactor  (adam); its keyword arguments: optimizer_config in the YAML\n"
    "  --mask-prompt                  supervise only the completion / last message\n"
    "  --num-layers N                 blocks to fine-tune, from the last; -1 = all (16)\n"
    "  --batch-size N                 (4)\n"
    "  --iters N                      micro-batches to train (1000)\n"
    "  --val-batches N                validation batches, -1 = all; the same ones each time (25)\n"
    "  --learning-rate X              (1e-5); lr_schedule in the YAML\n"
    "  --steps-per-report N           (10)\n"
    "  --steps-per-eval N             (200)\n"
    "  --grad-accumulation-steps N    (1)\n"
    "  --resume-adapter-file FILE     start from these adapter weights (mlx-lm's partial resume)\n"
    "  --adapter-path DIR             where adapters, checkpoints and metrics go (adapters)\n"
    "  --save-every N                 (100)\n"
    "  --test                         evaluate on test.jsonl after training (or the adapters in --adapter-path)\n"
    "  --test-batches N               -1 = all (500)\n"
    "  --max-seq-length N             (2048)\n"
    "  -c, --config FILE              a YAML config (mlx-lm's keys)\n"
    "  --grad-checkpoint              recompute each block in backward to save memory\n"
    "  --clear-cache-threshold SIZE   accepted for compatibility (no effect)\n"
    "  --report-to NAMES              wandb / swanlab are not available offline: metrics go to metrics.jsonl\n"
    "  --project-name NAME            accepted for compatibility\n"
    "  --seed N                       (0)\n"
    "  --trust-remote-code            accepted for compatibility\n"
    "lmtune's additions:\n"
    "  --epochs N                     train N passes over the data (replaces --iters)\n"
    "  --grad-clip X                  clip the gradient's global L2 norm to X\n"
    "  --resume DIR                   continue exactly from a checkpoint (ADAPTER_PATH/checkpoints/NNNNNNN)\n"
    "  --early-stop N                 stop after N evaluations without a better val loss\n"
    "  --train-embeddings             with --fine-tune-type full: also train embeddings, final norm, lm_head\n"
    "  --preview N                    print the first N training examples as the model sees them, then exit\n"
    "  --device cpu|cuda              (default: cuda when available)\n"
    "  --dtype float32|bfloat16|float16  the frozen base on CUDA; trainable parameters are float32\n"
    "  -h, --help                     show this help\n";

json defaults() {
  return json{{"model", "Qwen/Qwen3-0.6b"},
              {"train", false},
              {"fine_tune_type", "lora"},
              {"optimizer", "adam"},
              {"optimizer_config", {{"adam", json::object()}, {"adamw", json::object()}, {"muon", json::object()},
                                    {"sgd", json::object()}, {"adafactor", json::object()}}},
              {"data", "mlx-community/WikiSQL"},
              {"seed", 0},
              {"num_layers", 16},
              {"batch_size", 4},
              {"iters", 1000},
              {"val_batches", 25},
              {"learning_rate", 1e-5},
              {"steps_per_report", 10},
              {"steps_per_eval", 200},
              {"resume_adapter_file", nullptr},
              {"adapter_path", "adapters"},
              {"save_every", 100},
              {"test", false},
              {"test_batches", 500},
              {"max_seq_length", 2048},
              {"config", nullptr},
              {"grad_checkpoint", false},
              {"grad_accumulation_steps", 1},
              {"clear_cache_threshold", 0},
              {"lr_schedule", nullptr},
              {"lora_parameters", {{"rank", 8}, {"dropout", 0.0}, {"scale", 20.0}}},
              {"mask_prompt", false},
              {"report_to", nullptr},
              {"project_name", nullptr},
              {"trust_remote_code", false},
              {"epochs", 0},
              {"grad_clip", 0.0},
              {"resume", nullptr},
              {"early_stop", 0},
              {"train_embeddings", false}};
}

const std::set<std::string> kYamlOnly = {"prompt_feature", "completion_feature", "text_feature", "chat_feature",
                                         "hf_dataset", "device", "dtype"};

json yaml_to_json(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined: return nullptr;
    case YAML::NodeType::Sequence: {
      json a = json::array();
      for (const auto& x : n) a.push_back(yaml_to_json(x));
      return a;
    }
    case YAML::NodeType::Map: {
      json o = json::object();
      for (const auto& kv : n) o[kv.first.as<std::string>()] = yaml_to_json(kv.second);
      return o;
    }
    case YAML::NodeType::Scalar: break;
  }
  std::string s = n.Scalar();
  if (n.Tag() == "!") return s;  // quoted
  if (s == "~" || s == "null" || s == "Null" || s == "NULL") return nullptr;
  for (const char* t : {"true", "True", "TRUE", "yes", "Yes", "on", "On"})
    if (s == t) return true;
  for (const char* f : {"false", "False", "FALSE", "no", "No", "off", "Off"})
    if (s == f) return false;
  try {
    size_t pos;
    long long v = std::stoll(s, &pos);
    if (pos == s.size()) return v;
  } catch (...) {
  }
  try {  // mlx-lm's loader reads 1e-5 as a float (PyYAML alone would not)
    size_t pos;
    double v = std::stod(s, &pos);
    if (pos == s.size()) return v;
  } catch (...) {
  }
  return s;
}

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

}  // namespace

int run_lora(int argc, char** argv) {
  json cli = json::object();
  std::string config_path;
  int64_t preview = -1;
  try {
    Args a(argc, argv);
    while (a.next()) {
      if (a.is("-h", "--help")) {
        std::fputs(kUsage, stdout);
        return 0;
      } else if (a.is("--model")) cli["model"] = a.value();
      else if (a.is("--train")) cli["train"] = true;
      else if (a.is("--data")) cli["data"] = a.value();
      else if (a.is("--fine-tune-type")) {
        std::string v = a.value();
        if (v != "lora" && v != "dora" && v != "full")
          throw UsageError("argument --fine-tune-type: invalid choice: '" + v + "' (choose from 'lora', 'dora', 'full')");
        cli["fine_tune_type"] = v;
      } else if (a.is("--optimizer")) {
        std::string v = a.value();
        if (v != "adam" && v != "adamw" && v != "muon" && v != "sgd" && v != "adafactor")
          throw UsageError("argument --optimizer: invalid choice: '" + v +
                           "' (choose from 'adam', 'adamw', 'muon', 'sgd', 'adafactor')");
        cli["optimizer"] = v;
      } else if (a.is("--mask-prompt")) cli["mask_prompt"] = true;
      else if (a.is("--num-layers")) cli["num_layers"] = a.int_value();
      else if (a.is("--batch-size")) cli["batch_size"] = a.int_value();
      else if (a.is("--iters")) cli["iters"] = a.int_value();
      else if (a.is("--val-batches")) cli["val_batches"] = a.int_value();
      else if (a.is("--learning-rate")) cli["learning_rate"] = a.float_value();
      else if (a.is("--steps-per-report")) cli["steps_per_report"] = a.int_value();
      else if (a.is("--steps-per-eval")) cli["steps_per_eval"] = a.int_value();
      else if (a.is("--grad-accumulation-steps")) cli["grad_accumulation_steps"] = a.int_value();
      else if (a.is("--resume-adapter-file")) cli["resume_adapter_file"] = a.value();
      else if (a.is("--adapter-path")) cli["adapter_path"] = a.value();
      else if (a.is("--save-every")) cli["save_every"] = a.int_value();
      else if (a.is("--test")) cli["test"] = true;
      else if (a.is("--test-batches")) cli["test_batches"] = a.int_value();
      else if (a.is("--max-seq-length")) cli["max_seq_length"] = a.int_value();
      else if (a.is("-c", "--config")) config_path = a.value();
      else if (a.is("--grad-checkpoint")) cli["grad_checkpoint"] = true;
      else if (a.is("--clear-cache-threshold")) cli["clear_cache_threshold"] = a.value();
      else if (a.is("--report-to")) cli["report_to"] = a.value();
      else if (a.is("--project-name")) cli["project_name"] = a.value();
      else if (a.is("--seed")) cli["seed"] = a.int_value();
      else if (a.is("--trust-remote-code")) cli["trust_remote_code"] = true;
      else if (a.is("--epochs")) cli["epochs"] = a.int_value();
      else if (a.is("--grad-clip")) cli["grad_clip"] = a.float_value();
      else if (a.is("--resume")) cli["resume"] = a.value();
      else if (a.is("--early-stop")) cli["early_stop"] = a.int_value();
      else if (a.is("--train-embeddings")) cli["train_embeddings"] = true;
      else if (a.is("--preview")) preview = a.int_value();
      else if (a.is("--device")) cli["device"] = a.value();
      else if (a.is("--dtype")) cli["dtype"] = a.value();
      else a.unknown();
    }
  } catch (const UsageError& e) {
    std::fprintf(stderr, "lmtune lora: error: %s (see lmtune lora --help)\n", e.what());
    return 2;
  }

  // defaults < YAML < CLI
  json cfg = defaults();
  if (!config_path.empty()) {
    YAML::Node root;
    try {
      root = YAML::LoadFile(config_path);
    } catch (const YAML::Exception& e) {
      fail("[config] ", config_path, ": ", e.what());
    }
    json y = yaml_to_json(root);
    LMT_CHECK(y.is_object() || y.is_null(), "[config] ", config_path, " is not a mapping of keys to values");
    json d = defaults();
    for (auto it = y.begin(); y.is_object() && it != y.end(); ++it) {
      if (!d.contains(it.key()) && !kYamlOnly.count(it.key()))
        std::fprintf(stderr, "Warning: config key '%s' is not an mlx_lm.lora key; kept in adapter_config.json only\n",
                     it.key().c_str());
      if (it.key() == "optimizer_config" && it->is_object()) {
        for (auto o = it->begin(); o != it->end(); ++o) cfg["optimizer_config"][o.key()] = *o;
      } else {
        cfg[it.key()] = *it;
      }
    }
    cfg["config"] = config_path;
  }
  for (auto it = cli.begin(); it != cli.end(); ++it) cfg[it.key()] = *it;
  LMT_CHECK(!cfg.contains("hf_dataset") || cfg["hf_dataset"].is_null(),
            "hf_dataset: Hugging Face datasets are not available offline; point --data at a local folder");
  if (!cfg["report_to"].is_null())
    std::printf("Note: --report-to %s: remote trackers (wandb, swanlab) are not available offline; metrics are "
                "written to %s/metrics.jsonl\n",
                cfg["report_to"].dump().c_str(), cfg["adapter_path"].get<std::string>().c_str());

  const bool do_train = cfg["train"].get<bool>(), do_test = cfg["test"].get<bool>();
  if (!do_train && !do_test && preview < 0) {
    std::fprintf(stderr, "lmtune lora: error: Must provide at least one of --train or --test\n");
    return 2;
  }
  train::DataOptions dopt;
  dopt.mask_prompt = cfg["mask_prompt"].get<bool>();
  dopt.prompt_feature = cfg.value("prompt_feature", dopt.prompt_feature);
  dopt.completion_feature = cfg.value("completion_feature", dopt.completion_feature);
  dopt.chat_feature = cfg.value("chat_feature", dopt.chat_feature);
  dopt.text_feature = cfg.value("text_feature", dopt.text_feature);
  const std::string data_dir = cfg["data"].get<std::string>();

  if (preview >= 0) {
    ChatTemplate chat = ChatTemplate::load(resolve_model_dir(cfg["model"].get<std::string>()));
    train::Dataset ds = train::load_jsonl_dataset(data_dir + "/train.jsonl", chat, dopt);
    LMT_CHECK(!ds.empty(), "Training set not found or empty: ", data_dir, "/train.jsonl");
    print_preview(ds, chat.tokenizer(), preview, isatty(fileno(stdout)));
    return 0;
  }

  std::printf("Loading pretrained model\n");
  std::fflush(stdout);
  LoadOptions lo;
  lo.model = cfg["model"].get<std::string>();
  lo.device = cfg.value("device", std::string());
  lo.dtype = cfg.value("dtype", std::string());
  LoadedModel lm = load_for_generation(lo);
  Model& model = *lm.model;

  std::printf("Loading datasets\n");
  std::fflush(stdout);
  train::DataSplits data = train::load_local_dataset(data_dir, *lm.chat, dopt, do_train, do_test);

  const int64_t batch_size = cfg["batch_size"], max_seq = cfg["max_seq_length"];
  const std::string adapter_path = cfg["adapter_path"].get<std::string>();
  if (do_test && !do_train) {
    if (!adapter_path.empty()) train::load_adapters(model, adapter_path);
  } else if (do_train) {
    std::printf("Training\n");
    train::AdapterConfig ac;
    ac.fine_tune_type = cfg["fine_tune_type"];
    ac.num_layers = cfg["num_layers"];
    ac.train_embeddings = cfg["train_embeddings"].get<bool>();
    if (ac.fine_tune_type != "full") {
      const json& lp = cfg["lora_parameters"];
      LMT_CHECK(lp.is_object(), "lora_parameters must be a mapping (rank, scale, dropout, keys)");
      ac.lora.rank = lp.value("rank", int64_t(8));
      ac.lora.scale = lp.value("scale", 20.f);
      ac.lora.dropout = lp.value("dropout", 0.f);
      if (lp.contains("keys") && !lp["keys"].is_null()) ac.lora.keys = lp["keys"].get<std::vector<std::string>>();
    }
    train::attach_adapters(model, ac, cfg["seed"].get<uint64_t>());
    if (!cfg["resume_adapter_file"].is_null()) {
      std::printf("Loading fine-tuned weights from %s\n", cfg["resume_adapter_file"].get<std::string>().c_str());
      train::load_adapter_weights(model, cfg["resume_adapter_file"]);
    }
    auto params = train::trainable_parameters(model);
    double trainable = double(train::count_parameters(params)) / 1e6;
    double total = 0;
    for (auto& [n, w] : model.weights()) total += double(w.numel());
    if (ac.fine_tune_type != "full") total += double(train::count_parameters(params));
    total /= 1e6;
    std::printf("Trainable parameters: %.3f%% (%.3fM/%.3fM)\n", trainable * 100 / total, trainable, total);
    json extra = cfg;
    if (ac.fine_tune_type == "full") extra["lora_parameters"] = nullptr;
    train::save_adapter_config(adapter_path, ac, extra);

    train::Schedule lr = train::build_schedule(cfg["lr_schedule"], cfg["learning_rate"].get<double>());
    std::string oname = cfg["optimizer"];
    json oc = cfg["optimizer_config"].value(oname, json::object());
    auto opt = train::make_optimizer(oname, oc, lr);

    train::TrainingArgs ta;
    ta.batch_size = batch_size;
    ta.iters = cfg["iters"];
    ta.epochs = cfg["epochs"];
    ta.val_batches = cfg["val_batches"];
    ta.steps_per_report = cfg["steps_per_report"];
    ta.steps_per_eval = cfg["steps_per_eval"];
    ta.save_every = cfg["save_every"];
    ta.max_seq_length = max_seq;
    ta.grad_accumulation_steps = cfg["grad_accumulation_steps"];
    ta.grad_checkpoint = cfg["grad_checkpoint"];
    ta.grad_clip = cfg["grad_clip"];
    ta.early_stop = cfg["early_stop"];
    ta.seed = cfg["seed"];
    ta.adapter_path = adapter_path;
    ta.resume = cfg["resume"].is_null() ? "" : cfg["resume"].get<std::string>();
    // The bar goes to stderr, and only when stdout is a terminal too: under `| tee log` it would
    // interleave with the piped lines.
    ta.progress = isatty(fileno(stdout)) && isatty(fileno(stderr));
    train::train(model, *opt, lr, data.train, data.valid, ta, stdout);
  }
  if (do_test) {
    std::printf("Testing\n");
    std::fflush(stdout);
    double loss = train::evaluate(model, data.test, batch_size, cfg["test_batches"], max_seq, cfg["seed"]);
    std::printf("Test loss %.3f, Test ppl %.3f.\n", loss, std::exp(loss));
  }
  return 0;
}

}  // namespace lmtune::cli
