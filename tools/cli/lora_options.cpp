// `lmtune lora`'s option table and its -c config merge (see lora_options.h).
#include "lora_options.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

#include <yaml-cpp/yaml.h>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace lmtune::cli {

using json = nlohmann::json;

namespace {

const std::vector<std::string> kOptimizers = {"adam", "adamw", "muon", "sgd", "adafactor"};

void warn_unused(const json& unknown, const std::string& prefix, const char* what) {
  for (auto it = unknown.begin(); it != unknown.end(); ++it)
    std::fprintf(stderr, "Warning: config key '%s%s' %s\n", prefix.c_str(), it.key().c_str(), what);
}

// lora_parameters: {rank, scale, dropout, keys}, each key typed; the rest of the defaults stay.
void read_lora_parameters(const YAML::Node& n, const std::string& source, train::LoraParameters& lp) {
  Options sub("lora", "", "");
  sub.add("", &lp.rank, "", "").key("rank");
  sub.add("", &lp.scale, "", "").key("scale");
  sub.add("", &lp.dropout, "", "").key("dropout");
  sub.add("", &lp.keys, "", "").key("keys");
  warn_unused(sub.read_yaml(n, source, "lora_parameters."), "lora_parameters.",
              "is not a lora_parameters key (rank, scale, dropout, keys); ignored");
}

// optimizer_config: per optimizer a mapping of keyword arguments, merged over the defaults' empty
// mappings; the optimizer checks the keywords themselves (train/optimizers.h).
void read_optimizer_config(const YAML::Node& n, const std::string& source, json& out) {
  json v = yaml_to_json(n);
  if (v.is_null()) return;
  LMT_CHECK(v.is_object(), "[config] ", source, ": key 'optimizer_config' must be a mapping of optimizer names (",
            "adam, adamw, muon, sgd, adafactor) to their keyword arguments, got ", v.dump());
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (std::find(kOptimizers.begin(), kOptimizers.end(), it.key()) == kOptimizers.end())
      std::fprintf(stderr,
                   "Warning: config key 'optimizer_config.%s' is not an optimizer (adam, adamw, muon, sgd, "
                   "adafactor); kept in adapter_config.json only\n",
                   it.key().c_str());
    LMT_CHECK(it->is_object() || it->is_null(), "[config] ", source, ": key 'optimizer_config.", it.key(),
              "' must be a mapping of keyword arguments, got ", it->dump());
    out[it.key()] = it->is_null() ? json::object() : *it;
  }
}

// lr_schedule is recorded as written (mlx-lm does); its keys are type-checked here so that a
// mistake names the key.
void read_lr_schedule(const YAML::Node& n, const std::string& source, json& out) {
  out = yaml_to_json(n);
  if (out.is_null()) return;
  std::string name;
  json arguments;
  int64_t warmup = 0;
  double warmup_init = 0;
  Options sub("lora", "", "");
  sub.add("", &name, "", "")
      .key("name")
      .choices({"cosine_decay", "linear_schedule", "exponential_decay", "step_decay"});
  sub.add("", &arguments, "", "").key("arguments");
  sub.add("", &warmup, "", "").key("warmup");
  sub.add("", &warmup_init, "", "").key("warmup_init");
  // train::build_schedule checks the arguments against the schedule's signature.
  warn_unused(sub.read_yaml(n, source, "lr_schedule."), "lr_schedule.",
              "is not an lr_schedule key (name, arguments, warmup, warmup_init); ignored");
}

}  // namespace

LoraOptions::LoraOptions() {
  for (const std::string& name : kOptimizers) optimizer_config[name] = json::object();
}

void declare_lora_options(Options& t, LoraOptions& o) {
  t.add("--model", &o.model, "MODEL", std::string("the model to fine-tune: ") + kModelHelp);
  t.add("--train", &o.train, "", "do training");
  t.add("--data", &o.data, "DIR",
        "a local folder with train.jsonl, valid.jsonl, test.jsonl (Hugging Face dataset ids are not read)");
  t.add("--fine-tune-type", &o.fine_tune_type, "", "").choices({"lora", "dora", "full"});
  t.add("--optimizer", &o.optimizer, "", "its keyword arguments: optimizer_config in the config file")
      .choices(kOptimizers);
  t.add("--mask-prompt", &o.data_options.mask_prompt, "", "supervise only the completion / last message");
  t.add("--num-layers", &o.num_layers, "N", "blocks to fine-tune, counted from the last; -1 = all");
  t.add("--batch-size", &o.batch_size, "N", "");
  t.add("--iters", &o.iters, "N", "micro-batches to train");
  t.add("--val-batches", &o.val_batches, "N", "validation batches, -1 = all; the same ones each time");
  t.add("--learning-rate", &o.learning_rate, "X", "lr_schedule in the config file replaces it");
  t.add("--steps-per-report", &o.steps_per_report, "N", "");
  t.add("--steps-per-eval", &o.steps_per_eval, "N", "");
  t.add("--grad-accumulation-steps", &o.grad_accumulation_steps, "N", "");
  t.add("--resume-adapter-file", &o.resume_adapter_file, "FILE",
        "start from these adapter weights (mlx-lm's partial resume: no optimizer state, step 1); also a "
        "Hugging Face PEFT folder or its adapter_model.safetensors");
  t.add("--adapter-path", &o.adapter_path, "DIR", "where adapters, checkpoints and metrics go");
  t.add("--save-every", &o.save_every, "N", "");
  t.add("--test", &o.test, "", "evaluate on test.jsonl after training (or the adapters in --adapter-path)");
  t.add("--test-batches", &o.test_batches, "N", "-1 = all");
  t.add("--max-seq-length", &o.max_seq_length, "N", "");
  t.add("-c, --config", &o.config, "FILE",
        "a YAML config: the keys below, and each flag's long name in snake_case (batch_size: 8)")
      .cli_only();
  t.add("--grad-checkpoint", &o.grad_checkpoint, "", "recompute each block in backward to save memory");
  t.add("--clear-cache-threshold", &o.clear_cache_threshold, "SIZE", "accepted for compatibility (no effect)")
      .default_text("");
  t.add("--report-to", &o.report_to, "NAMES",
        "wandb / swanlab are not available offline: metrics go to ADAPTER_PATH/metrics.jsonl");
  t.add("--project-name", &o.project_name, "NAME", "accepted for compatibility");
  t.add("--seed", &o.seed, "N", "");
  t.add("--trust-remote-code", &o.trust_remote_code, "", "accepted for compatibility");

  t.group("lmtune's additions");
  t.add("--epochs", &o.epochs, "N", "train N passes over the data (replaces --iters); 0 = use --iters");
  t.add("--grad-clip", &o.grad_clip, "X", "clip the gradient's global L2 norm to X; 0 = off");
  t.add("--resume", &o.resume, "DIR", "continue exactly from a checkpoint (ADAPTER_PATH/checkpoints/NNNNNNN)");
  t.add("--early-stop", &o.early_stop, "N", "stop after N evaluations without a better val loss; 0 = off");
  t.add("--train-embeddings", &o.train_embeddings, "",
        "with --fine-tune-type full: also train embeddings, final norm, lm_head");
  t.add("--pack", &o.pack, "",
        "train on rows packed with whole examples up to --max-seq-length (attention and positions stay within "
        "each example; the loss is unchanged) instead of padded batches of --batch-size examples");
  t.add("--shard", &o.shard, "",
        "with --fine-tune-type full: split the blocks' weights, their gradients and optimizer state across the "
        "data-parallel processes (ZeRO-3 / FSDP style; each block gathered while it runs), so a model too big for "
        "one device trains on several; turns --grad-checkpoint on");
  t.add("--gpus", &o.gpus, "N",
        "data parallel on this node: start N processes, one per GPU (with --device cpu, N CPU processes), "
        "as `torchrun --nproc-per-node N` would; 0 or 1 = this process alone")
      .cli_only()
      .unrecorded();
  t.add("--preview", &o.preview, "N",
        "print the first N training examples as the model sees them (supervised part marked), then exit")
      .cli_only()
      .unrecorded();
  add_device_options(t, o.load,
                     "the frozen base's dtype on CUDA (trainable parameters are float32); the CPU "
                     "computes in float32");

  t.group("config-file keys (-c FILE), as mlx_lm.lora reads them");
  t.add_config_key("lora_parameters", "{rank, scale, dropout, keys}",
                   "the adapters: rank (8), scale (20.0), dropout (0.0), keys: the linear layers of a block to "
                   "adapt (default: all of them)",
                   [&o] {
                     const train::LoraParameters& lp = o.lora_parameters;
                     json j = {{"rank", lp.rank}, {"dropout", lp.dropout}, {"scale", lp.scale}};
                     if (!lp.keys.empty()) j["keys"] = lp.keys;
                     return j;
                   })
      .on_yaml(
          [&o](const YAML::Node& n, const std::string& source) { read_lora_parameters(n, source, o.lora_parameters); });
  t.add_config_key("optimizer_config", "{OPTIMIZER: {KEY: VALUE}}",
                   "keyword arguments per optimizer, as mlx.optimizers names them (e.g. adamw: {weight_decay: 0.01})",
                   [&o] { return o.optimizer_config; })
      .on_yaml([&o](const YAML::Node& n, const std::string& source) {
        read_optimizer_config(n, source, o.optimizer_config);
      });
  t.add_config_key("lr_schedule", "{name, arguments, warmup, warmup_init}",
                   "cosine_decay | linear_schedule | exponential_decay | step_decay with its arguments, after an "
                   "optional linear warmup of N updates from warmup_init",
                   [&o] { return o.lr_schedule; })
      .on_yaml([&o](const YAML::Node& n, const std::string& source) { read_lr_schedule(n, source, o.lr_schedule); });
  t.add("", &o.data_options.prompt_feature, "NAME", "the prompt key of completions data")
      .key("prompt_feature")
      .record_when_set();
  t.add("", &o.data_options.completion_feature, "NAME", "the completion key of completions data")
      .key("completion_feature")
      .record_when_set();
  t.add("", &o.data_options.chat_feature, "NAME", "the messages key of chat data")
      .key("chat_feature")
      .record_when_set();
  t.add("", &o.data_options.text_feature, "NAME", "the text key of text data").key("text_feature").record_when_set();
  t.add("", &o.hf_dataset, "", "Hugging Face datasets: not read (use a local --data folder)")
      .key("hf_dataset")
      .record_when_set();
}

namespace {

// The first byte YAML 1.2 does not allow in a stream (C0 controls but tab, LF and CR; DEL; C1
// controls but NEL, U+0080-U+009F as UTF-8), or npos. text is valid UTF-8.
size_t find_yaml_forbidden(const std::string& text) {
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7F) return i;
    if (c == 0xC2 && i + 1 < text.size()) {
      const unsigned char d = static_cast<unsigned char>(text[i + 1]);
      if (d >= 0x80 && d <= 0x9F && d != 0x85) return i;
    }
  }
  return std::string::npos;
}

std::string hex_byte(char c) {
  static const char* digits = "0123456789ABCDEF";
  const unsigned char u = static_cast<unsigned char>(c);
  return {digits[u >> 4], digits[u & 15]};
}

void check_utf8_strings(const json& j, const std::string& where, const std::string& key) {
  if (j.is_string()) {
    LMT_CHECK(tok::find_invalid_utf8(j.get_ref<const std::string&>()) == std::string::npos, "[config] ", where, ": ",
              key.empty() ? "a value" : key, ": not valid UTF-8 once its escapes are decoded");
  } else if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string name = key.empty() ? it.key() : key + "." + it.key();
      LMT_CHECK(tok::find_invalid_utf8(it.key()) == std::string::npos, "[config] ", where, ": a key under ",
                key.empty() ? "the top level" : key, " is not valid UTF-8 once its escapes are decoded");
      check_utf8_strings(*it, where, name);
    }
  } else if (j.is_array()) {
    for (size_t i = 0; i < j.size(); ++i) check_utf8_strings(j[i], where, key + "[" + std::to_string(i) + "]");
  }
}

}  // namespace

json merge_lora_config(Options& t, LoraOptions& o) {
  json unknown = json::object();
  if (o.config) {
    YAML::Node root;
    try {
      std::ifstream in(*o.config, std::ios::binary);
      LMT_CHECK(in.good(), "[config] ", *o.config, ": cannot read the file");
      const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      // A key or value that is not UTF-8 would otherwise fail much later, when the recorded config is
      // written out as JSON, naming neither file nor key.
      if (const size_t bad = tok::find_invalid_utf8(text); bad != std::string::npos)
        fail("[config] ", *o.config, ": line ", 1 + std::count(text.begin(), text.begin() + ptrdiff_t(bad), '\n'),
             ": not valid UTF-8 (keys and values must be UTF-8 text)");
      // Nor may it hold what YAML does not allow in a stream (a NUL, other control characters): yaml-cpp
      // reads past a NUL into bytes that are not UTF-8 (found by fuzz_lora_yaml).
      if (const size_t bad = find_yaml_forbidden(text); bad != std::string::npos)
        fail("[config] ", *o.config, ": line ", 1 + std::count(text.begin(), text.begin() + ptrdiff_t(bad), '\n'),
             ": control character 0x", hex_byte(text[bad]), " (YAML allows tab, line breaks and printable text only)");
      root = YAML::Load(text);
    } catch (const YAML::Exception& e) {
      fail("[config] ", *o.config, ": ", e.what());
    }
    try {
      check_yaml_size(root, *o.config);
      unknown = t.read_yaml(root, *o.config);
    } catch (const YAML::Exception& e) {  // a conversion the file's shape does not allow (a list as a key)
      fail("[config] ", *o.config, ": ", e.what());
    }
    warn_unused(unknown, "", "is not an mlx_lm.lora key; kept in adapter_config.json only");
  }
  LMT_CHECK(o.hf_dataset.is_null(),
            "hf_dataset: Hugging Face datasets are not read by lmtune; point --data at a local folder");
  json recorded = unknown;
  json table = t.to_json();
  for (auto it = table.begin(); it != table.end(); ++it) recorded[it.key()] = *it;  // the table's keys win
  // Every string as it will be written to adapter_config.json (a YAML escape such as "\ud800" can
  // still decode to bytes that are not UTF-8): refused here, naming the key, not when the file is written.
  check_utf8_strings(recorded, o.config ? *o.config : std::string("the command line"), "");
  o.load.model = o.model;
  return recorded;
}

}  // namespace lmtune::cli
