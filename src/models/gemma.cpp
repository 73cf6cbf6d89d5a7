// Gemma's config fields (model_type gemma): the llama block with RMS norms that scale by (1 + w),
// embeddings multiplied by sqrt(hidden_size), a GeGLU MLP (gelu, tanh approximation) and tied
// embeddings unless the file says otherwise.
#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "models/config.h"

namespace lmtune {

// hidden_activation (the newer key) or hidden_act: "gelu_pytorch_tanh", or the legacy "gelu" of
// the released files, which transformers reads as the tanh approximation too (mlx-lm's gemma takes
// the exact erf gelu there, a small difference from the checkpoints' own definition).
void parse_gemma_activation(const ConfigReader& r, ModelConfig& c) {
  const char* key =
      r.has("hidden_activation") && !r.j.at("hidden_activation").is_null() ? "hidden_activation" : "hidden_act";
  const std::string act = r.str_or(key, "gelu_pytorch_tanh");
  LMT_CHECK(act == "gelu_pytorch_tanh" || act == "gelu", "[config] ", r.src, ": ", key, " '", act,
            "' is not supported for ", c.model_type, " (expected gelu_pytorch_tanh)");
  c.activation = nn::Activation::gelu_tanh;
}

void parse_gemma(const ConfigReader& r, ModelConfig& c) {
  c.norm_unit_offset = true;
  c.embed_scale = std::sqrt(double(c.n_embd));
  c.tie_word_embeddings = r.bool_or("tie_word_embeddings", true);
  c.attention_bias = r.bool_or("attention_bias", false);
  parse_gemma_activation(r, c);
}

// Gemma 2 and 3: gemma's fields, norms on the attention and MLP outputs too (sandwich), and queries
// scaled by query_pre_attn_scalar^-0.5 in place of head_dim's.
void parse_gemma_sandwich(const ConfigReader& r, ModelConfig& c) {
  parse_gemma(r, c);
  c.norm_layout = NormLayout::sandwich;
  const double scalar = r.num_or("query_pre_attn_scalar", 256.0);
  LMT_CHECK(std::isfinite(scalar) && scalar > 0, "[config] ", r.src, ": query_pre_attn_scalar must be positive, got ",
            scalar);
  c.attn_scale = 1.0 / std::sqrt(scalar);
}

}  // namespace lmtune
