// GenerationConfig::on_prefill on models/default (CPU): called after each prefill step with the
// tokens fed so far, the last step included; the tokens are those of a run without it; and
// returning false stops before the first token, leaving the fed tokens cached.
#include <gtest/gtest.h>

#include "runtime/generate.h"

using namespace lmtune;

namespace {

std::unique_ptr<Model> default_model() { return load_model(LMTUNE_DEFAULT_MODEL_DIR, Device::cpu, DType::f32); }

std::vector<int32_t> prompt() {
  std::vector<int32_t> p(10);
  for (size_t i = 0; i < p.size(); ++i) p[i] = int32_t(100 + 37 * i);
  return p;
}

}  // namespace

TEST(GeneratePrefill, ProgressPerStepAndSameTokens) {
  auto model = default_model();
  std::vector<std::vector<int32_t>> out;
  std::vector<std::pair<int64_t, int64_t>> calls;
  for (bool observe : {false, true}) {
    DenseKVCache cache(model->config(), Device::cpu, DType::f32);
    Sampler sampler(SamplerOptions{}, 0);
    Generator gen(*model, cache, sampler);
    GenerationConfig cfg;
    cfg.max_tokens = 8;
    cfg.prefill_step_size = 4;
    if (observe)
      cfg.on_prefill = [&](int64_t done, int64_t total) {
        calls.emplace_back(done, total);
        return true;
      };
    out.push_back(gen.generate(prompt(), cfg).tokens);
  }
  EXPECT_EQ(out[0].size(), 8u);
  EXPECT_EQ(out[0], out[1]);
  EXPECT_EQ(calls, (std::vector<std::pair<int64_t, int64_t>>{{4, 10}, {8, 10}, {10, 10}}));
}

TEST(GeneratePrefill, FalseStopsBeforeTheFirstToken) {
  auto model = default_model();
  DenseKVCache cache(model->config(), Device::cpu, DType::f32);
  Sampler sampler(SamplerOptions{}, 0);
  Generator gen(*model, cache, sampler);
  GenerationConfig cfg;
  cfg.prefill_step_size = 4;
  bool token_seen = false;
  cfg.on_prefill = [](int64_t done, int64_t) { return done < 8; };
  GenerationStats st = gen.generate(prompt(), cfg, [&](int32_t) { return token_seen = true; });
  EXPECT_FALSE(token_seen);
  EXPECT_TRUE(st.tokens.empty());
  EXPECT_EQ(st.finish_reason, "stop");
  EXPECT_EQ(gen.cached().size(), 8u);  // two steps fed, the third never run
  // The generator goes on from there: the rest of the prompt, then tokens.
  cfg.on_prefill = {};
  cfg.max_tokens = 3;
  const std::vector<int32_t> p = prompt();
  std::vector<int32_t> rest(p.begin() + 8, p.end());
  EXPECT_EQ(gen.generate(rest, cfg).tokens.size(), 3u);
}
