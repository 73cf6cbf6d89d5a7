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
  // transformers: the first int(head_dim * factor) dimensions of each head rotate, the rest pass.
  LMT_CHECK(partial > 0 && partial <= 1, "[config] ", r.src, ": partial_rotary_factor ", partial, " must be in (0, 1]");
  c.rotary_dim = int64_t(double(c.head_dim) * partial);
  LMT_CHECK(c.rotary_dim >= 2 && c.rotary_dim % 2 == 0, "[config] ", r.src, ": partial_rotary_factor ", partial,
            " of head_dim ", c.head_dim, " rotates ", c.rotary_dim, " dimensions; an even number >= 2 is needed");
  const int64_t window = r.int_or("sliding_window", 0);
  if (!r.has("layer_types") && window > 0) c.layer_window.assign(size_t(c.n_layer), window);
}

}  // namespace lmtune
