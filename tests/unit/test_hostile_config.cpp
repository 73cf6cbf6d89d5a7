// Hostile config.json and tokenizer.json values fail at parse time with the file and the field
// named, before anything is sized from them (no std::bad_alloc, no climb through memory).
#include <gtest/gtest.h>

#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "models/config.h"
#include "tokenizer/tokenizer.h"

namespace lmtune {
namespace {

const char kBase[] = R"({"model_type": "llama", "vocab_size": 2048, "hidden_size": 256, "intermediate_size": 768,
  "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
  "max_position_embeddings": 512, "rms_norm_eps": 1e-05, "rope_theta": 10000.0})";

// The base config as `model_type` with `extra` (a JSON object) merged in, parsed: the error or "<no error>".
std::string family_error(const std::string& model_type, const std::string& extra) {
  nlohmann::json j = nlohmann::json::parse(kBase);
  j["model_type"] = model_type;
  const nlohmann::json more = nlohmann::json::parse(extra);
  for (const auto& [k, v] : more.items()) j[k] = v;
  try {
    ModelConfig::from_json_text(j.dump(), "/m/config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

// The base (llama) config with `key` set to `value` (a JSON literal), parsed.
std::string config_error(const std::string& key, const std::string& value) {
  nlohmann::json one;
  one[key] = nlohmann::json::parse(value);
  return family_error("llama", one.dump());
}

#define EXPECT_CONFIG_ERROR(key, value)                                     \
  do {                                                                      \
    std::string m_ = config_error(key, value);                              \
    EXPECT_NE(m_.find("[config] /m/config.json"), std::string::npos) << m_; \
    EXPECT_NE(m_.find(key), std::string::npos) << m_;                       \
  } while (0)

TEST(HostileConfig, BaseParses) { EXPECT_EQ(config_error("vocab_size", "2048"), "<no error>"); }

TEST(HostileConfig, SizesBeyondAnyModel) {
  EXPECT_CONFIG_ERROR("num_hidden_layers", "1000000000");
  EXPECT_CONFIG_ERROR("vocab_size", "1000000000000");
  EXPECT_CONFIG_ERROR("hidden_size", "1000000000");
  EXPECT_CONFIG_ERROR("intermediate_size", "1000000000000");
  EXPECT_CONFIG_ERROR("num_attention_heads", "100000");
  EXPECT_CONFIG_ERROR("max_position_embeddings", "-5");
  EXPECT_CONFIG_ERROR("max_position_embeddings", "100000000000000");
  // real large models still parse
  EXPECT_EQ(config_error("vocab_size", "262144"), "<no error>");
  EXPECT_EQ(config_error("num_hidden_layers", "126"), "<no error>");
  EXPECT_EQ(config_error("max_position_embeddings", "10485760"), "<no error>");
}

TEST(HostileConfig, NormAndRopeConstants) {
  EXPECT_CONFIG_ERROR("rms_norm_eps", "-1e-5");
  EXPECT_CONFIG_ERROR("rms_norm_eps", "0");
  EXPECT_CONFIG_ERROR("rope_theta", "-10000.0");
  EXPECT_CONFIG_ERROR("rope_theta", "0");
  std::string m = config_error("rope_parameters", R"({"rope_type": "default", "rope_theta": -1.0})");
  EXPECT_NE(m.find("rope_theta"), std::string::npos) << m;
  EXPECT_EQ(config_error("rms_norm_eps", "1e-6"), "<no error>");
  EXPECT_EQ(config_error("rope_theta", "1000000.0"), "<no error>");
}

// The base config with both of these set (JSON literals), parsed; the error text or "<no error>".
std::string rope_error(const std::string& params, const std::string& scaling) {
  nlohmann::json j = nlohmann::json::parse(kBase);
  if (!params.empty()) j["rope_parameters"] = nlohmann::json::parse(params);
  if (!scaling.empty()) j["rope_scaling"] = nlohmann::json::parse(scaling);
  try {
    ModelConfig::from_json_text(j.dump(), "/m/config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

#define EXPECT_ROPE_ERROR(params, scaling, needle)                                    \
  do {                                                                                \
    std::string m_ = rope_error(params, scaling);                                     \
    EXPECT_NE(m_.find("[config] /m/config.json"), std::string::npos) << m_;           \
    EXPECT_NE(m_.find(needle), std::string::npos) << "want " << needle << ": " << m_; \
  } while (0)

TEST(HostileConfig, RopeScaling) {
  const std::string dflt = R"({"rope_type": "default", "rope_theta": 10000.0})";
  const std::string llama3 = R"({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
    "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})";
  EXPECT_EQ(rope_error(dflt, ""), "<no error>");
  EXPECT_EQ(rope_error(llama3, ""), "<no error>");
  EXPECT_EQ(rope_error("", llama3), "<no error>");
  EXPECT_EQ(rope_error(llama3, llama3), "<no error>");  // transformers 5 files may carry both
  // a scaling behind rope_parameters used to be ignored; mlx-lm reads rope_scaling
  EXPECT_ROPE_ERROR(dflt, R"({"type": "yarn", "factor": 4.0})", "rope_scaling type 'yarn' is not supported");
  EXPECT_ROPE_ERROR(dflt, R"({"rope_type": "linear", "factor": 4.0})", "but rope_scaling has 'linear'");
  EXPECT_ROPE_ERROR(R"({"rope_type": "dynamic", "factor": 4.0})", "", "rope_parameters type 'dynamic'");
  // each type's keys, as transformers' validation requires them
  for (const char* key : {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) {
    nlohmann::json p = nlohmann::json::parse(llama3);
    p.erase(key);
    EXPECT_ROPE_ERROR(p.dump(), "", std::string("of type 'llama3' needs '") + key + "'");
  }
  EXPECT_ROPE_ERROR(R"({"rope_type": "linear"})", "", "of type 'linear' needs 'factor'");
  EXPECT_ROPE_ERROR(R"({"rope_type": "linear", "factor": -2.0})", "", "'factor' must be a positive number");
  EXPECT_ROPE_ERROR(R"({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
    "original_max_position_embeddings": 8192})",
                    "", "0 < 'low_freq_factor' < 'high_freq_factor'");
  EXPECT_ROPE_ERROR("", R"({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": -1})",
                    "'original_max_position_embeddings' must be 1 to 2^30");
  EXPECT_ROPE_ERROR("[1, 2]", "", "field 'rope_parameters' must be an object");
}

#define EXPECT_FAMILY_ERROR(type, extra, field)                             \
  do {                                                                      \
    std::string m_ = family_error(type, extra);                             \
    EXPECT_NE(m_.find("[config] /m/config.json"), std::string::npos) << m_; \
    EXPECT_NE(m_.find(field), std::string::npos) << m_;                     \
  } while (0)

// The later families' own fields: each bad value is refused naming its field, before anything is
// sized from it.
TEST(HostileConfig, FamilyFields) {
  const std::string moe = R"({"num_local_experts": 8, "num_experts_per_tok": 2})";
  EXPECT_EQ(family_error("mixtral", moe), "<no error>");
  // A multimodal gemma3: its text model comes from text_config, checked as any config.
  EXPECT_FAMILY_ERROR("gemma3", R"({"text_config": null})", "text_config");
  EXPECT_FAMILY_ERROR("gemma3", R"({"text_config": {"num_hidden_layers": 100000}})", "num_hidden_layers");
  EXPECT_FAMILY_ERROR("gemma3", R"({"text_config": {"head_dim": 7}})", "head_dim");
  EXPECT_EQ(family_error("gemma3", R"({"text_config": {"hidden_size": 64}})"), "<no error>");
  EXPECT_FAMILY_ERROR("mixtral", R"({"num_local_experts": 8, "num_experts_per_tok": 9})", "num_experts_per_tok");
  EXPECT_FAMILY_ERROR("mixtral", R"({"num_local_experts": 100000000, "num_experts_per_tok": 2})", "num_local_experts");
  EXPECT_FAMILY_ERROR("mixtral", R"({"num_local_experts": 8})", "num_experts_per_tok");
  EXPECT_FAMILY_ERROR("mixtral", R"({"num_local_experts": 8, "num_experts_per_tok": 2, "router_jitter_noise": 0.1})",
                      "router_jitter_noise");
  const std::string q3 = R"({"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 64)";
  EXPECT_EQ(family_error("qwen3_moe", q3 + "}"), "<no error>");
  EXPECT_FAMILY_ERROR("qwen3_moe", q3 + R"(, "mlp_only_layers": [0, 7]})", "mlp_only_layers");
  EXPECT_FAMILY_ERROR("qwen3_moe", q3 + R"(, "mlp_only_layers": "all"})", "mlp_only_layers");
  EXPECT_FAMILY_ERROR("qwen3_moe", q3 + R"(, "decoder_sparse_step": 0})", "decoder_sparse_step");
  EXPECT_FAMILY_ERROR("qwen3_moe", R"({"num_experts": 8, "num_experts_per_tok": 2})", "moe_intermediate_size");
  EXPECT_FAMILY_ERROR("smollm3", R"({"no_rope_layers": [1, 0]})", "no_rope_layers");
  EXPECT_FAMILY_ERROR("smollm3", R"({"no_rope_layers": [1, 0, 2, 1]})", "no_rope_layers");
  EXPECT_FAMILY_ERROR("smollm3", R"({"no_rope_layer_interval": 0})", "no_rope_layer_interval");
  EXPECT_FAMILY_ERROR("granite", R"({"logits_scaling": 0})", "logits_scaling");
  EXPECT_FAMILY_ERROR("granite", R"({"residual_multiplier": -1})", "residual_multiplier");
  EXPECT_FAMILY_ERROR("gemma2", R"({"attn_logit_softcapping": -50})", "attn_logit_softcapping");
  EXPECT_FAMILY_ERROR("gemma2", R"({"query_pre_attn_scalar": 0})", "query_pre_attn_scalar");
  EXPECT_FAMILY_ERROR("gemma3_text", R"({"sliding_window_pattern": 0})", "sliding_window_pattern");
  EXPECT_FAMILY_ERROR("phi3", R"({"partial_rotary_factor": 1.5})", "partial_rotary_factor");
  EXPECT_FAMILY_ERROR("phi3", R"({"partial_rotary_factor": 0})", "partial_rotary_factor");
  EXPECT_FAMILY_ERROR("phi3", R"({"partial_rotary_factor": 0.01})", "partial_rotary_factor");  // rotates 0 dims
  const std::string longrope = R"({"original_max_position_embeddings": 64, "rope_scaling": {"type": "longrope", )";
  EXPECT_EQ(family_error("phi3", longrope + R"("short_factor": [1, 2], "long_factor": [3, 4]}})"), "<no error>");
  EXPECT_FAMILY_ERROR("phi3", longrope + R"("short_factor": [1, 2]}})", "long_factor");
  EXPECT_FAMILY_ERROR("phi3", longrope + R"("short_factor": [1, -2], "long_factor": [3, 4]}})", "short_factor");
  EXPECT_FAMILY_ERROR("phi3", R"({"rope_scaling": {"type": "su", "short_factor": [1], "long_factor": [1]}})",
                      "original_max_position_embeddings");
}

std::string tokenizer_error(const std::string& vocab, const std::string& added = "[]") {
  std::string tj = R"({"version": "1.0", "added_tokens": )" + added +
                   R"(, "model": {"type": "WordLevel", "unk_token": "a", "vocab": )" + vocab + "}}";
  try {
    Tokenizer::from_json(tj, "", "/m/tokenizer.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(HostileConfig, TokenizerIds) {
  EXPECT_EQ(tokenizer_error(R"({"a": 0, "b": 1})"), "<no error>");
  for (const char* id : {"1000000000", "1000000000000", "-1", "4294967296"}) {
    std::string m = tokenizer_error(std::string(R"({"a": 0, "b": )") + id + "}");
    EXPECT_NE(m.find("vocab id"), std::string::npos) << id << ": " << m;
    EXPECT_NE(m.find("/m/tokenizer.json"), std::string::npos) << id << ": " << m;
  }
  // two tokens with one id (the id table would keep the last, the string map both)
  std::string d = tokenizer_error(R"({"a": 0, "b": 1, "c": 1})");
  EXPECT_NE(d.find("vocab id 1 is given to two tokens, \"b\" and \"c\""), std::string::npos) << d;
  EXPECT_NE(d.find("/m/tokenizer.json"), std::string::npos) << d;
  std::string m = tokenizer_error(R"({"a": 0})", R"([{"id": 1000000000, "content": "<x>", "special": true}])");
  EXPECT_NE(m.find("added token <x> has id 1000000000"), std::string::npos) << m;
  EXPECT_NE(m.find("/m/tokenizer.json"), std::string::npos) << m;
}

}  // namespace
}  // namespace lmtune
