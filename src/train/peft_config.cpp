// A PEFT LoraConfig (adapter_config.json) read as the lmtune adapter config it equals on a model:
// which modules target_modules / layers_to_transform select (peft's matching rules: a list entry
// matches a module name equal to it or ending in "." + it, a string is re.fullmatch'ed, "all-linear"
// is every linear layer but the output head), and every option lmtune cannot honour refused by name.
#include <cmath>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "core/error.h"
#include "train/peft.h"

namespace lmtune::train {

using json = nlohmann::json;

namespace {

// null, false, "", [] and {} count as unset (peft's defaults for the options it leaves off).
bool unset(const json& v) {
  return v.is_null() || (v.is_boolean() && !v.get<bool>()) || (v.is_string() && v.get<std::string>().empty()) ||
         ((v.is_array() || v.is_object()) && v.empty());
}

// Fields read below, and fields that only shape initialization, bookkeeping or hardware placement
// (the saved weights already carry their effect).
const std::set<std::string> kRead = {"peft_type",      "r",
                                     "lora_alpha",     "use_rslora",
                                     "use_dora",       "lora_dropout",
                                     "bias",           "fan_in_fan_out",
                                     "target_modules", "layers_to_transform",
                                     "layers_pattern", "rank_pattern",
                                     "alpha_pattern",  "modules_to_save"};
const std::set<std::string> kIgnored = {"base_model_name_or_path",
                                        "revision",
                                        "task_type",
                                        "inference_mode",
                                        "init_lora_weights",
                                        "loftq_config",
                                        "eva_config",
                                        "corda_config",
                                        "lora_ga_config",
                                        "auto_mapping",
                                        "peft_version",
                                        "megatron_core",
                                        "qalora_group_size",
                                        "ensure_weight_tying",
                                        "runtime_config"};
// What each refused option would need, for the message.
const std::map<std::string, std::string> kRefused = {{"exclude_modules", "modules excluded from target_modules"},
                                                     {"trainable_token_indices", "trained embedding rows"},
                                                     {"layer_replication", "replicated layers"},
                                                     {"lora_bias", "a bias on lora_B"},
                                                     {"target_parameters", "LoRA on parameters (MoE experts)"},
                                                     {"use_qalora", "QA-LoRA"},
                                                     {"alora_invocation_tokens", "activated LoRA"},
                                                     {"megatron_config", "Megatron parallel layers"},
                                                     {"velora_config", "VeLoRA"},
                                                     {"monteclora_config", "MonteCLoRA"},
                                                     {"use_bdlora", "block-diagonal LoRA"},
                                                     {"arrow_config", "Arrow routing"},
                                                     {"kasa_config", "KaSA"}};

struct Module {
  std::string name;  // as transformers names it: "model.layers.3.self_attn.q_proj", "lm_head"
  int64_t layer;     // -1 outside the blocks
  std::string key;   // block-relative ("self_attn.q_proj"); the name outside the blocks
};

std::vector<Module> linear_modules(const Model& model) {
  std::vector<Module> out;
  const int64_t n = model.config().n_layer;
  std::vector<std::string> keys = block_linear_keys(model);
  for (int64_t i = 0; i < n; ++i)
    for (const std::string& k : keys) out.push_back({"model.layers." + std::to_string(i) + "." + k, i, k});
  std::set<std::string> outer = {"lm_head"};  // a tied head has no tensor of its own, but peft sees the module
  for (const TensorSpec& s : model.tensor_specs()) {
    const std::string w = ".weight";
    if (s.name.rfind("model.layers.", 0) == 0 || s.shape.size() != 2 || s.name.size() <= w.size() ||
        s.name.compare(s.name.size() - w.size(), w.size(), w) != 0)
      continue;
    outer.insert(s.name.substr(0, s.name.size() - w.size()));
  }
  for (const std::string& o : outer) out.push_back({o, -1, o});
  return out;
}

bool ends_with_dot(const std::string& name, const std::string& t) {
  return name == t || (name.size() > t.size() && name.compare(name.size() - t.size(), t.size(), t) == 0 &&
                       name[name.size() - t.size() - 1] == '.');
}

std::string join(const std::set<int64_t>& v) {
  std::ostringstream s;
  for (int64_t x : v) s << (s.tellp() ? ", " : "") << x;
  return s.str();
}

}  // namespace

AdapterConfig read_peft_config(const Model& model, const std::string& path) {
  std::ifstream f(path);
  LMT_CHECK(f.good(), "[peft] cannot open ", path);
  json j;
  try {
    j = json::parse(f);
  } catch (const json::exception& e) {
    fail("[peft] ", path, ": ", e.what());
  }
  LMT_CHECK(j.is_object(), "[peft] ", path, ": not a JSON object");
  auto field = [&](const char* k) -> const json& {
    static const json null;
    return j.contains(k) ? j.at(k) : null;
  };
  auto refuse = [&](const std::string& k, const std::string& why) {
    fail("[peft] ", path, ": ", k, " = ", field(k.c_str()).dump(), ": ", why);
  };
  LMT_CHECK(j.contains("peft_type"), "[peft] ", path, " has no peft_type (not a PEFT adapter config)");
  if (field("peft_type") != "LORA") refuse("peft_type", "lmtune reads LoRA and DoRA adapters only (peft_type LORA)");
  for (const auto& [k, v] : j.items()) {
    if (kRead.count(k) || kIgnored.count(k) || unset(v)) continue;
    auto it = kRefused.find(k);
    if (it != kRefused.end()) refuse(k, "lmtune's adapters cannot express " + it->second);
    refuse(k, "an option lmtune does not know; it cannot tell whether the adapter means the same without it");
  }
  if (!unset(field("bias")) && field("bias") != "none")
    refuse("bias", "lmtune's adapters train no biases (only bias \"none\" is supported)");
  if (!unset(field("fan_in_fan_out")))
    refuse("fan_in_fan_out", "the weights are stored transposed (Conv1D layers); lmtune's families use nn.Linear");
  if (!unset(field("modules_to_save")))
    refuse("modules_to_save", "lmtune's adapters hold no whole-module copies (fuse them into the model first)");
  if (!unset(field("rank_pattern"))) refuse("rank_pattern", "lmtune's adapters have one rank for every layer");
  if (!unset(field("alpha_pattern"))) refuse("alpha_pattern", "lmtune's adapters have one scale for every layer");

  AdapterConfig c;
  try {
    LMT_CHECK(field("r").is_number_integer() && field("r").get<int64_t>() > 0, "[peft] ", path,
              ": r must be a positive integer, got ", field("r").dump());
    c.lora.rank = field("r").get<int64_t>();
    double alpha = field("lora_alpha").is_null() ? 8.0 : field("lora_alpha").get<double>();  // peft's default
    bool rslora = field("use_rslora").is_boolean() && field("use_rslora").get<bool>();
    // peft: scaling = lora_alpha / r, or lora_alpha / math.sqrt(r) (in double, used as f32).
    c.lora.scale = float(rslora ? alpha / std::sqrt(double(c.lora.rank)) : alpha / double(c.lora.rank));
    c.lora.dropout = field("lora_dropout").is_null() ? 0.f : field("lora_dropout").get<float>();
    c.fine_tune_type = field("use_dora").is_boolean() && field("use_dora").get<bool>() ? "dora" : "lora";
  } catch (const json::exception& e) {
    fail("[peft] ", path, ": ", e.what());
  }

  const json& lp = field("layers_pattern");
  if (!(lp.is_null() || lp == "layers" || lp == json::array({"layers"})))
    refuse("layers_pattern", "lmtune's blocks are model.layers.N (only \"layers\" is supported)");
  const int64_t n = model.config().n_layer;
  std::set<int64_t> only;  // layers_to_transform
  const json& lt = field("layers_to_transform");
  bool select = !lt.is_null();
  if (lt.is_number_integer()) {
    only.insert(lt.get<int64_t>());
  } else if (lt.is_array()) {
    for (const json& x : lt) {
      if (!x.is_number_integer()) refuse("layers_to_transform", "must be an integer or a list of integers");
      only.insert(x.get<int64_t>());
    }
  } else if (select) {
    refuse("layers_to_transform", "must be an integer or a list of integers");
  }
  for (int64_t l : only)
    if (l < 0 || l >= n)
      refuse("layers_to_transform",
             "names layer " + std::to_string(l) + " but the model has " + std::to_string(n) + " layers");

  const json& tm = field("target_modules");
  std::function<bool(const std::string&)> matches;
  std::regex re;
  if (tm.is_string() && tm == "all-linear") {
    matches = [](const std::string&) { return true; };  // every linear but the head (below)
  } else if (tm.is_string()) {
    try {
      re = std::regex(tm.get<std::string>());
    } catch (const std::regex_error& e) {
      refuse("target_modules", std::string("not a regular expression lmtune can read: ") + e.what());
    }
    matches = [&re](const std::string& name) { return std::regex_match(name, re); };
  } else if (tm.is_array() && !tm.empty()) {
    std::vector<std::string> list;
    for (const json& x : tm) {
      if (!x.is_string()) refuse("target_modules", "must be a list of module names or a regular expression");
      list.push_back(x.get<std::string>());
    }
    matches = [list](const std::string& name) {
      for (const std::string& t : list)
        if (ends_with_dot(name, t)) return true;
      return false;
    };
  } else {
    refuse("target_modules",
           "must be a list of module names, a regular expression or \"all-linear\" (peft fills it in when it "
           "saves; a config without it is not a saved adapter)");
  }

  std::map<int64_t, std::set<std::string>> by_layer;
  std::set<std::string> keys;
  for (const Module& m : linear_modules(model)) {
    if (m.layer < 0) {
      // peft: all-linear leaves out the output layer; layers_to_transform keeps only block modules.
      if (select || (tm.is_string() && tm == "all-linear") || !matches(m.name)) continue;
      refuse("target_modules", "it selects " + m.name + ", and lmtune adapts only the linear layers inside the blocks");
    }
    if (!matches(m.name) || (select && !only.count(m.layer))) continue;
    by_layer[m.layer].insert(m.key);
    keys.insert(m.key);
  }
  if (keys.empty()) {
    std::ostringstream known;
    for (const std::string& k : block_linear_keys(model)) known << " " << k;
    refuse("target_modules", "it selects no linear layer of a " + model.config().model_type +
                                 " block (the blocks' linear layers:" + known.str() + ")");
  }
  std::set<int64_t> layers;
  for (const auto& [l, ks] : by_layer) {
    layers.insert(l);
    if (ks != keys)
      refuse("target_modules", "it selects other modules in block " + std::to_string(l) +
                                   " than in the others; lmtune adapts the same modules in every adapted block");
  }
  const int64_t first = n - int64_t(layers.size());
  if (*layers.begin() != first || *layers.rbegin() != n - 1)
    refuse(select ? "layers_to_transform" : "target_modules",
           "it adapts blocks " + join(layers) + " of " + std::to_string(n) +
               "; lmtune adapts the last N blocks (mlx-lm's num_layers), so the set must end at block " +
               std::to_string(n - 1) + " with no gap");
  c.num_layers = int64_t(layers.size());
  c.lora.keys.assign(keys.begin(), keys.end());
  return c;
}

}  // namespace lmtune::train
