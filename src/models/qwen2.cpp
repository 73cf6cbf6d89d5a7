// Qwen2's config fields: q/k/v biases, and sliding attention from max_window_layers on when
// use_sliding_window is set (older files; transformers 5's layer_types wins when present).
#include <nlohmann/json.hpp>

#include "models/config.h"

namespace lmtune {

// Shared with qwen3, which keeps qwen2's sliding-window keys.
void parse_qwen_sliding(const ConfigReader& r, ModelConfig& c) {
  int64_t window = r.int_or("sliding_window", 0);
  if (r.has("layer_types") || !r.bool_or("use_sliding_window", false) || window <= 0) return;
  int64_t from = r.int_or("max_window_layers", c.n_layer);
  for (int64_t i = std::max<int64_t>(0, from); i < c.n_layer; ++i) c.layer_window[size_t(i)] = window;
}

void parse_qwen2(const ConfigReader& r, ModelConfig& c) {
  c.qkv_bias = true;
  parse_qwen_sliding(r, c);
}

}  // namespace lmtune
