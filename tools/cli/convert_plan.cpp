// mlx_lm.convert's decisions, reproduced (see convert_plan.h). Each rule names the mlx-lm code
// it follows; tests/ref/convert_check.py compares the result with mlx-lm's own output.
#include "convert_plan.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"
#include "models/checkpoint_layout.h"
#include "models/model.h"
#include "ops/ops.h"

namespace lmtune::cli::convert {

using ojson = nlohmann::ordered_json;

namespace {

ojson read_json_file(const std::string& path, bool required) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    LMT_CHECK(!required, "[convert] cannot open ", path);
    return ojson();
  }
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return ojson::parse(ss.str());
  } catch (const ojson::parse_error& e) {
    LMT_CHECK(!required, "[convert] ", path, ": not valid JSON: ", e.what());
    return ojson();  // load_config ignores a generation_config.json that does not parse
  }
}

// Python's truth value of a JSON value (load_config: `if eos_token_id := ...get(...)`).
bool truthy(const ojson& v) {
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number_integer() || v.is_number_unsigned()) return v.get<int64_t>() != 0;
  if (v.is_number_float()) return v.get<double>() != 0.0;
  if (v.is_string() || v.is_array() || v.is_object()) return !v.empty();
  return false;
}

// The order of mlx-lm's module tree (models/<family>.py): attributes in the order their __init__
// assigns them, list items by index, and in a (quantized) linear weight, scales, biases, bias.
// tree_flatten(model.parameters()) walks it; the shards and quantization's per-layer config entries
// follow it. A name's rank among its siblings: a block's children by family (the norms and the MLP
// move), a stacked expert layer's (SwitchGLU: gate, up, down) apart from a dense MLP's (gate, down, up).
int component_rank(const std::string& model_type, const std::string& parent, const std::string& c) {
  static const std::map<std::string, std::vector<std::string>> kBlocks = {
      {"", {"self_attn", "mlp", "block_sparse_moe", "input_layernorm", "post_attention_layernorm"}},
      {"gemma2",
       {"self_attn", "mlp", "input_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm",
        "post_attention_layernorm"}},
      {"gemma3_text",
       {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
        "post_feedforward_layernorm"}},
      {"gemma3",
       {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
        "post_feedforward_layernorm"}},
      {"olmo2", {"self_attn", "mlp", "post_attention_layernorm", "post_feedforward_layernorm"}},
      {"qwen3_moe", {"self_attn", "input_layernorm", "post_attention_layernorm", "mlp"}}};
  static const std::vector<std::string> kSwitch = {"gate_proj", "up_proj", "down_proj"};
  static const std::map<std::string, int> kRank = {
      {"language_model", -1}, {"model", 0},    {"embed_tokens", 1}, {"layers", 2},        {"q_proj", 4},
      {"k_proj", 5},          {"v_proj", 6},   {"qkv_proj", 7},     {"o_proj", 8},        {"q_norm", 9},
      {"k_norm", 10},         {"gate", 11},    {"switch_mlp", 12},  {"gate_up_proj", 13}, {"gate_proj", 14},
      {"down_proj", 15},      {"up_proj", 16}, {"norm", 17},        {"lm_head", 18},      {"weight", 19},
      {"scales", 20},         {"biases", 21},  {"bias", 22}};
  const std::vector<std::string>* list = nullptr;
  if (!parent.empty() && std::all_of(parent.begin(), parent.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
    auto b = kBlocks.find(model_type);
    list = &(b != kBlocks.end() ? b->second : kBlocks.at(""));
  } else if (parent == "switch_mlp" && c != "weight" && c != "scales" && c != "biases") {
    list = &kSwitch;
  }
  if (list) {
    auto at = std::find(list->begin(), list->end(), c);
    LMT_CHECK(at != list->end(), "[convert] no mlx-lm module order is known for '", c, "' in a ", model_type,
              " block (tools/cli/convert_plan.cpp: component_rank)");
    return int(at - list->begin());
  }
  auto it = kRank.find(c);
  LMT_CHECK(it != kRank.end(), "[convert] no mlx-lm module order is known for '", c, "' in a ", model_type,
            " model (tools/cli/convert_plan.cpp: component_rank)");
  return it->second;
}

std::vector<std::string> split_dots(const std::string& s) {
  std::vector<std::string> parts;
  size_t b = 0;
  for (size_t e; (e = s.find('.', b)) != std::string::npos; b = e + 1) parts.push_back(s.substr(b, e - b));
  parts.push_back(s.substr(b));
  return parts;
}

bool is_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool mlx_order_less(const std::string& model_type, const std::string& a, const std::string& b) {
  std::vector<std::string> pa = split_dots(a), pb = split_dots(b);
  for (size_t i = 0; i < std::min(pa.size(), pb.size()); ++i) {
    if (pa[i] == pb[i]) continue;
    if (is_digits(pa[i]) && is_digits(pb[i])) return std::stoll(pa[i]) < std::stoll(pb[i]);
    const std::string parent = i > 0 ? pa[i - 1] : "";
    return component_rank(model_type, parent, pa[i]) < component_rank(model_type, parent, pb[i]);
  }
  return pa.size() < pb.size();
}

// A config entry's {group_size, bits, mode} as to_quantized reads it: null, 0 or absent give the
// mode's default (mlx.nn's _defaults_for_mode: `group_size or default`).
quant::QuantParams params_from_entry(const ojson& e, const std::string& where) {
  auto str = e.contains("mode") && e["mode"].is_string() ? e["mode"].get<std::string>() : std::string("affine");
  quant::QuantParams p = quant::default_params(quant::parse_mode(str, where));
  auto read = [&](const char* key, int& out) {
    if (!e.contains(key) || e[key].is_null()) return;
    LMT_CHECK(e[key].is_number_integer(), "[convert] ", where, ": '", key, "' must be an integer, got ", e[key].dump());
    if (int64_t v = e[key].get<int64_t>(); v != 0) out = int(v);
  };
  read("group_size", p.group_size);
  read("bits", p.bits);
  return p;
}

[[noreturn]] quant::Mode fail_mode(const std::string& path, const quant::QuantParams& p) {
  fail("[convert] cannot infer the quantization mode of ", path, ": ", p.bits, " bits with group size ", p.group_size,
       " and uint8 scales");
}

ojson params_entry(const std::optional<int64_t>& group_size, int bits, const char* mode) {
  ojson e = ojson::object();
  e["group_size"] = group_size ? ojson(*group_size) : ojson(nullptr);
  e["bits"] = bits;
  e["mode"] = mode;
  return e;
}

// A family's own quant_predicate (used when no --quant-predicate recipe is given): layers it keeps
// at 8 bits in groups of 64 whatever the flags. granite (models/granite.py): o_proj, down_proj and
// lm_head, whose small values low-bit fp modes underflow; qwen3_moe (models/qwen3_moe.py): the router.
bool family_keeps_8_bits(const std::string& model_type, const std::string& path) {
  auto ends = [&](const std::string& tail) {
    return path.size() >= tail.size() && path.compare(path.size() - tail.size(), tail.size(), tail) == 0;
  };
  if (model_type == "granite") return ends("self_attn.o_proj") || ends("mlp.down_proj") || path == "lm_head";
  if (model_type == "qwen3_moe") return ends("mlp.gate");
  return false;
}

Tensor cast_if(const Tensor& t, const std::optional<DType>& to) {
  if (!to || !is_float(t.dtype()) || t.dtype() == *to) return t;
  return ops::cast(t, *to);
}

}  // namespace

Plan::Plan(const Request& r) : req_(r), source_(r.source) {
  const std::string cfg_path = r.source + "/config.json";
  config_ = read_json_file(cfg_path, true);
  LMT_CHECK(config_.is_object(), "[convert] ", cfg_path, ": expected a JSON object");
  // load_config: a truthy eos_token_id of generation_config.json replaces the config's.
  ojson gen = read_json_file(r.source + "/generation_config.json", false);
  if (gen.is_object() && gen.contains("eos_token_id") && truthy(gen["eos_token_id"]))
    config_["eos_token_id"] = gen["eos_token_id"];
  model_type_ = config_.value("model_type", std::string());

  if (!config_.contains("quantization") && config_.contains("quantization_config")) {
    const ojson& qc = config_["quantization_config"];
    std::string method = qc.is_object() ? qc.value("quant_method", std::string("?")) : std::string("?");
    fail("[convert] ", cfg_path, ": quantization_config with quant_method '", method,
         "' is not MLX's quantized layout; lmtune convert reads dense or MLX-quantized folders");
  }
  ojson dense = config_;
  dense.erase("quantization");
  dense.erase("quantization_config");
  read_leaves(dense);

  // convert.py: --dtype, else torch_dtype, else text_config.dtype; cast only to these three.
  ojson d = r.dtype ? ojson(*r.dtype) : config_.value("torch_dtype", ojson());
  if (d.is_null() && config_.contains("text_config") && truthy(config_["text_config"]) &&
      config_["text_config"].is_object())
    d = config_["text_config"].value("dtype", ojson());
  if (r.cast && d.is_string() && (d == "float16" || d == "bfloat16" || d == "float32")) {
    cast_name_ = d.get<std::string>();
    cast_ = parse_dtype(*cast_name_);
  }

  for (Leaf& l : leaves_) l.out_quant = r.dequantize ? std::nullopt : l.in_quant;
  for (const auto& [path, merge] : req_.merges) {
    // (A named copy: clang before 16 cannot capture a structured binding.)
    auto it = std::find_if(leaves_.begin(), leaves_.end(), [&p = path](const Leaf& l) { return l.path == p; });
    LMT_CHECK(it != leaves_.end() && it->quantizable && it->shape.size() == 2, "[fuse] ", path,
              " is not a linear layer of the ", model_type_, " model in ", r.source);
    it->merge = &merge;
    // mx.dequantize gives the scales' dtype for affine, bfloat16 for the fp modes.
    DType dense = !it->in_quant                               ? it->source_dtype
                  : it->in_quant->mode == quant::Mode::affine ? it->source_dtype
                                                              : DType::bf16;
    it->merged_dtype = merge.out_dtype.value_or(dense);
    if (auto o = req_.merge_outputs.find(path); o != req_.merge_outputs.end()) {
      LMT_CHECK(it->in_quant && !r.dequantize, "[fuse] ", path,
                ": an output choice for a layer that is not re-quantized");
      it->out_quant = o->second.quant;
      it->f32_merge = !o->second.quant && o->second.f32_merge;
      if (it->f32_merge) it->merged_dtype = DType::f32;
      const quant::QuantParams* p = o->second.quant ? &*o->second.quant : nullptr;
      config_["quantization"][path] =
          p ? params_entry(int64_t(p->group_size), p->bits, quant::mode_name(p->mode)) : ojson(false);
    }
  }
  for (const auto& [path, out] : req_.merge_outputs)
    LMT_CHECK(req_.merges.count(path), "[fuse] ", path, ": an output choice for a layer that is not merged");
  for (const auto& [name, t] : req_.replace) {
    const size_t dot = name.rfind('.');
    const std::string layer = name.substr(0, dot);
    auto it = std::find_if(leaves_.begin(), leaves_.end(), [&](const Leaf& l) { return l.path == layer; });
    const std::string part = dot == std::string::npos ? "" : name.substr(dot);
    LMT_CHECK(it != leaves_.end() && (part == ".weight" || (part == ".bias" && it->has_bias)),
              "[fuse] the adapter's tensor ", name, " is not in the model ", r.source);
    LMT_CHECK(!it->in_quant, "[fuse] ", name, ": a full adapter's weights cannot replace a quantized layer");
    LMT_CHECK(t.shape() == (part == ".bias" ? Shape{it->shape[0]} : it->stored_shape()), "[fuse] the adapter's ", name,
              " has another shape than the model's");
  }
  if (r.quantize) plan_quantization(r);
  if (r.dequantize) {
    config_.erase("quantization");
    config_.erase("quantization_config");
  }
  plan_tensors();

  // Arrays outside parameters() that compute_bits_per_weight's tree_reduce still counts:
  // Llama3RoPE keeps _freqs (f32, head_dim / 2) in every attention (models/rope_utils.py). mlx-lm
  // reads rope_scaling (qwen3 also rope_parameters), whatever lmtune's own config reader takes.
  ojson scaling = config_.value("rope_scaling", ojson());
  if (model_type_ == "qwen3" && scaling.is_null() && truthy(config_.value("rope_parameters", ojson())))
    scaling = config_["rope_parameters"];
  if (scaling.is_object()) {
    ojson type = scaling.value("type", ojson());
    if (!truthy(type)) type = scaling.value("rope_type", ojson("default"));
    if (type == "llama3") {
      int64_t n_embd = dense.value("hidden_size", int64_t(0)), n_head = dense.value("num_attention_heads", int64_t(1));
      ojson hd = dense.value("head_dim", ojson());
      int64_t head_dim = model_type_ != "qwen2" && truthy(hd) ? hd.get<int64_t>() : n_embd / n_head;
      nonparameter_bytes_ = uint64_t(n_layer_) * uint64_t((head_dim + 1) / 2) * 4;
    }
  }
}

void Plan::read_leaves(const ojson& dense_config) {
  const std::string cfg_path = req_.source + "/config.json";
  mc_ = ModelConfig::from_json_text(dense_config.dump(), cfg_path);
  const ModelConfig& mc = mc_;
  n_layer_ = mc.n_layer;
  std::vector<TensorSpec> specs = create_model(mc)->tensor_specs();
  // The source's tensors by lmtune's per-expert names (an mlx-lm MoE folder's switch_mlp ones split);
  // the leaves are mlx-lm's modules, whose experts are one stacked SwitchLinear each.
  read_checkpoint_layout(mc, source_);
  std::map<std::string, size_t> by_path;
  for (const TensorSpec& s : specs) {
    size_t dot = s.name.rfind('.');
    std::string path = s.name.substr(0, dot), param = s.name.substr(dot + 1);
    const std::string stacked = stacked_expert_path(mc, path);
    if (!stacked.empty()) path = stacked;
    path = mc.checkpoint_prefix + path;  // a multimodal checkpoint's text tower keeps its prefix
    auto [it, fresh] = by_path.emplace(path, leaves_.size());
    if (fresh) {
      leaves_.emplace_back();
      leaves_.back().path = path;
      leaves_.back().experts = stacked.empty() ? 0 : mc.n_expert;
    }
    Leaf& l = leaves_[it->second];
    if (param == "weight") {
      l.shape = s.shape;
      l.quantizable = s.shape.size() == 2;  // Linear and Embedding; the norms are 1-D
    } else {
      LMT_CHECK(param == "bias" && !l.experts, "[convert] unexpected tensor ", s.name, " in the ", model_type_,
                " family");
      l.has_bias = true;
    }
  }
  std::sort(leaves_.begin(), leaves_.end(),
            [&](const Leaf& a, const Leaf& b) { return mlx_order_less(model_type_, a.path, b.path); });

  // load_model: a layer is quantized when config "quantization" names it (a dict, or true for
  // the top-level parameters), else when its .scales exist (infer_quant_config).
  const ojson q = config_.value("quantization", ojson());
  std::set<std::string> used;
  // A leaf's tensor's header (for stacked experts: expert 0's, its shape led by the expert count,
  // after checking that every expert has the same).
  auto need = [&](const Leaf& l, const std::string& part) -> SafetensorsInfo {
    SafetensorsInfo first;
    for (int64_t e = 0; e < std::max<int64_t>(l.experts, 1); ++e) {
      const std::string name = source_name(l, part, e);
      LMT_CHECK(source_.contains(name), "[convert] ", req_.source, ": tensor ", name, " is missing (a ", model_type_,
                " model with this config.json has it)");
      used.insert(name);
      const SafetensorsInfo& i = source_.info(name);
      if (e == 0) first = i;
      LMT_CHECK(i.shape == first.shape && i.file_dtype == first.file_dtype, "[convert] ", req_.source, ": ", name,
                " is ", i.file_dtype, " ", shape_str(i.shape), ", expert 0's is ", first.file_dtype, " ",
                shape_str(first.shape));
    }
    if (l.experts) first.shape.insert(first.shape.begin(), l.experts);
    return first;
  };
  for (Leaf& l : leaves_) {
    const size_t lead = l.experts ? 1 : 0;  // the stacked experts' axis
    if (q.is_object() && q.contains(l.path)) {
      const ojson& e = q[l.path];
      LMT_CHECK(e.is_boolean() || e.is_object(), "[convert] ", cfg_path, ": quantization entry '", l.path,
                "' must be true, false or an object, got ", e.dump());
      if (e.is_object()) l.in_quant = params_from_entry(e, cfg_path + ": quantization." + l.path);
      if (e.is_boolean() && e.get<bool>()) l.in_quant = params_from_entry(q, cfg_path + ": quantization");
      LMT_CHECK(!l.in_quant || l.quantizable, "[convert] ", cfg_path, ": quantization entry '", l.path,
                "' names a layer that cannot be quantized (mlx-lm: Unable to quantize model of type RMSNorm)");
    } else if (l.quantizable && source_.contains(source_name(l, ".scales", 0))) {
      const SafetensorsInfo w = need(l, ".weight");
      const SafetensorsInfo s = need(l, ".scales");
      LMT_CHECK(w.shape.size() == 2 + lead && s.shape.size() == 2 + lead && s.shape.back() > 0, "[convert] ",
                req_.source, ": ", l.path, ".weight ", shape_str(w.shape), " and .scales ", shape_str(s.shape),
                " are not a quantized ", shape_str(l.shape), " weight");
      int64_t in = l.shape[1];
      quant::QuantParams p;
      p.group_size = int(in / s.shape.back());
      p.bits = int(w.shape.back() * 32 / in);
      if (s.dtype == DType::u8) {  // the fp modes each allow one (bits, group size)
        p.mode = p.bits == 4 && p.group_size == 16   ? quant::Mode::nvfp4
                 : p.bits == 4 && p.group_size == 32 ? quant::Mode::mxfp4
                 : p.bits == 8 && p.group_size == 32 ? quant::Mode::mxfp8
                                                     : fail_mode(l.path, p);
      }
      l.in_quant = p;
    }
    if (l.in_quant) {
      const quant::QuantParams& p = *l.in_quant;
      quant::check_params(p, l.shape[1], l.path);
      need(l, ".weight");
      need(l, ".scales");
      if (p.mode == quant::Mode::affine) need(l, ".biases");
      // Expert by expert, on views of the file: stacking them here as well as in produce() copied
      // every expert layer twice.
      for (int64_t e = 0; e < std::max<int64_t>(l.experts, 1); ++e) {
        quant::QuantizedWeight qw;
        qw.params = p;
        qw.wq = source_.get(source_name(l, ".weight", e));
        qw.scales = source_.get(source_name(l, ".scales", e));
        if (p.mode == quant::Mode::affine) qw.biases = source_.get(source_name(l, ".biases", e));
        quant::validate(qw, l.shape[1], l.path);  // the stacked layer's name, as the folder has it
        l.source_dtype = qw.scales.dtype();
      }
    } else {
      const SafetensorsInfo w = need(l, ".weight");
      LMT_CHECK(w.shape == l.stored_shape(), "[convert] ", req_.source, ": ", l.path, ".weight is ", shape_str(w.shape),
                ", expected ", shape_str(l.stored_shape()));
      LMT_CHECK(w.supported && is_float(w.dtype), "[convert] ", req_.source, ": ", l.path, ".weight has dtype ",
                w.file_dtype, "; lmtune converts F32, BF16 and F16 weights");
      l.source_dtype = w.dtype;
    }
    if (l.has_bias) {
      const SafetensorsInfo b = need(l, ".bias");
      LMT_CHECK(b.shape == Shape{l.shape[0]} && b.supported && is_float(b.dtype), "[convert] ", req_.source, ": ",
                l.path, ".bias is ", b.file_dtype, " ", shape_str(b.shape), ", expected a float ",
                shape_str({l.shape[0]}));
    }
  }
  // Model.sanitize drops rotary_emb.inv_freq and, with tied embeddings, lm_head.weight; anything
  // else unused fails as mlx-lm's strict load_weights does.
  std::vector<std::string> extra;
  for (const std::string& n : source_.names()) {
    if (used.count(n) || n.find("self_attn.rotary_emb.inv_freq") != std::string::npos) continue;
    if (n == "lm_head.weight" && mc.tie_word_embeddings) continue;
    extra.push_back(n);
  }
  if (!extra.empty()) {
    std::string list;
    for (size_t i = 0; i < extra.size() && i < 8; ++i) list += (i ? ", " : "") + extra[i];
    if (extra.size() > 8) list += str_cat(", ... (", extra.size() - 8, " more)");
    fail("[convert] ", req_.source, ": ", extra.size(), " tensors are not parameters of a ", model_type_,
         " model with this config.json: ", list);
  }
}

std::string Plan::source_name(const Leaf& l, const std::string& part, int64_t expert) const {
  const std::string path = l.path.substr(mc_.checkpoint_prefix.size());
  return (l.experts ? per_expert_path(mc_, path, expert) : path) + part;
}

Tensor Plan::source_tensor(const Leaf& l, const std::string& part) const {
  if (!l.experts) return source_.get(source_name(l, part, 0));
  // The experts' tensors (one stacked file tensor split, or the per-expert ones) stacked again.
  Tensor first = source_.get(source_name(l, part, 0));
  Shape shape = first.shape();
  shape.insert(shape.begin(), l.experts);
  Tensor out = Tensor::empty(shape, first.dtype());
  for (int64_t e = 0; e < l.experts; ++e) {
    Tensor t = e == 0 ? first : source_.get(source_name(l, part, e));
    LMT_CHECK(t.shape() == first.shape() && t.dtype() == first.dtype(), "[convert] ", source_name(l, part, e), " is ",
              t.describe(), ", expert 0's is ", first.describe());
    std::memcpy(static_cast<char*>(out.raw()) + size_t(e) * t.nbytes(), t.raw(), t.nbytes());
  }
  return out;
}

quant::QuantizedWeight Plan::source_quantized(const Leaf& l, const std::optional<DType>& cast) const {
  quant::QuantizedWeight q;
  q.params = *l.in_quant;
  q.wq = source_tensor(l, ".weight");
  q.scales = cast_if(source_tensor(l, ".scales"), cast);
  if (q.params.mode == quant::Mode::affine) q.biases = cast_if(source_tensor(l, ".biases"), cast);
  return q;
}

void Plan::plan_quantization(const Request& r) {
  // quantize_model: the mode's defaults for what the flags leave unset (`group_size or default`).
  quant::Mode mode = quant::parse_mode(r.q_mode, "--q-mode");
  quant::QuantParams top = quant::default_params(mode);
  if (r.q_group_size && *r.q_group_size != 0) top.group_size = int(*r.q_group_size);
  if (r.q_bits && *r.q_bits != 0) top.bits = int(*r.q_bits);
  quant::check_params(top, 0, "--q-group-size / --q-bits");
  // A model that is already partly quantized records every newly quantized layer by path.
  bool fine_grained = config_.contains("quantization");
  if (!fine_grained) config_["quantization"] = params_entry(int64_t(top.group_size), top.bits, quant::mode_name(mode));
  ojson& qcfg = config_["quantization"];

  // convert.py: mixed_quant_predicate_builder (llama.cpp's Q4_K_M choices).
  int low = 0, high = 6;
  size_t layer_location = 0;
  if (r.quant_predicate) {
    const std::string& rec = *r.quant_predicate;
    LMT_CHECK(mode == quant::Mode::affine, "Quant predicates only support 'affine' quantization.");
    if (rec == "mixed_2_6") {
      low = 2;
    } else if (rec == "mixed_3_4") {
      low = 3, high = 4;
    } else if (rec == "mixed_3_6") {
      low = 3;
    } else if (rec == "mixed_4_6") {
      low = 4;
    } else {
      fail("Invalid quant recipe ", rec);
    }
    auto down = std::find_if(leaves_.begin(), leaves_.end(),
                             [](const Leaf& l) { return l.path.find("down_proj") != std::string::npos; });
    LMT_CHECK(down != leaves_.end(), "Model does not have expected keys for mixed quant.");
    std::vector<std::string> parts = split_dots(down->path);
    while (layer_location + 1 < parts.size() && !is_digits(parts[layer_location])) ++layer_location;
  }
  const int64_t n = n_layer_;
  size_t quantized = 0;
  for (Leaf& l : leaves_) {
    // QuantizedLinear has no to_quantized: a layer quantized in the source stays as it is.
    if (!l.quantizable || l.in_quant) continue;
    if (l.shape[1] % top.group_size != 0) {
      not_divisible_.push_back(l.path);
      continue;
    }
    if (r.quant_predicate) {
      std::vector<std::string> parts = split_dots(l.path);
      int64_t index = 0;
      if (parts.size() > layer_location) {
        LMT_CHECK(is_digits(parts[layer_location]), "[convert] ", l.path, ": no layer index at position ",
                  layer_location, " for the mixed recipe");
        index = std::stoll(parts[layer_location]);
      }
      bool more = index < n / 8 || index >= 7 * n / 8 || (index - n / 8) % 3 == 2;
      auto has = [&](const char* s) { return l.path.find(s) != std::string::npos; };
      int bits = low;
      if ((has("v_proj") || has("v_a_proj") || has("v_b_proj")) && more) {
        bits = high;
      } else if (has("down_proj") && more) {
        bits = high;
      } else if (has("lm_head")) {
        bits = high;
      }
      // The recipe's dict carries --q-group-size as given: null without it (to_quantized then
      // takes the default), and config.json records it so.
      quant::QuantParams p;
      p.bits = bits;
      if (r.q_group_size && *r.q_group_size != 0) p.group_size = int(*r.q_group_size);
      l.out_quant = p;
      qcfg[l.path] = params_entry(r.q_group_size, bits, "affine");
    } else if (family_keeps_8_bits(model_type_, l.path)) {
      // The family's quant_predicate returns {"group_size": 64, "bits": 8}: affine (to_quantized's
      // default mode), recorded as returned.
      quant::QuantParams p;
      p.group_size = 64, p.bits = 8;
      l.out_quant = p;
      ojson e = ojson::object();
      e["group_size"] = 64;
      e["bits"] = 8;
      qcfg[l.path] = e;
    } else {
      l.out_quant = top;
      if (fine_grained) qcfg[l.path] = params_entry(int64_t(top.group_size), top.bits, quant::mode_name(mode));
    }
    quant::check_params(*l.out_quant, l.shape[1], l.path);
    ++quantized;
  }
  config_["quantization_config"] = config_["quantization"];
  // mlx-lm would write such a model unquantized with a "quantization" entry; lmtune refuses.
  if (quantized == 0 && !not_divisible_.empty()) {
    auto first =
        std::find_if(leaves_.begin(), leaves_.end(), [&](const Leaf& l) { return l.path == not_divisible_.front(); });
    fail("[convert] group size ", top.group_size, " divides the input size of no layer (", first->path, ": ",
         first->shape[1], ", ...): nothing would be quantized");
  }
  LMT_CHECK(quantized > 0, "[convert] every quantizable layer of ", req_.source, " is already quantized");
}

void Plan::plan_tensors() {
  auto cast_or = [&](DType dt) { return cast_ && is_float(dt) ? *cast_ : dt; };
  for (Leaf& l : leaves_) {
    l.first_tensor = tensors_.size();
    // A stacked leaf's tensors are led by its expert count.
    auto stacked = [&](Shape s) {
      if (l.experts) s.insert(s.begin(), l.experts);
      return s;
    };
    if (l.out_quant) {
      const quant::QuantParams& p = *l.out_quant;
      int64_t out = l.shape[0], in = l.shape[1];
      // A merged layer is quantized from the merged weight: the scales take its dtype.
      DType sdt = p.mode != quant::Mode::affine ? DType::u8 : l.merge ? l.merged_dtype : cast_or(l.source_dtype);
      tensors_.push_back({l.path + ".weight", DType::u32, stacked({out, in * p.bits / 32})});
      tensors_.push_back({l.path + ".scales", sdt, stacked({out, in / p.group_size})});
      if (p.mode == quant::Mode::affine)
        tensors_.push_back({l.path + ".biases", sdt, stacked({out, in / p.group_size})});
    } else if (l.merge) {
      tensors_.push_back({l.path + ".weight", l.merged_dtype, l.stored_shape()});
    } else if (l.in_quant) {  // mx.dequantize: the scales' dtype for affine, bfloat16 for the fp modes
      DType wdt = l.in_quant->mode == quant::Mode::affine ? cast_or(l.source_dtype) : DType::bf16;
      tensors_.push_back({l.path + ".weight", wdt, l.stored_shape()});
    } else {
      auto rep = req_.replace.find(l.path + ".weight");
      tensors_.push_back({l.path + ".weight", rep != req_.replace.end() ? rep->second.dtype() : cast_or(l.source_dtype),
                          l.stored_shape()});
    }
    total_parameters_ += numel_of(l.stored_shape());
    if (l.has_bias) {
      auto rep = req_.replace.find(l.path + ".bias");
      DType bdt =
          rep != req_.replace.end() ? rep->second.dtype() : cast_or(source_.info(source_name(l, ".bias", 0)).dtype);
      tensors_.push_back({l.path + ".bias", bdt, {l.shape[0]}});
      total_parameters_ += l.shape[0];
    }
    l.n_tensors = tensors_.size() - l.first_tensor;
  }
}

uint64_t Plan::total_size() const {
  uint64_t n = 0;
  for (const TensorEntry& e : tensors_) n += e.nbytes();
  return n;
}

double Plan::bits_per_weight() const {
  return double((total_size() + nonparameter_bytes_) * 8) / double(total_parameters_);
}

std::vector<std::vector<size_t>> Plan::shards() const {
  std::vector<std::vector<size_t>> s;
  uint64_t size = 0;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    uint64_t nb = tensors_[i].nbytes();
    if (s.empty() || size + nb > req_.max_shard_bytes) s.emplace_back(), size = 0;
    s.back().push_back(i);
    size += nb;
  }
  return s;
}

std::string Plan::shard_name(size_t i, size_t n) {
  if (n <= 1) return "model.safetensors";
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return buf;
}

std::string Plan::config_text() const {
  ojson c = config_;
  c.erase("_name_or_path");
  c.erase("vision_config");
  if (c.contains("quantization")) c["quantization_config"] = c["quantization"];
  std::vector<std::string> keys;
  for (auto it = c.begin(); it != c.end(); ++it) keys.push_back(it.key());
  std::sort(keys.begin(), keys.end());  // byte order of UTF-8 = Python's code point order
  ojson sorted = ojson::object();
  for (const std::string& k : keys) sorted[k] = c[k];
  return python_json(sorted);
}

std::string Plan::index_text(const std::vector<std::vector<size_t>>& shards) const {
  std::vector<std::pair<std::string, std::string>> map;
  for (size_t s = 0; s < shards.size(); ++s)
    for (size_t i : shards[s]) map.emplace_back(tensors_[i].name, shard_name(s, shards.size()));
  std::sort(map.begin(), map.end());
  ojson idx = ojson::object();
  idx["metadata"] = ojson::object();
  idx["metadata"]["total_size"] = total_size();
  idx["metadata"]["total_parameters"] = total_parameters_;
  idx["weight_map"] = ojson::object();
  for (const auto& [name, file] : map) idx["weight_map"][name] = file;
  return python_json(idx);
}

Tensor Plan::source_dense(const Leaf& l) const {
  if (!l.in_quant) return source_tensor(l, ".weight");
  quant::QuantizedWeight q = source_quantized(l, cast_);
  return quant::dequantize(q, q.params.mode == quant::Mode::affine ? q.scales.dtype() : DType::bf16);
}

Tensor Plan::merged(const Leaf& l, bool f32) const {
  LMT_CHECK(l.merge, "[fuse] ", l.path, " is not merged");
  Tensor dense = source_dense(l);
  return l.merge->apply(f32 ? ops::cast(dense, DType::f32) : dense);
}

std::vector<std::pair<std::string, Tensor>> Plan::produce(const Leaf& l) const {
  std::vector<std::pair<std::string, Tensor>> out;
  const std::string w = l.path + ".weight";
  if (l.merge) {
    Tensor merged = this->merged(l, l.f32_merge);
    LMT_CHECK(merged.dtype() == l.merged_dtype && merged.shape() == l.stored_shape(), "[fuse] ", l.path,
              ": the merged weight is ", merged.describe(), ", planned ", dtype_name(l.merged_dtype));
    if (l.out_quant) {
      quant::QuantizedWeight q = quant::quantize(merged, *l.out_quant);
      out.emplace_back(w, q.wq);
      out.emplace_back(l.path + ".scales", q.scales);
      if (q.biases.defined()) out.emplace_back(l.path + ".biases", q.biases);
    } else {
      out.emplace_back(w, merged);
    }
  } else if (l.out_quant) {
    quant::QuantizedWeight q = l.in_quant ? source_quantized(l, cast_)
                                          : quant::quantize(cast_if(source_tensor(l, ".weight"), cast_), *l.out_quant);
    out.emplace_back(w, q.wq);
    out.emplace_back(l.path + ".scales", q.scales);
    if (q.biases.defined()) out.emplace_back(l.path + ".biases", q.biases);
  } else if (l.in_quant) {
    quant::QuantizedWeight q = source_quantized(l, cast_);
    DType wdt = q.params.mode == quant::Mode::affine ? q.scales.dtype() : DType::bf16;
    out.emplace_back(w, quant::dequantize(q, wdt));
  } else {
    auto rep = req_.replace.find(w);
    out.emplace_back(w, rep != req_.replace.end() ? rep->second : cast_if(source_tensor(l, ".weight"), cast_));
  }
  if (l.has_bias) {
    auto rep = req_.replace.find(l.path + ".bias");
    out.emplace_back(l.path + ".bias",
                     rep != req_.replace.end() ? rep->second : cast_if(source_tensor(l, ".bias"), cast_));
  }
  return out;
}

}  // namespace lmtune::cli::convert
