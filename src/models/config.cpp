#include "models/config.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "models/registry.h"

namespace lmtune {

using json = nlohmann::json;

bool ConfigReader::has(const char* key) const { return j.contains(key) && !j[key].is_null(); }

int64_t ConfigReader::int_or(const char* key, int64_t dflt) const {
  if (!has(key)) return dflt;
  LMT_CHECK(j[key].is_number_integer(), "[config] ", src, ": field '", key, "' must be an integer, got ",
            j[key].dump());
  return j[key].get<int64_t>();
}

int64_t ConfigReader::required_int(const char* key) const {
  LMT_CHECK(has(key), "[config] ", src, ": missing field '", key, "'");
  int64_t v = int_or(key, 0);
  LMT_CHECK(v > 0, "[config] ", src, ": field '", key, "' must be positive, got ", v);
  return v;
}

double ConfigReader::num_or(const char* key, double dflt) const {
  if (!has(key)) return dflt;
  LMT_CHECK(j[key].is_number(), "[config] ", src, ": field '", key, "' must be a number, got ", j[key].dump());
  return j[key].get<double>();
}

bool ConfigReader::bool_or(const char* key, bool dflt) const {
  if (!has(key)) return dflt;
  LMT_CHECK(j[key].is_boolean(), "[config] ", src, ": field '", key, "' must be true or false, got ", j[key].dump());
  return j[key].get<bool>();
}

std::string ConfigReader::str_or(const char* key, const std::string& dflt) const {
  if (!has(key)) return dflt;
  LMT_CHECK(j[key].is_string(), "[config] ", src, ": field '", key, "' must be a string, got ", j[key].dump());
  return j[key].get<std::string>();
}

namespace {

// The rope type an object names ("rope_type", or the older "type"), refused unless supported.
std::string rope_type_of(const ConfigReader& s, const char* field) {
  std::string type = s.str_or("rope_type", s.str_or("type", "default"));
  if (type == "su") type = "longrope";  // the older name of the same scaling
  LMT_CHECK(type == "default" || type == "linear" || type == "llama3" || type == "longrope", "[config] ", s.src, ": ",
            field, " type '", type, "' is not supported (supported: default, linear, llama3, longrope)");
  return type;
}

// One rotary setting from a rope_parameters (or rope_scaling) object, over `out` (whose theta is the
// default when the object has none). field names the object in errors.
void read_rope(const ConfigReader& s, const char* field, int64_t max_position, RopeConfig& out) {
  const std::string type = rope_type_of(s, field);
  out.theta = s.num_or("rope_theta", out.theta);
  out.type = type;
  // transformers' rope validation: each type's keys must be there (no silent defaults).
  auto need = [&](const char* key) {
    LMT_CHECK(s.has(key), "[config] ", s.src, ": ", field, " of type '", type, "' needs '", key, "'");
  };
  if (type == "linear" || type == "llama3") need("factor");
  if (type == "llama3")
    for (const char* k : {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) need(k);
  out.factor = s.num_or("factor", 1.0);
  out.low_freq_factor = s.num_or("low_freq_factor", 1.0);
  out.high_freq_factor = s.num_or("high_freq_factor", 4.0);
  out.original_max_position_embeddings = max_position;  // checked by check_bounds
  if (s.has("original_max_position_embeddings")) {
    const double original = s.num_or("original_max_position_embeddings", 0);
    LMT_CHECK(std::isfinite(original) && original >= 1 && original <= double(int64_t(1) << 30), "[config] ", s.src,
              ": ", field, " 'original_max_position_embeddings' must be 1 to 2^30, got ", original);
    out.original_max_position_embeddings = int64_t(original);
  }
  if (type == "default") return;
  if (type == "longrope") return;  // checked by read_longrope, which knows the top-level fields
  LMT_CHECK(std::isfinite(out.factor) && out.factor > 0, "[config] ", s.src, ": ", field,
            " 'factor' must be a positive number, got ", out.factor);
  if (type == "llama3") {
    LMT_CHECK(std::isfinite(out.low_freq_factor) && std::isfinite(out.high_freq_factor) && out.low_freq_factor > 0 &&
                  out.high_freq_factor > out.low_freq_factor,
              "[config] ", s.src, ": ", field, " needs 0 < 'low_freq_factor' < 'high_freq_factor', got ",
              out.low_freq_factor, " and ", out.high_freq_factor);
  }
}

// longrope's fields: the factor lists from the rope object, original_max_position_embeddings from it
// or from the top level (Phi-3's older files), the attention factor given or derived.
void read_longrope(const ConfigReader& r, const ConfigReader& s, const char* field, ModelConfig& c) {
  RopeConfig& o = c.rope;
  auto list = [&](const char* key) {
    LMT_CHECK(s.j.contains(key) && s.j[key].is_array(), "[config] ", r.src, ": ", field, " of type 'longrope' needs '",
              key, "' (a list of numbers)");
    std::vector<double> v;
    for (const json& x : s.j[key]) {
      LMT_CHECK(x.is_number() && std::isfinite(x.get<double>()) && x.get<double>() > 0, "[config] ", r.src, ": ", field,
                " '", key, "' holds ", x.dump(), "; every entry must be a positive number");
      v.push_back(x.get<double>());
    }
    return v;
  };
  o.short_factor = list("short_factor");
  o.long_factor = list("long_factor");
  if (!s.has("original_max_position_embeddings")) {
    LMT_CHECK(r.has("original_max_position_embeddings"), "[config] ", r.src, ": ", field,
              " of type 'longrope' needs 'original_max_position_embeddings'");
    const double original = r.num_or("original_max_position_embeddings", 0);
    LMT_CHECK(std::isfinite(original) && original >= 1 && original <= double(int64_t(1) << 30), "[config] ", r.src,
              ": 'original_max_position_embeddings' must be 1 to 2^30, got ", original);
    o.original_max_position_embeddings = int64_t(original);
  }
  const double original = double(o.original_max_position_embeddings);
  o.factor = s.has("factor") ? s.num_or("factor", 1.0) : double(c.max_position_embeddings) / original;
  LMT_CHECK(std::isfinite(o.factor) && o.factor > 0, "[config] ", r.src, ": ", field,
            " 'factor' must be positive, got ", o.factor);
  o.attention_factor = s.has("attention_factor") ? s.num_or("attention_factor", 1.0)
                       : o.factor <= 1.0         ? 1.0
                                                 : std::sqrt(1.0 + std::log(o.factor) / std::log(original));
  LMT_CHECK(std::isfinite(o.attention_factor) && o.attention_factor > 0, "[config] ", r.src, ": ", field,
            " 'attention_factor' must be positive, got ", o.attention_factor);
}

void parse_rope(const ConfigReader& r, ModelConfig& c) {
  // transformers 5 writes rope_parameters {rope_type, rope_theta, ...}, or for models whose layer
  // types rotate differently one such object per type ({full_attention: ..., sliding_attention:
  // ...}: gemma3); older files write rope_theta and rope_scaling {type | rope_type, factor, ...}. A
  // file with both is read from rope_parameters, but rope_scaling must agree: mlx-lm reads only
  // rope_scaling, so a scaling ignored here would give another model there.
  const json& j = r.j;
  auto object = [&](const json& o, const char* key) {
    if (!o.contains(key) || o[key].is_null()) return static_cast<const json*>(nullptr);
    LMT_CHECK(o[key].is_object(), "[config] ", r.src, ": field '", key, "' must be an object, got ", o[key].dump());
    return &o[key];
  };
  const json* params = object(j, "rope_parameters");
  const json* legacy = object(j, "rope_scaling");
  c.rope.theta = r.num_or("rope_theta", 10000.0);
  if (params && (params->contains("full_attention") || params->contains("sliding_attention"))) {
    const json* full = object(*params, "full_attention");
    const json* sliding = object(*params, "sliding_attention");
    if (full)
      read_rope(ConfigReader{*full, r.src}, "rope_parameters.full_attention", c.max_position_embeddings, c.rope);
    if (sliding) {
      c.rope_sliding = RopeConfig{};
      c.rope_sliding->theta = c.rope.theta;
      read_rope(ConfigReader{*sliding, r.src}, "rope_parameters.sliding_attention", c.max_position_embeddings,
                *c.rope_sliding);
    }
    params = full;
    if (!params) return;
  }
  const json* scaling = params ? params : legacy;
  const char* field = params ? "rope_parameters" : "rope_scaling";
  if (!scaling) return;
  ConfigReader s{*scaling, r.src};
  if (params && legacy) {
    const std::string type = rope_type_of(s, field), other = rope_type_of(ConfigReader{*legacy, r.src}, "rope_scaling");
    LMT_CHECK(other == type, "[config] ", r.src, ": rope_parameters has rope type '", type, "' but rope_scaling has '",
              other, "'; remove the one that is wrong");
  }
  if (scaling != params || !c.rope_sliding) read_rope(s, field, c.max_position_embeddings, c.rope);
  if (c.rope.type == "longrope") read_longrope(r, s, field, c);
}

// transformers 5's layer_types, when present, says which layers slide; the family parsers handle
// the older per-family keys when it is absent.
void parse_layer_types(const ConfigReader& r, ModelConfig& c) {
  c.layer_window.assign(size_t(c.n_layer), 0);
  c.layer_rope.assign(size_t(c.n_layer), true);
  c.layer_moe.assign(size_t(c.n_layer), false);
  if (!r.j.contains("layer_types") || !r.j["layer_types"].is_array()) return;
  const json& lt = r.j["layer_types"];
  int64_t window = r.int_or("sliding_window", 0);
  LMT_CHECK(int64_t(lt.size()) == c.n_layer, "[config] ", r.src, ": layer_types has ", lt.size(), " entries for ",
            c.n_layer, " layers");
  for (size_t i = 0; i < lt.size(); ++i) {
    std::string t = lt[i].is_string() ? lt[i].get<std::string>() : "";
    LMT_CHECK(t == "full_attention" || t == "sliding_attention", "[config] ", r.src, ": layer_types[", i,
              "] = ", lt[i].dump(), " is not supported");
    if (t == "sliding_attention") {
      LMT_CHECK(window > 0, "[config] ", r.src, ": layer ", i, " uses sliding attention but sliding_window is ",
                window);
      c.layer_window[i] = window;
    }
  }
}
// mlx-lm's "quantization": {group_size, bits, mode, <layer path>: {group_size, bits, mode} | true |
// false}, read as mlx-lm's loader passes it to nn.quantize: the defaults' mode is "affine" unless
// given; a layer's own entry is to_quantized's arguments, so its mode is "affine" unless given
// (never the defaults') and a missing or null group_size / bits is its mode's default; `true`
// takes the defaults. Every entry is checked against its mode here, naming the field.
// Without it, a "quantization_config" from another tool (GPTQ, AWQ, ...) is refused by name: its
// weights are not MLX's layout.
void parse_quantization(const ConfigReader& r, ModelConfig& c) {
  auto layer = [&](const json& o, const std::string& where) {
    ConfigReader lr{o, r.src};
    const std::string mode = lr.str_or("mode", "affine");
    LMT_CHECK(mode == "affine" || mode == "mxfp4" || mode == "nvfp4" || mode == "mxfp8", "[config] ", r.src, ": ",
              where, " mode '", mode, "' is not one of affine, mxfp4, nvfp4, mxfp8");
    LayerQuant q = default_quant_format(parse_quant_mode(mode, "config"));
    q.bits = int(lr.int_or("bits", q.bits));
    q.group_size = int(lr.int_or("group_size", q.group_size));
    const std::string error = quant_format_error(q, 0);
    LMT_CHECK(error.empty(), "[config] ", r.src, ": ", where, ": ", error);
    return q;
  };
  if (!r.has("quantization")) {
    if (r.has("quantization_config")) {
      const json& qc = r.j["quantization_config"];
      std::string method = qc.is_object() && qc.contains("quant_method") && qc["quant_method"].is_string()
                               ? qc["quant_method"].get<std::string>()
                               : "?";
      fail("[config] ", r.src, ": quantization_config with quant_method '", method,
           "' is not MLX's quantized layout; lmtune reads MLX-quantized folders (config \"quantization\"): convert "
           "the original weights with `lmtune convert -q`");
    }
    return;
  }
  const json& q = r.j["quantization"];
  LMT_CHECK(q.is_object(), "[config] ", r.src, ": field 'quantization' must be an object, got ", q.dump());
  c.quantization.present = true;
  c.quantization.defaults = layer(q, "quantization");
  for (auto it = q.begin(); it != q.end(); ++it) {
    const std::string& k = it.key();
    if (k == "bits" || k == "group_size" || k == "mode") continue;
    if (it->is_boolean()) {
      if (it->get<bool>())
        c.quantization.layers[k] = c.quantization.defaults;
      else
        c.quantization.layers[k] = std::nullopt;
    } else {
      LMT_CHECK(it->is_object(), "[config] ", r.src, ": quantization['", k, "'] must be an object or false, got ",
                it->dump());
      c.quantization.layers[k] = layer(*it, "quantization['" + k + "']");
    }
  }
}
// Sizes and constants a real model never exceeds, checked before anything is allocated from
// them: a hostile config.json (num_hidden_layers 10^9) fails here, naming the field, instead of
// in std::bad_alloc or a climb through memory. The largest released models stay far inside
// (vocab ~262k, hidden 16k-25k, intermediate ~100k, layers ~130, heads ~128, head_dim 256).
void check_bounds(const ConfigReader& r, const ModelConfig& c) {
  auto most = [&](const char* key, int64_t v, int64_t limit) {
    LMT_CHECK(v <= limit, "[config] ", r.src, ": field '", key, "' is ", v, ", over the limit of ", limit,
              " (no real model comes near; refusing before allocating for it)");
  };
  most("vocab_size", c.n_vocab, int64_t(1) << 24);
  most("hidden_size", c.n_embd, int64_t(1) << 17);
  most("intermediate_size", c.n_ff, int64_t(1) << 20);
  most("num_hidden_layers", c.n_layer, 4096);
  most("num_attention_heads", c.n_head, 4096);
  most("head_dim", c.head_dim, 16384);
  most("head_dim x num_attention_heads", c.head_dim * c.n_head, int64_t(1) << 20);
  LMT_CHECK(c.max_position_embeddings > 0, "[config] ", r.src,
            ": field 'max_position_embeddings' must be positive, got ", c.max_position_embeddings);
  most("max_position_embeddings", c.max_position_embeddings, int64_t(1) << 30);
  LMT_CHECK(std::isfinite(c.rms_norm_eps) && c.rms_norm_eps > 0 && c.rms_norm_eps < 1, "[config] ", r.src,
            ": field 'rms_norm_eps' must be a small positive number (as 1e-6), got ", c.rms_norm_eps);
  LMT_CHECK(std::isfinite(c.rope.theta) && c.rope.theta > 0, "[config] ", r.src,
            ": field 'rope_theta' must be a positive number (as 10000.0), got ", c.rope.theta);
}
}  // namespace

// A multimodal gemma3 checkpoint's text model (models/gemma3.cpp).
ModelConfig gemma3_text_tower(const nlohmann::json& j, const std::string& src);

ModelConfig ModelConfig::from_json_text(const std::string& text, const std::string& src) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number past double's range
    fail("[config] ", src, ": not valid JSON: ", e.what());
  }
  LMT_CHECK(j.is_object(), "[config] ", src, ": expected a JSON object");
  ConfigReader r{j, src};
  ModelConfig c;
  c.model_type = r.str_or("model_type", "");
  if (c.model_type == "gemma3") return gemma3_text_tower(j, src);
  const ModelFamily& family = model_family(c.model_type, src);
  c.n_vocab = r.required_int("vocab_size");
  c.n_embd = r.required_int("hidden_size");
  c.n_ff = r.required_int("intermediate_size");
  c.n_layer = r.required_int("num_hidden_layers");
  c.n_head = r.required_int("num_attention_heads");
  c.n_kv_head = r.int_or("num_key_value_heads", c.n_head);
  LMT_CHECK(c.n_kv_head > 0 && c.n_head % c.n_kv_head == 0, "[config] ", src, ": num_attention_heads ", c.n_head,
            " is not a multiple of num_key_value_heads ", c.n_kv_head);
  c.head_dim = r.int_or("head_dim", c.n_embd / c.n_head);
  LMT_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0, "[config] ", src, ": head_dim ", c.head_dim, " must be even");
  c.rms_norm_eps = r.num_or("rms_norm_eps", 1e-6);
  c.max_position_embeddings = r.int_or("max_position_embeddings", 4096);
  c.tie_word_embeddings = r.bool_or("tie_word_embeddings", false);
  c.torch_dtype = r.str_or("torch_dtype", r.str_or("dtype", ""));
  parse_rope(r, c);
  check_bounds(r, c);
  parse_layer_types(r, c);
  parse_quantization(r, c);
  family.parse(r, c);
  // A family with another activation reads and checks its own field (gemma's hidden_activation);
  // the others take silu only.
  if (c.activation == nn::Activation::silu) {
    std::string act = r.str_or("hidden_act", "silu");
    LMT_CHECK(act == "silu", "[config] ", src, ": hidden_act '", act, "' is not supported for ", c.model_type,
              " (expected silu)");
  }
  return c;
}

ModelConfig ModelConfig::load(const std::string& dir) {
  std::string path = dir + "/config.json";
  std::ifstream f(path);
  LMT_CHECK(f.good(), "[config] cannot open ", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return from_json_text(ss.str(), path);
}

std::vector<float> rope_inv_freq(const ModelConfig& c, bool sliding, bool long_factors) {
  const RopeConfig& r = sliding && c.rope_sliding ? *c.rope_sliding : c.rope;
  // A partial rotary (rotary_dim < head_dim): the frequencies of a rotary_dim-wide rotation, then
  // zeros (angle 0) for the pairs that pass unrotated (see Attention::rope_perm).
  const int64_t dim = c.rotary_dim > 0 ? c.rotary_dim : c.head_dim, half = dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  if (r.type == "longrope") {
    const std::vector<double>& ext = long_factors ? r.long_factor : r.short_factor;
    LMT_CHECK(int64_t(ext.size()) == half, "[config] longrope's ", long_factors ? "long" : "short", "_factor has ",
              ext.size(), " entries; a rotation over ", dim, " dimensions needs ", half);
    for (int64_t i = 0; i < half; ++i)
      inv[size_t(i)] = float(1.0 / (ext[size_t(i)] * std::pow(r.theta, double(2 * i) / double(dim))));
    inv.resize(size_t(c.head_dim / 2), 0.f);
    return inv;
  }
  for (int64_t i = 0; i < half; ++i) inv[size_t(i)] = float(1.0 / std::pow(r.theta, double(2 * i) / double(dim)));
  if (r.type == "linear") {
    for (float& f : inv) f = float(f / r.factor);
  } else if (r.type == "llama3") {
    double old_len = double(r.original_max_position_embeddings);
    double low_wavelen = old_len / r.low_freq_factor, high_wavelen = old_len / r.high_freq_factor;
    for (float& f : inv) {
      double wavelen = 2 * M_PI / f;
      if (wavelen > low_wavelen) {
        f = float(f / r.factor);
      } else if (wavelen >= high_wavelen) {
        double smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
        f = float((1 - smooth) * f / r.factor + smooth * f);
      }
    }
  }
  inv.resize(size_t(c.head_dim / 2), 0.f);
  return inv;
}

}  // namespace lmtune
