// PEFT adapter tensors <-> lmtune's adapters (names, transposes, checks against the model) and
// the PEFT folder writer. The config side is peft_config.cpp.
#include "train/peft.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "models/checkpoint_layout.h"

namespace lmtune::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const std::string kPrefix = "base_model.model.";
const std::string kWeights = "adapter_model.safetensors";

// f32 (rows, cols) -> f32 (cols, rows), on the CPU.
Tensor transpose_f32(const Tensor& t) {
  Tensor x = ops::to(t, Device::cpu, DType::f32);
  const int64_t rows = x.dim(0), cols = x.dim(1);
  std::vector<float> v(size_t(rows * cols));
  const float* p = x.data<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) v[size_t(c * rows + r)] = p[r * cols + c];
  return Tensor::from_f32(v, {cols, rows});
}

// "base_model.model.model.layers.7.mlp.up_proj.lora_A.weight" -> 7; -1 when not a block's.
int64_t layer_of(const std::string& name) {
  const std::string p = kPrefix + "model.layers.";
  if (name.rfind(p, 0) != 0) return -1;
  size_t end = name.find('.', p.size());
  try {
    return std::stoll(name.substr(p.size(), end - p.size()));
  } catch (const std::exception&) {
    return -1;
  }
}

std::string list_errors(const std::vector<std::string>& errors) {
  std::ostringstream s;
  for (size_t i = 0; i < errors.size() && i < 12; ++i) s << "\n  " << errors[i];
  if (errors.size() > 12) s << "\n  ... and " << errors.size() - 12 << " more";
  return s.str();
}

// The trainable parameters the adapters of cfg have, copied from the PEFT tensors (shapes checked
// against the model's layers).
void copy_into_model(Model& model, const PeftAdapter& p) {
  std::map<std::string, Tensor> params;
  for (auto& [name, t] : trainable_parameters(model)) params[name] = t;
  std::vector<std::string> errors;
  for (const PeftTensor& t : p.tensors) {
    auto it = params.find(t.name);
    if (it == params.end()) {
      errors.push_back(t.source + ": the model has no adapter parameter " + t.name);
      continue;
    }
    if (t.value.shape() != it->second.shape()) {
      // lmtune's layouts back to PEFT's for the message: lora_a (in, r) is lora_A (r, in).
      const Shape& want = it->second.shape();
      std::ostringstream s;
      s << t.source << ": shape "
        << shape_str(t.value.ndim() == 2 ? Shape{t.value.dim(1), t.value.dim(0)} : t.value.shape())
        << " does not fit the model's layer, which needs "
        << shape_str(want.size() == 2 ? Shape{want[1], want[0]} : want);
      errors.push_back(s.str());
    }
  }
  LMT_CHECK(errors.empty(), "[peft] ", p.weights_path, " does not fit the model:", list_errors(errors));
  for (const PeftTensor& t : p.tensors) {
    Tensor dst = params[t.name];
    ops::copy_into(dst, ops::cast(t.value, dst.dtype()));
  }
}

// README.md as peft's save_pretrained writes one (create_or_update_model_card): YAML front matter
// with base_model, library_name peft, pipeline_tag and peft's tags, then a short body. Strings are
// written double-quoted in JSON's escaping, which YAML reads the same.
std::string model_card(const AdapterConfig& cfg, const std::string& base_model, const std::vector<std::string>& keys,
                       int64_t first, int64_t n_layer, double alpha) {
  auto q = [](const std::string& v) { return json(v).dump(); };
  std::ostringstream s;
  s << "---\nbase_model: " << q(base_model) << "\nlibrary_name: peft\npipeline_tag: text-generation\ntags:\n- "
    << q("base_model:adapter:" + base_model) << "\n- lora\n- transformers\n- lmtune\n---\n\n";
  const std::string kind = cfg.fine_tune_type == "dora" ? "DoRA" : "LoRA";
  s << "# " << kind << " adapter for " << base_model << "\n\n"
    << "A Hugging Face PEFT adapter written by `lmtune export-peft` from an lmtune / mlx-lm adapter folder: " << kind
    << " of rank " << cfg.lora.rank << ", lora_alpha " << alpha << " (scale " << cfg.lora.scale << "), on";
  for (size_t i = 0; i < keys.size(); ++i) s << (i ? ", " : " ") << "`" << keys[i] << "`";
  if (first > 0)
    s << " of blocks " << first << "-" << n_layer - 1 << " (of " << n_layer << ").\n\n";
  else
    s << " of every block.\n\n";
  s << "## Use\n\n```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
    << "base = AutoModelForCausalLM.from_pretrained(" << q(base_model) << ")\n"
    << "model = PeftModel.from_pretrained(base, \"path/to/this/folder\")\n```\n\n"
    << "lmtune reads the folder too: `lmtune generate --model " << base_model
    << " --adapter-path path/to/this/folder`.\n\n### Framework versions\n\n- PEFT (adapter_config.json as peft 0.21 "
       "writes it)\n";
  return s.str();
}

}  // namespace

bool is_peft_folder(const std::string& dir) {
  if (!fs::is_directory(dir)) return false;
  if (fs::exists(fs::path(dir) / kWeights) || fs::exists(fs::path(dir) / "adapter_model.bin")) return true;
  std::ifstream f(fs::path(dir) / "adapter_config.json");
  if (!f.good()) return false;
  json j = json::parse(f, nullptr, false);
  return j.is_object() && j.contains("peft_type");
}

PeftAdapter read_peft_adapter(const Model& model, const std::string& dir, const std::string& weights_file) {
  PeftAdapter p;
  p.cfg = read_peft_config(model, (fs::path(dir) / "adapter_config.json").string());
  p.weights_path = weights_file.empty() ? (fs::path(dir) / kWeights).string() : weights_file;
  if (!fs::exists(p.weights_path)) {
    bool bin = fs::exists(fs::path(dir) / "adapter_model.bin");
    fail("[peft] ", dir, " has no ", kWeights,
         bin ? " (it has adapter_model.bin, a pickle lmtune does not read: save the adapter with peft's "
               "save_pretrained(..., safe_serialization=True), the default)"
             : "");
  }
  const bool dora = p.cfg.fine_tune_type == "dora";
  const int64_t n = model.config().n_layer, first = n - p.cfg.num_layers, r = p.cfg.lora.rank;
  // Every tensor the config calls for: PEFT name -> lmtune name.
  std::map<std::string, std::string> expected;
  for (int64_t l = first; l < n; ++l)
    for (const std::string& k : p.cfg.lora.keys) {
      std::string module = "model.layers." + std::to_string(l) + "." + k;
      expected[kPrefix + module + ".lora_A.weight"] = module + ".lora_a";
      expected[kPrefix + module + ".lora_B.weight"] = module + ".lora_b";
      if (dora) expected[kPrefix + module + ".lora_magnitude_vector"] = module + ".m";
    }
  std::vector<std::string> errors;
  std::set<std::string> seen;
  std::set<int64_t> beyond;  // layers the model does not have
  for (auto& [name, t] : load_safetensors(p.weights_path)) {
    auto it = expected.find(name);
    if (it == expected.end()) {
      int64_t l = layer_of(name);
      if (l >= n)
        beyond.insert(l);
      else if (!dora && name.size() > 22 && name.compare(name.size() - 22, 22, ".lora_magnitude_vector") == 0)
        errors.push_back(name + ": a DoRA magnitude, but use_dora is false");
      else
        errors.push_back(name +
                         ": not a tensor of the adapter adapter_config.json describes (target_modules, "
                         "layers_to_transform, use_dora)");
      continue;
    }
    seen.insert(name);
    const bool is_a = name.find(".lora_A.") != std::string::npos, is_b = name.find(".lora_B.") != std::string::npos;
    if (is_a || is_b) {
      if (t.ndim() != 2) {
        errors.push_back(name + ": shape " + shape_str(t.shape()) + " is not 2-D");
        continue;
      }
      int64_t tr = is_a ? t.dim(0) : t.dim(1);
      if (tr != r) {
        errors.push_back(name + ": rank " + std::to_string(tr) + " (shape " + shape_str(t.shape()) +
                         ") but adapter_config.json has r = " + std::to_string(r));
        continue;
      }
      p.tensors.push_back({it->second, name, transpose_f32(t)});
    } else {
      if (t.ndim() != 1) {
        errors.push_back(name + ": shape " + shape_str(t.shape()) + " is not 1-D");
        continue;
      }
      p.tensors.push_back({it->second, name, ops::to(t, Device::cpu, DType::f32)});
    }
  }
  if (!beyond.empty()) {
    std::ostringstream s;
    s << "tensors of layers up to " << *beyond.rbegin() << ", but the model has " << n
      << " layers (an adapter made for a deeper model?)";
    errors.insert(errors.begin(), s.str());
  }
  std::set<int64_t> missing_layers;
  std::vector<std::string> missing;
  for (const auto& [name, ours] : expected)
    if (!seen.count(name)) {
      missing_layers.insert(layer_of(name));
      missing.push_back(name + ": missing");
    }
  if (!missing.empty()) {
    if (beyond.empty()) {
      int64_t have = *missing_layers.begin();
      bool whole = true;  // every tensor of the top layers missing, none below
      for (const auto& [name, ours] : expected)
        if ((layer_of(name) >= have) != !seen.count(name)) whole = false;
      if (whole && have > first) {
        std::ostringstream s;
        s << "no tensors for layers " << have << ".." << n - 1 << ": the model has " << n
          << " layers and the adapter stops at layer " << have - 1 << " (made for a shallower model?)";
        missing = {s.str()};
      }
    }
    errors.insert(errors.end(), missing.begin(), missing.end());
  }
  LMT_CHECK(errors.empty(), "[peft] ", p.weights_path, " does not fit the model and ", dir,
            "/adapter_config.json:", list_errors(errors));
  return p;
}

AdapterConfig load_peft_adapters(Model& model, const std::string& dir) {
  PeftAdapter p = read_peft_adapter(model, dir);
  attach_adapters(model, p.cfg);
  copy_into_model(model, p);
  return p.cfg;
}

void load_peft_weights_into(Model& model, const AdapterConfig& cfg, const std::string& path) {
  const bool file = !fs::is_directory(path);
  LMT_CHECK(fs::exists(path), "[peft] no such file or folder: ", path);
  std::string dir = file ? fs::path(path).parent_path().string() : path;
  if (dir.empty()) dir = ".";
  PeftAdapter p = read_peft_adapter(model, dir, file ? path : "");
  const int64_t n = model.config().n_layer;
  std::vector<std::string> keys = cfg.lora.keys.empty() ? block_linear_keys(model) : cfg.lora.keys;
  std::sort(keys.begin(), keys.end());
  std::vector<std::string> diff;
  auto differ = [&](const std::string& what, const std::string& ours, const std::string& theirs) {
    diff.push_back(what + ": the training's " + ours + ", the PEFT adapter's " + theirs);
  };
  if (cfg.fine_tune_type != p.cfg.fine_tune_type)
    differ("fine_tune_type", cfg.fine_tune_type, p.cfg.fine_tune_type + " (use_dora)");
  if (cfg.lora.rank != p.cfg.lora.rank)
    differ("lora_parameters.rank", std::to_string(cfg.lora.rank), std::to_string(p.cfg.lora.rank) + " (r)");
  if (std::fabs(cfg.lora.scale - p.cfg.lora.scale) > 1e-6f * std::fabs(p.cfg.lora.scale)) {
    std::ostringstream a, b;
    a.precision(9);
    b.precision(9);
    a << cfg.lora.scale;
    b << p.cfg.lora.scale << " (lora_alpha / r, or / sqrt(r) with use_rslora)";
    differ("lora_parameters.scale", a.str(), b.str());
  }
  if (keys != p.cfg.lora.keys) differ("lora_parameters.keys", json(keys).dump(), json(p.cfg.lora.keys).dump());
  const int64_t ours = cfg.num_layers <= 0 ? n : cfg.num_layers;
  if (ours != p.cfg.num_layers)
    differ("num_layers", std::to_string(ours),
           std::to_string(p.cfg.num_layers) + " (target_modules, layers_to_transform)");
  LMT_CHECK(diff.empty(), "[peft] --resume-adapter-file ", path,
            ": the adapter differs from the one being trained; set these to the adapter's:", list_errors(diff));
  copy_into_model(model, p);
}

void export_peft(const Model& model, const AdapterConfig& cfg, const std::string& base_model,
                 const std::string& save_path) {
  LMT_CHECK(cfg.fine_tune_type == "lora" || cfg.fine_tune_type == "dora", "[peft] a ", cfg.fine_tune_type,
            " fine-tune has no PEFT LoRA form (only lora and dora adapters do; fuse a full fine-tune instead)");
  LMT_CHECK(!fs::exists(fs::symlink_status(save_path)), "[peft] the save path ", save_path,
            " already exists; delete it or choose another");
  LMT_CHECK(!model.adapters().empty(), "[peft] the model has no adapters to export");
  LMT_CHECK(model.config().checkpoint_prefix.empty(), "[peft] a multimodal checkpoint's text tower (",
            model.config().checkpoint_prefix,
            "): transformers names its modules apart from the checkpoint, so a PEFT folder would not "
            "match; use the mlx-lm adapter folder");
  const int64_t n = model.config().n_layer, first = cfg.num_layers <= 0 ? 0 : n - cfg.num_layers;
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& [prefix, a] : model.adapters()) {
    const ModelConfig& mc = model.config();
    LMT_CHECK(stacked_expert_path(mc, prefix).empty() &&
                  (mc.n_expert == 0 || prefix.find(mc.moe_block + ".gate") == std::string::npos),
              "[peft] ", prefix, ": transformers keeps a mixture's router and experts outside nn.Linear, so PEFT ",
              "has no LoRA layout for this adapter; export one trained on the attention and dense layers only");
    const std::string base = kPrefix + prefix;
    out.push_back({base + ".lora_A.weight", transpose_f32(a.lora_a.detach())});  // (r, in)
    out.push_back({base + ".lora_B.weight", transpose_f32(a.lora_b.detach())});  // (out, r)
    if (a.kind == nn::AdapterKind::dora)
      out.push_back({base + ".lora_magnitude_vector", ops::to(a.m.detach(), Device::cpu, DType::f32)});
  }
  std::vector<std::string> keys = cfg.lora.keys.empty() ? block_linear_keys(model) : cfg.lora.keys;
  std::sort(keys.begin(), keys.end());
  const double alpha = double(cfg.lora.scale) * double(cfg.lora.rank);  // exact: scale is f32, r small
  json c = {{"peft_type", "LORA"},
            {"task_type", "CAUSAL_LM"},
            {"base_model_name_or_path", base_model},
            {"r", cfg.lora.rank},
            {"lora_alpha", alpha == std::floor(alpha) && std::fabs(alpha) < 1e15 ? json(int64_t(alpha)) : json(alpha)},
            {"lora_dropout", cfg.lora.dropout},
            {"target_modules", keys},
            {"use_dora", cfg.fine_tune_type == "dora"},
            {"use_rslora", false},
            {"bias", "none"},
            {"fan_in_fan_out", false},
            {"modules_to_save", nullptr},
            {"rank_pattern", json::object()},
            {"alpha_pattern", json::object()},
            {"init_lora_weights", true},
            {"inference_mode", true},
            {"layers_to_transform", nullptr},
            {"layers_pattern", nullptr}};
  if (first > 0) {
    json layers = json::array();
    for (int64_t l = first; l < n; ++l) layers.push_back(l);
    c["layers_to_transform"] = layers;
    c["layers_pattern"] = "layers";
  }
  const std::string tmp = save_path + ".tmp." + std::to_string(getpid());
  fs::remove_all(tmp);
  try {
    fs::create_directories(tmp);
    save_safetensors(tmp + "/" + kWeights, out, {{"format", "pt"}});
    write_file_atomic(tmp + "/adapter_config.json", c.dump(2) + "\n");
    write_file_atomic(tmp + "/README.md", model_card(cfg, base_model, keys, first, n, alpha));
    fs::rename(tmp, save_path);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace lmtune::train
