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

// The base config with `key` set to `value` (a JSON literal), parsed; the error text or "<no error>".
std::string config_error(const std::string& key, const std::string& value) {
  nlohmann::json j = nlohmann::json::parse(kBase);
  j[key] = nlohmann::json::parse(value);
  try {
    ModelConfig::from_json_text(j.dump(), "/m/config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
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
