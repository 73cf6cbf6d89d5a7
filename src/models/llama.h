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
  Tensor forward(const Tensor& ids, KVCache& cache, bool last_only = false) override;

 private:
  void on_weights_set() override;
  // cache null: attention over x's own keys at positions pos_offset + t.
  Tensor block(int64_t layer, const Tensor& x, int64_t pos_offset, KVCache* cache = nullptr);
  Tensor head(const Tensor& x);                               // final norm + lm_head
  Tensor forward_layers(const Tensor& ids, KVCache& cache);   // hidden states (B, T, n_embd)
  nn::Linear linear(const std::string& prefix) const;
  Tensor inv_freq_;  // f32 (head_dim / 2) on the weights' device
};

}  // namespace lmtune
