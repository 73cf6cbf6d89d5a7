// Gemma 3's text model (model_type gemma3_text): gemma's (1 + w) norms, scaled embeddings and
// GeGLU, plus norms on the attention and MLP outputs (sandwich), q/k norms, queries scaled by
// query_pre_attn_scalar^-0.5, and a pattern of sliding layers (5 of every 6 by default) that rotate
// with their own base (rope_local_base_freq, 10,000) while the full layers take rope_theta
// (1,000,000) and any rope scaling.
#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "models/config.h"

namespace lmtune {

void parse_gemma_sandwich(const ConfigReader& r, ModelConfig& c);  // models/gemma.cpp

void parse_gemma3_text(const ConfigReader& r, ModelConfig& c) {
  parse_gemma_sandwich(r, c);
  c.qk_norm = true;
  c.attn_logit_softcap = r.num_or("attn_logit_softcapping", 0.0);
  c.final_logit_softcap = r.num_or("final_logit_softcapping", 0.0);
  LMT_CHECK(!r.bool_or("use_bidirectional_attention", false), "[config] ", r.src,
            ": use_bidirectional_attention is not supported (a decoder attends causally)");
  // Older files (no per-type rope_parameters): rope_theta for the full layers (gemma3's default
  // 1,000,000 when absent), rope_local_base_freq for the sliding ones.
  if (!c.rope_sliding) {
    if (!r.has("rope_theta") && !r.has("rope_parameters")) c.rope.theta = 1e6;
    RopeConfig local;
    local.theta = r.num_or("rope_local_base_freq", 10000.0);
    LMT_CHECK(std::isfinite(local.theta) && local.theta > 0, "[config] ", r.src,
              ": rope_local_base_freq must be positive, got ", local.theta);
    c.rope_sliding = local;
  }
  // Without layer_types: every sliding_window_pattern-th layer full, the others sliding.
  if (!r.has("layer_types")) {
    const int64_t pattern = r.int_or("sliding_window_pattern", 6), window = r.int_or("sliding_window", 4096);
    LMT_CHECK(pattern >= 1 && window >= 1, "[config] ", r.src, ": sliding_window_pattern ", pattern,
              " and sliding_window ", window, " must be positive");
    for (int64_t i = 0; i < c.n_layer; ++i) c.layer_window[size_t(i)] = (i + 1) % pattern != 0 ? window : 0;
  }
}

}  // namespace lmtune
