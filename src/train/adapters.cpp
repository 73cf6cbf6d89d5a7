#include "train/adapters.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "train/peft.h"

namespace lmtune::train {

using json = nlohmann::json;

namespace {

const std::string kLayers = "model.layers.";

// "model.layers.3.self_attn.q_proj.weight" -> {3, "self_attn.q_proj"} for a 2-D weight.
bool split_block_linear(const TensorSpec& s, int64_t& layer, std::string& key) {
  if (s.name.rfind(kLayers, 0) != 0 || s.shape.size() != 2) return false;
  const std::string suffix = ".weight";
  if (s.name.size() <= suffix.size() || s.name.compare(s.name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return false;
  size_t dot = s.name.find('.', kLayers.size());
  if (dot == std::string::npos) return false;
  layer = std::stoll(s.name.substr(kLayers.size(), dot - kLayers.size()));
  key = s.name.substr(dot + 1, s.name.size() - suffix.size() - dot - 1);
  return true;
}

int64_t first_trained_block(const Model& model, int64_t num_layers) {
  int64_t n = model.config().n_layer;
  LMT_CHECK(num_layers <= n, "[adapters] requested to train ", num_layers, " layers but the model only has ", n,
            " layers");
  return num_layers <= 0 ? 0 : n - num_layers;
}

}  // namespace

std::vector<std::string> default_lora_keys(const Model& model) {
  std::set<std::string> keys;
  int64_t layer;
  std::string key;
  // A mixture of experts' router and experts are left out (mlx-lm adapts the experts as one stacked
  // SwitchLinear, a layout lmtune does not train yet; the router only when asked).
  const std::string moe = model.config().n_expert > 0 ? model.config().moe_block + "." : "";
  for (const TensorSpec& s : model.tensor_specs())
    if (split_block_linear(s, layer, key) && (moe.empty() || key.rfind(moe, 0) != 0)) keys.insert(key);
  return {keys.begin(), keys.end()};
}

void attach_adapters(Model& model, const AdapterConfig& cfg, uint64_t seed) {
  LMT_CHECK(cfg.fine_tune_type == "lora" || cfg.fine_tune_type == "dora" || cfg.fine_tune_type == "full",
            "[adapters] fine_tune_type must be lora, dora or full, got '", cfg.fine_tune_type, "'");
  model.bake_masters();
  for (auto& [name, w] : model.weights()) w = w.detach();
  model.adapters().clear();
  int64_t first = first_trained_block(model, cfg.num_layers);
  std::string block_prefix_end = ".";
  LMT_CHECK(!cfg.train_embeddings || cfg.fine_tune_type == "full",
            "[adapters] train_embeddings needs fine_tune_type full");
  if (cfg.fine_tune_type == "full") {
    LMT_CHECK(model.quantized().empty(),
              "[adapters] full fine-tuning needs dense weights, and this model is quantized (",
              model.quantized().size(), " layers): train a LoRA or DoRA adapter on it (QLoRA: --fine-tune-type lora), ",
              "or fine-tune the unquantized model and quantize the result with lmtune convert -q");
    // An f32 weight is trained in place; any other gets an f32 master (Model::masters) so that
    // small updates are not rounded away and the optimizer state is f32.
    auto train_weight = [&](const std::string& name, Tensor& w) {
      if (w.dtype() == DType::f32)
        w = ag::param(w);
      else
        model.masters()[name] = ag::param(ops::cast(w, DType::f32));
    };
    for (auto& [name, w] : model.weights()) {
      if (name.rfind(kLayers, 0) != 0) {
        if (cfg.train_embeddings) train_weight(name, w);
        continue;
      }
      int64_t layer = std::stoll(name.substr(kLayers.size()));
      if (layer >= first) train_weight(name, w);
    }
    return;
  }
  std::vector<std::string> keys = cfg.lora.keys.empty() ? default_lora_keys(model) : cfg.lora.keys;
  std::set<std::string> wanted(keys.begin(), keys.end()), found;
  nn::AdapterKind kind = cfg.fine_tune_type == "dora" ? nn::AdapterKind::dora : nn::AdapterKind::lora;
  int64_t layer;
  std::string key;
  uint64_t n = 0;
  for (const TensorSpec& s : model.tensor_specs()) {
    if (!split_block_linear(s, layer, key) || !wanted.count(key)) continue;
    found.insert(key);
    if (layer < first) continue;
    std::string prefix = s.name.substr(0, s.name.size() - 7);  // minus ".weight"
    model.adapters()[prefix] = nn::make_lora_adapter(model.dense_weight(s.name), kind, cfg.lora.rank, cfg.lora.scale,
                                                     cfg.lora.dropout, seed * 1000003ull + n++);
  }
  for (const std::string& k : wanted)
    LMT_CHECK(found.count(k), "[adapters] lora key '", k, "' names no linear layer of a ", model.config().model_type,
              " block (model-level keys such as lm_head are not supported yet)");
}

std::vector<std::pair<std::string, Tensor>> trainable_parameters(Model& model) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& [prefix, a] : model.adapters()) {
    out.push_back({prefix + ".lora_a", a.lora_a});
    out.push_back({prefix + ".lora_b", a.lora_b});
    if (a.m.defined()) out.push_back({prefix + ".m", a.m});
  }
  for (auto& [name, w] : model.weights())
    if (ag::requires_grad(w) && !model.masters().count(name)) out.push_back({name, w});
  for (auto& [name, m] : model.masters()) out.push_back({name, m});
  std::sort(out.begin(), out.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  return out;
}

int64_t count_parameters(const std::vector<std::pair<std::string, Tensor>>& params) {
  int64_t n = 0;
  for (const auto& p : params) n += p.second.numel();
  return n;
}

void save_adapter_config(const std::string& dir, const AdapterConfig& cfg, const json& extra) {
  json j = extra.is_object() ? extra : json::object();
  j["fine_tune_type"] = cfg.fine_tune_type;
  j["num_layers"] = cfg.num_layers;
  if (cfg.fine_tune_type == "full") {
    j["lora_parameters"] = nullptr;
    if (cfg.train_embeddings)
      j["train_embeddings"] = true;
    else
      j.erase("train_embeddings");
  } else {
    json lp = {{"rank", cfg.lora.rank}, {"dropout", cfg.lora.dropout}, {"scale", cfg.lora.scale}};
    if (!cfg.lora.keys.empty()) lp["keys"] = cfg.lora.keys;
    j["lora_parameters"] = lp;
  }
  std::filesystem::create_directories(dir);
  write_file_atomic(dir + "/adapter_config.json", j.dump(4) + "\n");
}

AdapterConfig load_adapter_config(const std::string& dir) {
  std::string path = dir + "/adapter_config.json";
  std::ifstream f(path);
  LMT_CHECK(f.good(), "[adapters] cannot open ", path);
  json j;
  try {
    j = json::parse(f);
  } catch (const json::exception& e) {
    fail("[adapters] ", path, ": ", e.what());
  }
  AdapterConfig c;
  try {
    c.fine_tune_type = j.value("fine_tune_type", std::string("lora"));
    LMT_CHECK(j.contains("num_layers"), "[adapters] ", path, " has no num_layers");
    c.num_layers = j.at("num_layers").get<int64_t>();
    if (j.contains("train_embeddings") && j["train_embeddings"].is_boolean())
      c.train_embeddings = j["train_embeddings"].get<bool>();
    if (c.fine_tune_type != "full") {
      LMT_CHECK(j.contains("lora_parameters") && j["lora_parameters"].is_object(), "[adapters] ", path,
                " has no lora_parameters");
      const json& lp = j["lora_parameters"];
      LMT_CHECK(lp.contains("scale"), "[adapters] ", path, ": lora_parameters has no 'scale'",
                lp.contains("alpha") ? " (found 'alpha': mlx-lm's config uses scale = alpha / rank)" : "");
      c.lora.rank = lp.at("rank").get<int64_t>();
      c.lora.scale = lp.at("scale").get<float>();
      c.lora.dropout = lp.value("dropout", 0.f);
      if (lp.contains("keys") && !lp["keys"].is_null()) c.lora.keys = lp["keys"].get<std::vector<std::string>>();
    }
  } catch (const json::exception& e) {
    fail("[adapters] ", path, ": ", e.what());
  }
  return c;
}

void save_adapter_weights(const std::string& path, Model& model) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& [name, t] : trainable_parameters(model)) out.push_back({name, ops::to(t.detach(), Device::cpu)});
  LMT_CHECK(!out.empty(), "[adapters] the model has no trainable parameters to save to ", path);
  std::filesystem::path p(path);
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
  save_safetensors(path, out);
}

void load_adapter_weights(Model& model, const std::string& path) {
  std::map<std::string, Tensor> params;
  for (auto& [name, t] : trainable_parameters(model)) params[name] = t;
  std::ostringstream errors;
  std::vector<std::pair<std::string, Tensor>> stored = load_safetensors(path);
  for (const auto& [name, t] : stored) {
    auto it = params.find(name);
    if (it == params.end())
      errors << "\n  " << name << ": not an adapter parameter in the model";
    else if (t.shape() != it->second.shape())
      errors << "\n  " << name << ": adapter shape " << shape_str(t.shape()) << " does not match model parameter shape "
             << shape_str(it->second.shape());
  }
  std::string e = errors.str();
  LMT_CHECK(e.empty(), "[adapters] ", path, " contains incompatible tensors:", e);
  for (const auto& [name, t] : stored) {
    Tensor dst = params[name];
    ops::copy_into(dst, ops::cast(t, dst.dtype()));
  }
}

AdapterConfig load_adapters(Model& model, const std::string& dir) {
  LMT_CHECK(std::filesystem::exists(dir), "[adapters] the adapter path does not exist: ", dir);
  if (is_peft_folder(dir)) return load_peft_adapters(model, dir);
  AdapterConfig cfg = load_adapter_config(dir);
  attach_adapters(model, cfg);
  load_adapter_weights(model, dir + "/adapters.safetensors");
  return cfg;
}

}  // namespace lmtune::train
