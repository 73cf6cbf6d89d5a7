// Greedy generation against mlx-lm's (MLX CPU backend): tests/ref/mlx_generate_ref.py runs
// mlx_lm's generate_step (argmax sampler) on the folders generate_ref.py wrote and keeps the ids
// in <family>/mlx_ref.json; lmtune's Generator must produce the same ids, one prefill or chunked.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/generate.h"

using namespace lmtune;

class MlxGreedy : public ::testing::TestWithParam<std::string> {};

TEST_P(MlxGreedy, EqualsMlxLmGenerateStep) {
  const char* root = std::getenv("LMTUNE_GENERATE_REF_DIR");
  if (!root) GTEST_SKIP() << "LMTUNE_GENERATE_REF_DIR not set";
  std::string dir = std::string(root) + "/" + GetParam();
  ASSERT_TRUE(std::filesystem::exists(dir + "/mlx_ref.json")) << dir;
  auto model = load_model(dir, Device::cpu, DType::f32);
  nlohmann::json ref = nlohmann::json::parse(std::ifstream(dir + "/mlx_ref.json"));
  ASSERT_GT(ref["prompts"].size(), 0u);
  for (size_t i = 0; i < ref["prompts"].size(); ++i) {
    std::vector<int32_t> prompt = ref["prompts"][i].get<std::vector<int32_t>>();
    std::vector<int32_t> want = ref["outputs"][i].get<std::vector<int32_t>>();
    for (int64_t step : {int64_t(2048), int64_t(4)}) {
      DenseKVCache cache(model->config(), Device::cpu, DType::f32);
      Sampler sampler(SamplerOptions{}, 0);  // temp 0: argmax
      Generator gen(*model, cache, sampler);
      GenerationConfig gc;
      gc.max_tokens = int64_t(want.size());
      gc.prefill_step_size = step;
      EXPECT_EQ(gen.generate(prompt, gc).tokens, want) << GetParam() << " prompt " << i << ", prefill step " << step;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Families, MlxGreedy,
                         ::testing::Values("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "smollm3",
                                           "granite", "olmo2", "phi3", "mixtral", "qwen3_moe"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });
