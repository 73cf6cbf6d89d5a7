// SmolLM3's config fields (model_type smollm3): the llama block, tied embeddings unless the file
// says otherwise, and layers without rotary positions (NoPE): no_rope_layers (1 = rotary, 0 =
// none), or without it every no_rope_layer_interval-th layer (4) without.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "models/config.h"

namespace lmtune {

void parse_smollm3(const ConfigReader& r, ModelConfig& c) {
  c.tie_word_embeddings = r.bool_or("tie_word_embeddings", true);
  c.attention_bias = r.bool_or("attention_bias", false);
  c.mlp_bias = r.bool_or("mlp_bias", false);
  if (r.has("no_rope_layers") && !r.j.at("no_rope_layers").is_null()) {
    const nlohmann::json& l = r.j.at("no_rope_layers");
    LMT_CHECK(l.is_array() && int64_t(l.size()) == c.n_layer, "[config] ", r.src,
              ": no_rope_layers must list one 0 or 1 for each of the ", c.n_layer, " layers, got ", l.dump());
    for (size_t i = 0; i < l.size(); ++i) {
      LMT_CHECK(l[i].is_number_integer() && (l[i] == 0 || l[i] == 1), "[config] ", r.src, ": no_rope_layers[", i,
                "] = ", l[i].dump(), " is not 0 or 1");
      c.layer_rope[i] = l[i] == 1;
    }
  } else {
    const int64_t every = r.int_or("no_rope_layer_interval", 4);
    LMT_CHECK(every >= 1, "[config] ", r.src, ": no_rope_layer_interval must be positive, got ", every);
    for (int64_t i = 0; i < c.n_layer; ++i) c.layer_rope[size_t(i)] = (i + 1) % every != 0;
  }
  // Older files without layer_types: with use_sliding_window, the layers without rope slide.
  const int64_t window = r.int_or("sliding_window", 0);
  if (!r.has("layer_types") && r.bool_or("use_sliding_window", false) && window > 0)
    for (int64_t i = 0; i < c.n_layer; ++i)
      if (!c.layer_rope[size_t(i)]) c.layer_window[size_t(i)] = window;
}

}  // namespace lmtune
