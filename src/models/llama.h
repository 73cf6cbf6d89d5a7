// The Llama family (model_type llama, mistral, qwen2): pre-norm decoder blocks with
// grouped-query attention, rotary positions, SwiGLU MLP; qkv bias for qwen2, sliding
// windows for mistral and qwen2, tied or untied embeddings.
#pragma once
#include "models/model.h"
#include "nn/linear.h"

namespace lmtune {

class LlamaModel final : public Model {
 public:
  explicit LlamaModel(ModelConfig cfg) : Model(std::move(cfg)) {}
  std::vector<TensorSpec> tensor_specs() const override;
  Tensor forward(const Tensor& ids, int64_t pos_offset = 0) override;

 private:
  void on_weights_set() override;
  Tensor block(int64_t layer, const Tensor& x, int64_t pos_offset);
  nn::Linear linear(const std::string& prefix) const;
  Tensor inv_freq_;  // f32 (head_dim / 2) on the weights' device
};

}  // namespace lmtune
