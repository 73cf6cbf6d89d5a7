// Phi-3's config fields (model_type phi3): the llama block with one fused q/k/v projection
// (self_attn.qkv_proj) and one fused gate/up projection (mlp.gate_up_proj, gate's rows first), LoRA
// on the fused layers as mlx-lm puts it there, and transformers' sliding window on every layer when
// the file sets one (Phi-3-mini-4k: 2047); longrope scaling (Phi-3.5, the 128k models) is read by
// models/config.cpp. Not yet: a partial rotary factor (Phi-4-mini's 0.75; refused here).
#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "models/config.h"

namespace lmtune {

void parse_phi3(const ConfigReader& r, ModelConfig& c) {
  c.fused_qkv = true;
  c.fused_gate_up = true;
  c.attention_bias = r.bool_or("attention_bias", false);
  double partial = r.num_or("partial_rotary_factor", 1.0);
  if (r.has("rope_parameters") && r.j.at("rope_parameters").is_object())
    partial = ConfigReader{r.j.at("rope_parameters"), r.src}.num_or("partial_rotary_factor", partial);
  LMT_CHECK(partial == 1.0, "[config] ", r.src, ": partial_rotary_factor ", partial,
            " is not supported yet for phi3 (rotary positions on every head dimension only)");
  const int64_t window = r.int_or("sliding_window", 0);
  if (!r.has("layer_types") && window > 0) c.layer_window.assign(size_t(c.n_layer), window);
}

}  // namespace lmtune
