// Gemma 2's config fields (model_type gemma2): gemma's (1 + w) norms, scaled embeddings and
// GeGLU, norms on the attention and MLP outputs too (sandwich), queries scaled by
// query_pre_attn_scalar^-0.5, tanh soft-caps on the attention scores and on the logits, and
// sliding layers (window sliding_window) alternating with full ones, the first sliding. The score
// soft-cap runs on the CPU backend only for now (CUDA refuses it by name).
#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "models/config.h"

namespace lmtune {

void parse_gemma_sandwich(const ConfigReader& r, ModelConfig& c);  // models/gemma.cpp

void parse_gemma2(const ConfigReader& r, ModelConfig& c) {
  parse_gemma_sandwich(r, c);
  auto cap = [&](const char* key, double dflt) {  // null: no cap
    if (r.j.contains(key) && r.j.at(key).is_null()) return 0.0;
    const double v = r.num_or(key, dflt);
    LMT_CHECK(std::isfinite(v) && v >= 0, "[config] ", r.src, ": ", key, " must be a positive number or null, got ", v);
    return v;
  };
  c.attn_logit_softcap = cap("attn_logit_softcapping", 50.0);
  c.final_logit_softcap = cap("final_logit_softcapping", 30.0);
  // Without layer_types: even layers slide, odd ones attend fully.
  if (!r.has("layer_types")) {
    const int64_t window = r.int_or("sliding_window", 4096);
    LMT_CHECK(window >= 1, "[config] ", r.src, ": sliding_window must be positive, got ", window);
    for (int64_t i = 0; i < c.n_layer; ++i) c.layer_window[size_t(i)] = i % 2 == 0 ? window : 0;
  }
}

}  // namespace lmtune
