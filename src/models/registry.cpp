#include "models/registry.h"

#include "core/error.h"
#include "models/decoder.h"

namespace lmtune {

// Each family file defines its parser; DecoderModel builds every dense family so far.
void parse_llama(const ConfigReader& r, ModelConfig& c);        // models/llama.cpp
void parse_mistral(const ConfigReader& r, ModelConfig& c);      // models/llama.cpp
void parse_qwen2(const ConfigReader& r, ModelConfig& c);        // models/qwen2.cpp
void parse_qwen3(const ConfigReader& r, ModelConfig& c);        // models/qwen3.cpp
void parse_gemma(const ConfigReader& r, ModelConfig& c);        // models/gemma.cpp
void parse_gemma2(const ConfigReader& r, ModelConfig& c);       // models/gemma2.cpp
void parse_gemma3_text(const ConfigReader& r, ModelConfig& c);  // models/gemma3.cpp
void parse_smollm3(const ConfigReader& r, ModelConfig& c);      // models/smollm3.cpp
void parse_granite(const ConfigReader& r, ModelConfig& c);      // models/granite.cpp
void parse_olmo2(const ConfigReader& r, ModelConfig& c);        // models/olmo2.cpp
void parse_phi3(const ConfigReader& r, ModelConfig& c);         // models/phi3.cpp
void parse_mixtral(const ConfigReader& r, ModelConfig& c);      // models/moe.cpp
void parse_qwen3_moe(const ConfigReader& r, ModelConfig& c);    // models/moe.cpp

const std::vector<ModelFamily>& model_families() {
  static const std::vector<ModelFamily> kFamilies = {
      {"llama", parse_llama, build_decoder, {"llama_gqa", "llama_tied_llama3rope_bias", "llama_headdim_linearrope"}},
      {"mistral", parse_mistral, build_decoder, {"mistral_window"}},
      {"qwen2", parse_qwen2, build_decoder, {"qwen2_bias_tied", "qwen2_sliding"}},
      {"qwen3", parse_qwen3, build_decoder, {"qwen3_qknorm", "qwen3_tied_bias_sliding"}},
      {"gemma", parse_gemma, build_decoder, {"gemma_mqa", "gemma_untied_gqa"}},
      {"gemma2", parse_gemma2, build_decoder, {"gemma2_softcaps", "gemma2_untied_nocap", "gemma2_wide_window"}},
      {"gemma3_text", parse_gemma3_text, build_decoder, {"gemma3_sliding", "gemma3_untied_scaled"}},
      {"smollm3", parse_smollm3, build_decoder, {"smollm3_nope", "smollm3_untied_bias"}},
      {"granite", parse_granite, build_decoder, {"granite_multipliers"}},
      {"olmo2", parse_olmo2, build_decoder, {"olmo2_postnorm", "olmo2_mha_bias"}},
      {"phi3",
       parse_phi3,
       build_decoder,
       {"phi3_fused", "phi3_window_tied", "phi3_longrope_short", "phi3_longrope_long", "phi3_partial_longrope",
        "phi3_partial_half"}},
      {"mixtral", parse_mixtral, build_decoder, {"mixtral_top2"}},
      {"qwen3_moe", parse_qwen3_moe, build_decoder, {"qwen3_moe_norm", "qwen3_moe_dense_layer"}},
  };
  return kFamilies;
}

const ModelFamily& model_family(const std::string& model_type, const std::string& source) {
  std::string names;
  for (const ModelFamily& f : model_families()) {
    if (model_type == f.model_type) return f;
    names += std::string(names.empty() ? "" : ", ") + f.model_type;
  }
  fail("[config] ", source, ": model_type '", model_type, "' is not supported (supported: ", names, ")");
}

}  // namespace lmtune
