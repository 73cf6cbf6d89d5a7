// OLMo 2's config fields (model_type olmo2): norms on the attention's and the MLP's outputs only
// (post_attention_layernorm, post_feedforward_layernorm; no input norms), and RMS norms of q and k
// over all heads' features at once, before the heads are split and rotated.
#include <nlohmann/json.hpp>

#include "models/config.h"

namespace lmtune {

void parse_olmo2(const ConfigReader& r, ModelConfig& c) {
  c.norm_layout = NormLayout::post;
  c.qk_norm = true;
  c.qk_norm_whole = true;
  c.attention_bias = r.bool_or("attention_bias", false);
  if (!r.has("rms_norm_eps")) c.rms_norm_eps = 1e-5;  // Olmo2Config's default, not llama's
}

}  // namespace lmtune
