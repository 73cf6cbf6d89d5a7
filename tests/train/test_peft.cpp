// PEFT adapter configs read as lmtune adapters (peft's target_modules rules: list entries match a
// module name or its "."-suffix, a string is full-matched as a regex, "all-linear" is every block
// linear; layers_to_transform; rsLoRA's scale) and the export -> load round trip, on the 2-block
// llama_gqa golden model. The numerics against peft itself are tests/ref/peft_check.py's.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/safetensors.h"
#include "train/adapters.h"
#include "train/peft.h"

using namespace lmtune;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::unique_ptr<Model> golden() {
  const char* d = std::getenv("LMTUNE_LORA_GOLDEN_DIR");
  return load_model(std::string(d ? d : "") + "/llama_gqa", Device::cpu, DType::f32);
}

std::string write_config(const json& extra) {
  json c = {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"target_modules", {"q_proj", "v_proj"}}};
  for (auto& [k, v] : extra.items()) c[k] = v;
  std::string p = (fs::temp_directory_path() / ("lmtune_peft_cfg_" + std::to_string(getpid()) + ".json")).string();
  std::ofstream(p) << c.dump();
  return p;
}

train::AdapterConfig read(const Model& m, const json& extra) { return train::read_peft_config(m, write_config(extra)); }

void expect_refused(const Model& m, const json& extra, const std::string& needle) {
  try {
    read(m, extra);
    ADD_FAILURE() << "accepted " << extra.dump();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

using Keys = std::vector<std::string>;

}  // namespace

TEST(Peft, TargetModulesAsPeftMatchesThem) {
  auto m = golden();
  train::AdapterConfig c = read(*m, {});
  EXPECT_EQ(c.fine_tune_type, "lora");
  EXPECT_EQ(c.lora.rank, 4);
  EXPECT_EQ(c.lora.scale, 2.f);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.lora.keys, (Keys{"self_attn.q_proj", "self_attn.v_proj"}));
  // A suffix on a "." boundary: "self_attn.q_proj" and "q_proj" match, "_proj" and "proj" do not.
  EXPECT_EQ(read(*m, {{"target_modules", {"self_attn.q_proj", "_proj", "proj"}}}).lora.keys,
            (Keys{"self_attn.q_proj"}));
  EXPECT_EQ(read(*m, {{"target_modules", "all-linear"}}).lora.keys, train::block_linear_keys(*m));
  // A string is full-matched against the module name: "q_proj" alone names no module.
  expect_refused(*m, {{"target_modules", "q_proj"}}, "selects no linear layer");
  EXPECT_EQ(read(*m, {{"target_modules", R"(.*\.mlp\.(up|down)_proj)"}}).lora.keys,
            (Keys{"mlp.down_proj", "mlp.up_proj"}));
  expect_refused(*m, {{"target_modules", R"(.*\.1\.self_attn\.q_proj|.*v_proj)"}}, "other modules in block");
  expect_refused(*m, {{"target_modules", {"q_proj", "lm_head"}}}, "selects lm_head");
  expect_refused(*m, {{"target_modules", nullptr}}, "target_modules = null");
}

TEST(Peft, LayersScaleAndRefusals) {
  auto m = golden();
  train::AdapterConfig c = read(*m, {{"layers_to_transform", 1}, {"use_rslora", true}, {"lora_alpha", 6}});
  EXPECT_EQ(c.num_layers, 1);
  EXPECT_EQ(c.lora.scale, 3.f);  // 6 / sqrt(4)
  // With layers_to_transform peft keeps only block modules, so "lm_head" in the list selects nothing.
  EXPECT_EQ(read(*m, {{"layers_to_transform", {1}}, {"target_modules", {"q_proj", "lm_head"}}}).lora.keys,
            (Keys{"self_attn.q_proj"}));
  expect_refused(*m, {{"layers_to_transform", {0}}}, "lmtune adapts the last N blocks");
  expect_refused(*m, {{"layers_to_transform", {2}}}, "names layer 2 but the model has 2 layers");
  expect_refused(*m, {{"layers_pattern", "h"}}, "layers_pattern");
  expect_refused(*m, {{"peft_type", "IA3"}}, "peft_type");
  expect_refused(*m, {{"bias", "lora_only"}}, "bias");
  expect_refused(*m, {{"lora_bias", true}}, "lora_bias");
  expect_refused(*m, {{"r", 0}}, "r must be a positive integer");
  EXPECT_EQ(
      read(*m, {{"use_dora", true}, {"task_type", "CAUSAL_LM"}, {"init_lora_weights", "gaussian"}}).fine_tune_type,
      "dora");
}

TEST(Peft, ExportThenLoadGivesTheSameAdapters) {
  auto m = golden();
  train::AdapterConfig cfg;
  cfg.fine_tune_type = "dora";
  cfg.num_layers = 1;
  cfg.lora.rank = 4;
  cfg.lora.scale = 2.5f;
  cfg.lora.keys = {"mlp.up_proj", "self_attn.k_proj"};
  train::attach_adapters(*m, cfg, 5);
  uint64_t seed = 9;
  for (auto& [n, t] : train::trainable_parameters(*m)) {
    Tensor dst = t;
    ops::copy_into(dst, ops::randn(t.shape(), seed++, 0.3f));
  }
  std::string out = (fs::temp_directory_path() / ("lmtune_peft_export_" + std::to_string(getpid()))).string();
  fs::remove_all(out);
  train::export_peft(*m, cfg, "base/model", out);
  EXPECT_THROW(train::export_peft(*m, cfg, "base/model", out), Error);  // an existing save path
  for (const auto& e : fs::directory_iterator(out.substr(0, out.rfind('/'))))
    EXPECT_EQ(e.path().string().find(out + ".tmp."), std::string::npos) << e.path();
  json c = json::parse(std::ifstream(out + "/adapter_config.json"));
  EXPECT_EQ(c["r"], 4);
  EXPECT_EQ(c["lora_alpha"], 10);
  EXPECT_EQ(c["use_dora"], true);
  EXPECT_EQ(c["layers_to_transform"], json({1}));
  EXPECT_EQ(c["base_model_name_or_path"], "base/model");
  auto stored = load_safetensors(out + "/adapter_model.safetensors");
  ASSERT_EQ(stored.size(), 6u);
  EXPECT_EQ(stored[0].first, "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight");
  EXPECT_EQ(stored[0].second.shape(), (Shape{4, m->config().n_embd}));  // (r, in)
  EXPECT_EQ(stored[1].second.shape(), (Shape{m->config().n_ff, 4}));    // (out, r)

  EXPECT_TRUE(train::is_peft_folder(out));
  auto back = golden();
  train::AdapterConfig got = train::load_adapters(*back, out);
  EXPECT_EQ(got.fine_tune_type, "dora");
  EXPECT_EQ(got.num_layers, 1);
  EXPECT_EQ(got.lora.scale, 2.5f);
  auto a = train::trainable_parameters(*m), b = train::trainable_parameters(*back);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_EQ(a[i].second.to_f32_vector(), b[i].second.to_f32_vector()) << a[i].first;
  }
  fs::remove_all(out);
}
