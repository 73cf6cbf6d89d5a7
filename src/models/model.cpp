#include "models/model.h"

#include <optional>
#include <set>

#include "autograd/functions.h"
#include "autograd/linear_cross_entropy.h"
#include "core/error.h"
#include "core/runtime_config.h"
#include "io/safetensors.h"
#include "models/checkpoint_layout.h"
#include "models/registry.h"
#include "nn/linear.h"
#include "ops/ops.h"

namespace lmtune {

namespace {

// "<layer>.weight" -> "<layer>"; "" for other names.
std::string layer_of(const std::string& weight_name) {
  const std::string suffix = ".weight";
  if (weight_name.size() <= suffix.size() ||
      weight_name.compare(weight_name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return {};
  return weight_name.substr(0, weight_name.size() - suffix.size());
}

}  // namespace

Tensor Model::forward_packed(const Tensor& ids, const std::vector<PackedSequence>& seqs) {
  LMT_CHECK(ids.ndim() == 2 && ids.dim(0) == 1 && ids.dtype() == DType::i32,
            "[model] packed ids must be i32 (1, N), got ", ids.describe());
  LMT_CHECK(!seqs.empty(), "[model] a packed forward needs at least one sequence");
  const int64_t V = cfg_.n_vocab;
  Tensor out;
  int64_t begin = 0, rows = 0, row = 0;
  for (const PackedSequence& s : seqs) rows += s.every_row ? s.length : 1;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const PackedSequence& s = seqs[i];
    LMT_CHECK(s.cache && s.length >= 1 && begin + s.length <= ids.dim(1), "[model] packed sequence ", i, " (length ",
              s.length, ") does not fit the ", ids.dim(1), " packed ids");
    Tensor part = Tensor::from_i32(
        std::vector<int32_t>(ids.data<int32_t>() + begin, ids.data<int32_t>() + begin + s.length), {1, s.length});
    const int64_t n = s.every_row ? s.length : 1;
    Tensor lg = forward(part, *s.cache, !s.every_row).reshape({n, V});
    if (!out.defined()) out = ops::empty({rows, V}, lg.dtype(), lg.device());
    ops::copy_rows_into(out, row, lg);
    begin += s.length, row += n;
  }
  LMT_CHECK(begin == ids.dim(1), "[model] the packed lengths sum to ", begin, ", not ", ids.dim(1));
  return out;
}

Tensor Model::forward(const Tensor&, const PackedRows&) {
  fail("[model] ", cfg_.model_type, " cannot run packed rows (--pack)");
}

void Model::check_packed_rows(const Tensor& ids, const PackedRows& rows) {
  for (const Tensor* t : {&rows.positions, &rows.segments})
    LMT_CHECK(t->defined() && t->dtype() == DType::i32 && t->device() == Device::cpu && t->shape() == ids.shape(),
              "[model] packed rows need i32 positions and segments on the CPU shaped like ids ", ids.describe(),
              ", got ", t->defined() ? t->describe() : std::string("none"));
  const int64_t B = ids.dim(0), T = ids.dim(1);
  const int32_t* pos = rows.positions.data<int32_t>();
  const int32_t* seg = rows.segments.data<int32_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      LMT_CHECK(pos[b * T + t] >= 0, "[model] packed row ", b, ": position ", pos[b * T + t], " at token ", t);
      LMT_CHECK(t == 0 || seg[b * T + t] >= seg[b * T + t - 1], "[model] packed row ", b, ": segment id ",
                seg[b * T + t], " at token ", t, " after ", seg[b * T + t - 1], " (must not decrease)");
    }
}

bool Model::forward_hidden(const Tensor&, Tensor&, nn::Linear&, const PackedRows*) { return false; }

Tensor Model::loss(const Tensor& ids, const Tensor& targets, const PackedRows* rows) {
  LMT_CHECK(targets.shape() == ids.shape(), "[loss] targets ", targets.describe(), " for ids ", ids.describe());
  const RuntimeConfig& rc = runtime_config();
  Tensor hidden;
  nn::Linear head;
  if (rc.fused_xent && forward_hidden(ids, hidden, head, rows)) {
    ag::HeadWeight w{head.weight, head.scales, head.biases, head.format, head.dense_dtype};
    Tensor flat = ag::reshape(hidden, {ids.numel(), hidden.dim(-1)});
    return ag::linear_cross_entropy(flat, w, targets.reshape({ids.numel()}), rc.xent_chunk_rows);
  }
  Tensor logits = rows ? forward(ids, *rows) : forward(ids);
  Tensor flat = ag::reshape(logits, {ids.numel(), cfg_.n_vocab});
  return ag::cross_entropy(flat, targets.reshape({ids.numel()}));
}

void Model::set_weights(std::map<std::string, Tensor> weights) {
  for (const TensorSpec& s : tensor_specs()) {
    auto it = weights.find(s.name);
    LMT_CHECK(it != weights.end(), "[model] missing weight '", s.name, "' for ", cfg_.model_type);
    auto q = quantized_.find(layer_of(s.name));
    if (q == quantized_.end()) {
      LMT_CHECK(it->second.shape() == s.shape, "[model] weight '", s.name, "' has shape ",
                shape_str(it->second.shape()), ", expected ", shape_str(s.shape));
      continue;
    }
    // A packed weight: (out, in * bits / 32) u32 beside its scales (and biases for affine).
    const std::string& layer = q->first;
    const LayerQuant& f = q->second;
    LMT_CHECK(weights.count(layer + ".scales"), "[model] quantized layer '", layer, "' has no '", layer, ".scales'");
    LMT_CHECK(weights.count(layer + ".biases") == (f.has_biases() ? 1u : 0u), "[model] ", quant_mode_name(f.mode),
              "-quantized layer '", layer, "' ", f.has_biases() ? "has no" : "must not have", " '", layer, ".biases'");
    const Tensor& wq = it->second;
    const int bits = f.bits;
    LMT_CHECK(s.shape.size() == 2 && wq.ndim() == 2 && wq.dtype() == DType::u32 && wq.dim(0) == s.shape[0] &&
                  wq.dim(1) * 32 == s.shape[1] * bits,
              "[model] quantized weight '", s.name, "' is ", wq.describe(), "; a ", bits, "-bit packing of ",
              shape_str(s.shape), " is u32 (", s.shape[0], ", ", s.shape.size() == 2 ? s.shape[1] * bits / 32 : 0, ")");
  }
  weights_ = std::move(weights);
  bound_ = false;
  on_weights_set();
}

const Tensor& Model::weight(const std::string& name) const {
  auto it = weights_.find(name);
  LMT_CHECK(it != weights_.end(), "[model] no weight named '", name, "'");
  return it->second;
}

Tensor Model::dense_weight(const std::string& name) const {
  auto q = quantized_.find(layer_of(name));
  if (q == quantized_.end()) return weight(name);
  const std::string& layer = q->first;
  const Tensor biases = q->second.has_biases() ? weight(layer + ".biases") : Tensor();
  return ops::dequantize(weight(name), weight(layer + ".scales"), biases, q->second, dtype(), layer);
}

void Model::use_masters() {
  for (auto& [name, m] : masters_)
    if (!m.storage()->released()) use_master(name);
}

void Model::use_master(const std::string& name) {
  Tensor& w = weights_.at(name);
  w = ag::cast(masters_.at(name), w.dtype());
}

void Model::bake_masters() {
  for (auto& [name, m] : masters_) {
    Tensor& w = weights_.at(name);
    w = ops::cast(m.detach(), w.dtype());
  }
  masters_.clear();
}

Device Model::device() const { return weights_.empty() ? Device::cpu : weights_.begin()->second.device(); }

DType Model::dtype() const {
  for (const auto& [name, w] : weights_)  // packed quantized weights are u32: the first float one
    if (is_float(w.dtype())) return w.dtype();
  return DType::f32;
}

std::unique_ptr<Model> create_model(const ModelConfig& cfg) {
  return model_family(cfg.model_type, "[create_model]").build(cfg);
}

namespace {

// Which layers of the checkpoint are quantized, and how, as mlx-lm's load_model decides it: the
// layer's own entry in config "quantization" if there is one, else whether the file has
// "<layer>.scales", with bits and group size read off the tensors' shapes and the mode off the
// scales' dtype (as mlx-lm's infer_quant_config: float scales are affine; u8 scales are nvfp4 at
// 4 bits in groups of 16, mxfp4 at 4 bits in 32, mxfp8 at 8 bits in 32, and nothing else).
std::map<std::string, LayerQuant> quantized_layers(const std::string& dir, const ModelConfig& cfg,
                                                   const std::vector<TensorSpec>& specs,
                                                   const SafetensorsModel& files) {
  std::map<std::string, LayerQuant> out;
  for (const TensorSpec& s : specs) {
    const std::string layer = layer_of(s.name);
    if (layer.empty() || s.shape.size() != 2) continue;  // norms are never quantized
    const bool has_scales = files.contains(layer + ".scales");
    std::optional<LayerQuant> q;
    auto entry = cfg.quantization.layers.find(layer);
    // mlx-lm names an expert's entry by its stacked layer (models/checkpoint_layout.h).
    if (const std::string stacked = stacked_expert_path(cfg, layer);
        entry == cfg.quantization.layers.end() && !stacked.empty())
      entry = cfg.quantization.layers.find(stacked);
    if (entry != cfg.quantization.layers.end()) {
      q = entry->second;
      LMT_CHECK(!q || has_scales, "[load_model] ", dir, ": config.json's quantization names layer '", layer,
                "' as quantized, but the checkpoint has no tensor '", layer, ".scales'");
    } else if (has_scales) {
      LMT_CHECK(cfg.quantization.present, "[load_model] ", dir, ": the checkpoint has '", layer,
                ".scales' but config.json has no \"quantization\"");
      Tensor sc = files.get(layer + ".scales"), wq = files.get(s.name);
      LMT_CHECK(wq.ndim() == 2 && wq.dim(1) * 32 % s.shape[1] == 0, "[load_model] ", dir, ": quantized weight '",
                s.name, "' is ", wq.describe(), ": its rows of ", wq.ndim() == 2 ? wq.dim(1) * 32 : 0,
                " bits are not a whole number of bits for each of the ", s.shape[1],
                " inputs of the layer (a truncated or mismatched tensor)");
      LMT_CHECK(sc.ndim() == 2 && sc.dim(1) > 0 && s.shape[1] % sc.dim(1) == 0 && wq.ndim() == 2, "[load_model] ", dir,
                ": '", layer, ".scales' has shape ", shape_str(sc.shape()), ", which does not divide the ", s.shape[1],
                " inputs of '", layer, "' into groups");
      const int bits = int(wq.dim(1) * 32 / s.shape[1]), group_size = int(s.shape[1] / sc.dim(1));
      QuantMode mode = QuantMode::affine;
      if (sc.dtype() == DType::u8) {
        if (bits == 4 && group_size == 16)
          mode = QuantMode::nvfp4;
        else if (bits == 4 && group_size == 32)
          mode = QuantMode::mxfp4;
        else if (bits == 8 && group_size == 32)
          mode = QuantMode::mxfp8;
        else
          fail("[load_model] ", dir, ": cannot infer the quantization mode of '", layer, "': u8 scales ('", layer,
               ".scales') with ", bits, " bits in groups of ", group_size,
               " are none of nvfp4 (4 bits, 16), mxfp4 (4, 32) or mxfp8 (8, 32)");
      }
      q = LayerQuant{mode, bits, group_size};
    }
    if (!q) continue;
    const std::string error = quant_format_error(*q, s.shape[1]);
    LMT_CHECK(error.empty(), "[load_model] ", dir, ": layer '", layer, "': ", error);
    out[layer] = *q;
  }
  return out;
}

// Tensors of the checkpoint that no parameter of the model reads. mlx-lm's Model.sanitize drops
// rotary_emb.inv_freq and, with tied embeddings, lm_head.weight; its strict load_weights refuses
// anything else, and so does lmtune: a leftover tensor means the config does not describe the file.
void check_no_unused_tensors(const std::string& dir, const ModelConfig& cfg, const std::vector<TensorSpec>& specs,
                             const std::map<std::string, LayerQuant>& quantized, const SafetensorsModel& files) {
  std::set<std::string> used;
  for (const TensorSpec& s : specs) used.insert(s.name);
  for (const auto& [layer, q] : quantized) {
    used.insert(layer + ".scales");
    if (q.has_biases()) used.insert(layer + ".biases");
  }
  std::vector<std::string> extra;
  for (const std::string& n : files.names()) {
    if (used.count(n) || n.find("self_attn.rotary_emb.inv_freq") != std::string::npos) continue;
    if (n == "lm_head.weight" && cfg.tie_word_embeddings) continue;
    extra.push_back(n);
  }
  if (extra.empty()) return;
  std::string list;
  for (size_t i = 0; i < extra.size() && i < 8; ++i) list += (i ? ", " : "") + extra[i];
  if (extra.size() > 8) list += str_cat(", ... (", extra.size() - 8, " more)");
  fail("[load_model] ", dir, ": ", extra.size(), " tensor", extra.size() > 1 ? "s are" : " is",
       " not a parameter of a ", cfg.model_type, " model with this config.json (", cfg.n_layer,
       " layers; mlx-lm's strict loading refuses them too): ", list);
}

}  // namespace

std::map<std::string, LayerQuant> check_checkpoint(const std::string& dir, const ModelConfig& cfg,
                                                   const std::vector<TensorSpec>& specs,
                                                   const SafetensorsModel& files) {
  const std::map<std::string, LayerQuant> quantized = quantized_layers(dir, cfg, specs, files);
  for (const auto& [layer, q] : quantized) {
    const char* mode = quant_mode_name(q.mode);
    Tensor wq = files.get(layer + ".weight");
    LMT_CHECK(wq.dtype() == DType::u32, "[load_model] ", dir, ": quantized weight '", layer, ".weight' has dtype ",
              dtype_name(wq.dtype()), ", expected u32");
    Tensor scales = files.get(layer + ".scales"), biases;
    if (q.has_biases()) {
      LMT_CHECK(files.contains(layer + ".biases"), "[load_model] ", dir, ": affine-quantized layer '", layer,
                "' has no tensor '", layer, ".biases'");
      for (const char* part : {".scales", ".biases"}) {
        const DType dt = files.get(layer + part).dtype();
        LMT_CHECK(is_float(dt), "[load_model] ", dir, ": '", layer, part, "' has dtype ", dtype_name(dt),
                  ", expected a float dtype (affine quantization)");
      }
      biases = files.get(layer + ".biases");
    } else {  // mxfp4 / nvfp4 / mxfp8: u8 scales kept as they are, and no biases
      LMT_CHECK(!files.contains(layer + ".biases"), "[load_model] ", dir, ": layer '", layer, "' is ", mode,
                "-quantized, which has no biases, but the checkpoint has '", layer, ".biases'");
      LMT_CHECK(scales.dtype() == DType::u8, "[load_model] ", dir, ": '", layer, ".scales' has dtype ",
                dtype_name(scales.dtype()), ", expected u8 (", mode, " scales)");
    }
    ops::check_quantized(wq, scales, biases, q, layer);
  }
  for (const TensorSpec& s : specs) {
    if (quantized.count(layer_of(s.name))) continue;
    LMT_CHECK(files.contains(s.name), "[load_model] ", dir, ": the checkpoint has no tensor '", s.name, "'");
    const SafetensorsInfo& t = files.info(s.name);
    LMT_CHECK(t.shape == s.shape, "[load_model] ", dir, ": tensor '", s.name, "' has shape ", shape_str(t.shape),
              ", the config implies ", shape_str(s.shape));
    if (!t.supported) (void)files.get(s.name);  // the reader's own error names the dtype it does not read
    LMT_CHECK(is_float(t.dtype), "[load_model] ", dir, ": tensor '", s.name, "' has dtype ", dtype_name(t.dtype),
              "; a packed weight needs \"quantization\" in config.json and its '.scales' tensor");
  }
  check_no_unused_tensors(dir, cfg, specs, quantized, files);
  return quantized;
}

std::unique_ptr<Model> load_model(const std::string& dir, Device device, DType dtype) {
  ModelConfig cfg = ModelConfig::load(dir);
  auto model = create_model(cfg);
  SafetensorsModel files(dir);
  read_checkpoint_layout(cfg, files);
  if (device == Device::cpu) dtype = DType::f32;
  const std::vector<TensorSpec> specs = model->tensor_specs();
  const std::map<std::string, LayerQuant> quantized = check_checkpoint(dir, cfg, specs, files);
  std::map<std::string, Tensor> w;
  for (const auto& [layer, q] : quantized) {
    w[layer + ".weight"] = ops::to(files.get(layer + ".weight"), device);
    if (q.has_biases()) {
      for (const char* part : {".scales", ".biases"}) w[layer + part] = ops::to(files.get(layer + part), device, dtype);
    } else {
      w[layer + ".scales"] = ops::to(files.get(layer + ".scales"), device);
    }
  }
  model->set_quantized(quantized);
  for (const TensorSpec& s : specs)
    if (!quantized.count(layer_of(s.name))) w[s.name] = ops::to(files.get(s.name), device, dtype);
  model->set_weights(std::move(w));
  return model;
}

}  // namespace lmtune
