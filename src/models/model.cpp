#include "models/model.h"

#include "autograd/functions.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "models/registry.h"
#include "ops/ops.h"

namespace lmtune {

Tensor Model::loss(const Tensor& ids, const Tensor& targets) {
  Tensor logits = forward(ids);
  LMT_CHECK(targets.shape() == ids.shape(), "[loss] targets ", targets.describe(), " for ids ", ids.describe());
  Tensor flat = ag::reshape(logits, {ids.numel(), cfg_.n_vocab});
  return ag::cross_entropy(flat, targets.reshape({ids.numel()}));
}

void Model::set_weights(std::map<std::string, Tensor> weights) {
  for (const TensorSpec& s : tensor_specs()) {
    auto it = weights.find(s.name);
    LMT_CHECK(it != weights.end(), "[model] missing weight '", s.name, "' for ", cfg_.model_type);
    LMT_CHECK(it->second.shape() == s.shape, "[model] weight '", s.name, "' has shape ", shape_str(it->second.shape()),
              ", expected ", shape_str(s.shape));
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

void Model::use_masters() {
  for (auto& [name, m] : masters_) {
    Tensor& w = weights_.at(name);
    w = ag::cast(m, w.dtype());
  }
}

void Model::bake_masters() {
  for (auto& [name, m] : masters_) {
    Tensor& w = weights_.at(name);
    w = ops::cast(m.detach(), w.dtype());
  }
  masters_.clear();
}

Device Model::device() const { return weights_.empty() ? Device::cpu : weights_.begin()->second.device(); }
DType Model::dtype() const { return weights_.empty() ? DType::f32 : weights_.begin()->second.dtype(); }

std::unique_ptr<Model> create_model(const ModelConfig& cfg) {
  return model_family(cfg.model_type, "[create_model]").build(cfg);
}

std::unique_ptr<Model> load_model(const std::string& dir, Device device, DType dtype) {
  ModelConfig cfg = ModelConfig::load(dir);
  auto model = create_model(cfg);
  SafetensorsModel files(dir);
  if (device == Device::cpu) dtype = DType::f32;
  std::map<std::string, Tensor> w;
  for (const TensorSpec& s : model->tensor_specs()) {
    LMT_CHECK(files.contains(s.name), "[load_model] ", dir, ": the checkpoint has no tensor '", s.name, "'");
    Tensor t = files.get(s.name);
    LMT_CHECK(t.shape() == s.shape, "[load_model] ", dir, ": tensor '", s.name, "' has shape ", shape_str(t.shape()),
              ", the config implies ", shape_str(s.shape));
    LMT_CHECK(is_float(t.dtype()), "[load_model] ", dir, ": tensor '", s.name, "' has dtype ", dtype_name(t.dtype()),
              "; quantized checkpoints are not supported yet");
    w[s.name] = ops::to(t, device, dtype);
  }
  model->set_weights(std::move(w));
  return model;
}

}  // namespace lmtune
