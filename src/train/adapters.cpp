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
#include "models/checkpoint_layout.h"
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

namespace {
// A block's linear layer as adapter keys name it: an expert's by its stacked layer (mlx-lm's
// switch_mlp), every other by itself.
std::string adapter_key(const ModelConfig& c, const std::string& key) {
  std::string stacked = stacked_expert_path(c, key);
  return stacked.empty() ? key : stacked;
}
bool is_expert_key(const ModelConfig& c, const std::string& key) {
  return c.n_expert > 0 && key.rfind(c.moe_block + ".switch_mlp.", 0) == 0;
}
// An (rows, cols) CPU tensor of any float dtype, transposed, as f32.
std::vector<float> transposed(const std::vector<float>& v, int64_t rows, int64_t cols) {
  std::vector<float> out(v.size());
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) out[size_t(j * rows + i)] = v[size_t(i * cols + j)];
  return out;
}
// lmtune keeps LoRA factors as (in, r) and (r, out); mlx-lm's SwitchLinear LoRA keeps each
// expert's as (r, in) and (out, r).
bool is_factor(const std::string& part) { return part == "lora_a" || part == "lora_b"; }

// The trainable tensors (CPU, f32) as adapter files hold them: an expert's entries stacked with
// the other experts' of its layer under mlx-lm's name ("...switch_mlp.gate_proj.lora_a",
// (n_expert, r, in)); sorted by name.
std::vector<std::pair<std::string, Tensor>> to_file_layout(const ModelConfig& c,
                                                           std::vector<std::pair<std::string, Tensor>> params) {
  std::vector<std::pair<std::string, Tensor>> out;
  std::map<std::string, std::vector<Tensor>> stacks;
  for (auto& [name, t] : params) {
    const size_t dot = name.rfind('.');
    int64_t e = 0;
    const std::string stacked = stacked_expert_path(c, name.substr(0, dot), &e);
    if (stacked.empty()) {
      out.push_back({name, t});
      continue;
    }
    std::vector<Tensor>& v = stacks[stacked + name.substr(dot)];
    v.resize(size_t(c.n_expert));
    v[size_t(e)] = is_factor(name.substr(dot + 1))
                       ? Tensor::from_f32(transposed(t.to_f32_vector(), t.dim(0), t.dim(1)), {t.dim(1), t.dim(0)})
                       : t;
  }
  for (auto& [name, v] : stacks) {
    std::vector<float> all;
    for (size_t e = 0; e < v.size(); ++e) {
      LMT_CHECK(v[e].defined() && v[e].shape() == v[0].shape(), "[adapters] ", name, ": expert ", e,
                " has no trained tensor of the others' shape");
      const std::vector<float> x = v[e].to_f32_vector();
      all.insert(all.end(), x.begin(), x.end());
    }
    Shape shape = v[0].shape();
    shape.insert(shape.begin(), int64_t(v.size()));
    out.push_back({name, Tensor::from_f32(all, shape)});
  }
  for (auto& [name, t] : out) name = c.checkpoint_prefix + name;  // a multimodal checkpoint's text tower
  std::sort(out.begin(), out.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  return out;
}

// The inverse for a file's tensors: a stacked expert entry split into the experts' own (f32).
std::vector<std::pair<std::string, Tensor>> from_file_layout(const ModelConfig& c, const std::string& path,
                                                             std::vector<std::pair<std::string, Tensor>> stored) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& [stored_name, t] : stored) {
    const std::string& prefix = c.checkpoint_prefix;
    const std::string name =
        !prefix.empty() && stored_name.rfind(prefix, 0) == 0 ? stored_name.substr(prefix.size()) : stored_name;
    const size_t dot = name.rfind('.');
    const std::string layer = dot == std::string::npos ? "" : name.substr(0, dot);
    if (layer.empty() || per_expert_path(c, layer, 0).empty()) {
      out.push_back({name, t});
      continue;
    }
    const std::string part = name.substr(dot + 1);
    LMT_CHECK(t.ndim() == 3 && t.dim(0) == c.n_expert && is_float(t.dtype()), "[adapters] ", path, ": ", name, " is ",
              t.describe(), "; a stacked expert tensor is (", c.n_expert, ", rows, cols) of a float dtype");
    const std::vector<float> all = t.to_f32_vector();
    const int64_t rows = t.dim(1), cols = t.dim(2), each = rows * cols;
    for (int64_t e = 0; e < c.n_expert; ++e) {
      std::vector<float> x(all.begin() + e * each, all.begin() + (e + 1) * each);
      const std::string own = per_expert_path(c, layer, e) + "." + part;
      out.push_back({own, is_factor(part) ? Tensor::from_f32(transposed(x, rows, cols), {cols, rows})
                                          : Tensor::from_f32(x, {rows, cols})});
    }
  }
  return out;
}

}  // namespace

std::vector<std::string> block_linear_keys(const Model& model) {
  std::set<std::string> keys;
  int64_t layer;
  std::string key;
  const std::string moe = model.config().n_expert > 0 ? model.config().moe_block + "." : "";
  for (const TensorSpec& s : model.tensor_specs())
    if (split_block_linear(s, layer, key) && (moe.empty() || key.rfind(moe, 0) != 0)) keys.insert(key);
  return {keys.begin(), keys.end()};
}

std::vector<std::string> default_lora_keys(const Model& model, const std::string& fine_tune_type) {
  const ModelConfig& c = model.config();
  std::set<std::string> keys;
  int64_t layer;
  std::string key;
  for (const TensorSpec& s : model.tensor_specs())
    if (split_block_linear(s, layer, key)) keys.insert(adapter_key(c, key));
  if (fine_tune_type == "dora")  // mlx-lm has no DoRA for SwitchLinear
    for (auto it = keys.begin(); it != keys.end();) it = is_expert_key(c, *it) ? keys.erase(it) : std::next(it);
  return {keys.begin(), keys.end()};
}

std::vector<std::string> training_lora_keys(const Model& model, const std::string& fine_tune_type) {
  std::vector<std::string> keys = default_lora_keys(model, fine_tune_type);
  const ModelConfig& c = model.config();
  if (c.n_expert > 0) keys.erase(std::remove(keys.begin(), keys.end(), c.moe_block + ".gate"), keys.end());
  return keys;
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
  std::vector<std::string> keys = cfg.lora.keys.empty() ? default_lora_keys(model, cfg.fine_tune_type) : cfg.lora.keys;
  std::set<std::string> wanted(keys.begin(), keys.end()), found;
  nn::AdapterKind kind = cfg.fine_tune_type == "dora" ? nn::AdapterKind::dora : nn::AdapterKind::lora;
  const ModelConfig& c = model.config();
  for (const std::string& k : wanted)
    LMT_CHECK(kind == nn::AdapterKind::lora || !is_expert_key(c, k), "[adapters] lora key '", k,
              "': DoRA on a mixture's experts has no mlx-lm layout (mlx-lm: SwitchLinear doesn't support DoRA); "
              "train LoRA there, or leave the experts out of keys");
  int64_t layer;
  std::string key;
  uint64_t n = 0;
  for (const TensorSpec& s : model.tensor_specs()) {
    if (!split_block_linear(s, layer, key)) continue;
    key = adapter_key(c, key);
    if (!wanted.count(key)) continue;
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
  save_adapter_tensors(path, model.config(), std::move(out));
}

void save_adapter_tensors(const std::string& path, const ModelConfig& cfg,
                          std::vector<std::pair<std::string, Tensor>> out) {
  LMT_CHECK(!out.empty(), "[adapters] the model has no trainable parameters to save to ", path);
  out = to_file_layout(cfg, std::move(out));
  std::filesystem::path p(path);
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
  save_safetensors(path, out);
}

std::vector<std::pair<std::string, Tensor>> read_adapter_weights(Model& model, const std::string& path) {
  std::map<std::string, Tensor> params;
  for (auto& [name, t] : trainable_parameters(model)) params[name] = t;
  std::ostringstream errors;
  std::vector<std::pair<std::string, Tensor>> stored = from_file_layout(model.config(), path, load_safetensors(path));
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
  return stored;
}

void load_adapter_weights(Model& model, const std::string& path) {
  std::map<std::string, Tensor> params;
  for (auto& [name, t] : trainable_parameters(model)) params[name] = t;
  for (const auto& [name, t] : read_adapter_weights(model, path)) {
    Tensor dst = params.at(name);
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
