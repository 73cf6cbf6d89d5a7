// Granite's config fields (model_type granite): the llama block with four multipliers: embeddings
// times embedding_multiplier, q.k times attention_multiplier (in place of 1 / sqrt(head_dim)),
// each block's attention and MLP outputs times residual_multiplier before their residual adds, and
// the logits divided by logits_scaling.
#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "models/config.h"

namespace lmtune {

void parse_granite(const ConfigReader& r, ModelConfig& c) {
  c.attention_bias = r.bool_or("attention_bias", false);
  c.mlp_bias = r.bool_or("mlp_bias", false);
  auto positive = [&](const char* key) {
    const double v = r.num_or(key, 1.0);
    LMT_CHECK(std::isfinite(v) && v > 0, "[config] ", r.src, ": ", key, " must be a positive number, got ", v);
    return v;
  };
  c.embed_scale = positive("embedding_multiplier");
  c.attn_scale = positive("attention_multiplier");
  c.residual_scale = positive("residual_multiplier");
  c.logit_scale = 1.0 / positive("logits_scaling");
}

}  // namespace lmtune
