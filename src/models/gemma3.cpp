// Gemma 3's text model (model_type gemma3_text): gemma's (1 + w) norms, scaled embeddings and
// GeGLU, plus norms on the attention and MLP outputs (sandwich), q/k norms, queries scaled by
// query_pre_attn_scalar^-0.5, and a pattern of sliding layers (5 of every 6 by default) that rotate
// with their own base (rope_local_base_freq, 10,000) while the full layers take rope_theta
// (1,000,000) and any rope scaling. Also the text tower of a multimodal gemma3 checkpoint.
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

ModelConfig gemma3_text_tower(const nlohmann::json& j, const std::string& src) {
  LMT_CHECK(j.contains("text_config") && j["text_config"].is_object(), "[config] ", src,
            ": a gemma3 config needs a text_config object (its language model)");
  nlohmann::json t = j["text_config"];
  if (!t.contains("vocab_size") && j.contains("vocab_size")) t["vocab_size"] = j["vocab_size"];
  // The Hub's multimodal files give only what differs from transformers' Gemma3TextConfig defaults
  // (Gemma 3 4B: hidden size, layers, intermediate size, window, rope scaling); these are they.
  const nlohmann::json defaults = {{"vocab_size", 262208},
                                   {"hidden_size", 2304},
                                   {"intermediate_size", 9216},
                                   {"num_hidden_layers", 26},
                                   {"num_attention_heads", 8},
                                   {"num_key_value_heads", 4},
                                   {"head_dim", 256},
                                   {"hidden_activation", "gelu_pytorch_tanh"},
                                   {"max_position_embeddings", 131072},
                                   {"rms_norm_eps", 1e-6},
                                   {"query_pre_attn_scalar", 256},
                                   {"sliding_window", 4096},
                                   {"rope_local_base_freq", 10000.0},
                                   {"tie_word_embeddings", true}};
  for (auto it = defaults.begin(); it != defaults.end(); ++it)
    if (!t.contains(it.key()) || t[it.key()].is_null()) t[it.key()] = it.value();
  t["model_type"] = "gemma3_text";
  for (const char* k : {"torch_dtype", "dtype", "quantization_config"})
    if (!t.contains(k) && j.contains(k)) t[k] = j[k];
  // mlx-lm keeps "quantization" at the top level, its per-layer entries named from the checkpoint's
  // root ("language_model.model.layers.0.mlp.down_proj"): lmtune's names drop the prefix.
  const std::string prefix = "language_model.";
  if (j.contains("quantization") && j["quantization"].is_object()) {
    nlohmann::json q = nlohmann::json::object();
    for (auto it = j["quantization"].begin(); it != j["quantization"].end(); ++it)
      q[it.key().rfind(prefix, 0) == 0 ? it.key().substr(prefix.size()) : it.key()] = it.value();
    t["quantization"] = q;
  } else if (j.contains("quantization")) {
    t["quantization"] = j["quantization"];
  }
  ModelConfig c = ModelConfig::from_json_text(t.dump(), src);
  c.checkpoint_prefix = prefix;
  return c;
}

}  // namespace lmtune
