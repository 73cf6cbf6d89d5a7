// The Llama family's config fields (model_type llama and mistral): pre-norm blocks, GQA, SwiGLU;
// llama's optional attention and MLP biases, mistral's sliding window on every layer.
#include <nlohmann/json.hpp>

#include "models/config.h"

namespace lmtune {

void parse_llama(const ConfigReader& r, ModelConfig& c) {
  c.attention_bias = r.bool_or("attention_bias", false);
  c.mlp_bias = r.bool_or("mlp_bias", false);
}

void parse_mistral(const ConfigReader& r, ModelConfig& c) {
  int64_t window = r.int_or("sliding_window", 0);
  if (!r.has("layer_types") && window > 0) c.layer_window.assign(size_t(c.n_layer), window);
}

}  // namespace lmtune
