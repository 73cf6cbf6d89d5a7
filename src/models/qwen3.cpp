// Qwen3's config fields: RMS norms of q and k over head_dim before rotary (q_norm, k_norm), no
// q/k/v bias unless attention_bias (then on q, k, v and o), qwen2's sliding-window keys.
#include <nlohmann/json.hpp>

#include "models/config.h"

namespace lmtune {

void parse_qwen_sliding(const ConfigReader& r, ModelConfig& c);  // models/qwen2.cpp

void parse_qwen3(const ConfigReader& r, ModelConfig& c) {
  c.qk_norm = true;
  c.attention_bias = r.bool_or("attention_bias", false);
  parse_qwen_sliding(r, c);
}

}  // namespace lmtune
