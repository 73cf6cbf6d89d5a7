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
  std::string m = tokenizer_error(R"({"a": 0})", R"([{"id": 1000000000, "content": "<x>", "special": true}])");
  EXPECT_NE(m.find("added token <x> has id 1000000000"), std::string::npos) << m;
  EXPECT_NE(m.find("/m/tokenizer.json"), std::string::npos) << m;
}

}  // namespace
}  // namespace lmtune
