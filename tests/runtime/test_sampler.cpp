// Samplers and the generation loop: each filter and penalty as mlx-lm's sample_utils defines it,
// top-k 1 = greedy, seeded reproducibility, stop ids; and (with LMTUNE_GENERATE_REF_DIR) greedy
// output of tiny random models equal to transformers' model.generate(do_sample=False).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "batch_fixture.h"
#include "runtime/generate.h"
#include "runtime/speculative.h"

using namespace lmtune;

namespace {

std::vector<float> logprobs_of(const std::vector<float>& p) {
  std::vector<float> l;
  for (float x : p) l.push_back(std::log(x));
  return l;
}

std::vector<bool> kept(const std::vector<float>& lp) {
  std::vector<bool> k;
  for (float x : lp) k.push_back(std::isfinite(x));
  return k;
}

}  // namespace

TEST(Sampler, TopPKeepsTheNucleus) {
  std::vector<float> lp = logprobs_of({0.5f, 0.3f, 0.15f, 0.05f});
  Sampler::apply_top_p(lp, 0.75f);  // ascending cumulative 0.05 0.2 0.5 1.0; keep where > 0.25
  EXPECT_EQ(kept(lp), (std::vector<bool>{true, true, false, false}));
}

TEST(Sampler, MinPScalesByTheTopProbability) {
  std::vector<float> lp = logprobs_of({0.5f, 0.3f, 0.15f, 0.05f});
  Sampler::apply_min_p(lp, 0.2f, 1);  // cut at 0.2 * 0.5 = 0.1
  EXPECT_EQ(kept(lp), (std::vector<bool>{true, true, true, false}));
  lp = logprobs_of({0.5f, 0.3f, 0.15f, 0.05f});
  Sampler::apply_min_p(lp, 0.9f, 3);  // keeps min_tokens_to_keep
  EXPECT_EQ(kept(lp), (std::vector<bool>{true, true, true, false}));
}

TEST(Sampler, XtcCutsAllAboveThresholdButTheLeastLikely) {
  SamplerOptions o;
  o.xtc_probability = 1.f;
  o.xtc_threshold = 0.1f;
  Sampler s(o, 1);
  std::vector<float> lp = logprobs_of({0.5f, 0.3f, 0.15f, 0.05f});
  s.apply_xtc(lp);
  EXPECT_EQ(kept(lp), (std::vector<bool>{false, false, true, true}));
  o.xtc_special_tokens = {0};  // "\n" and EOS ids are never cut
  Sampler s2(o, 1);
  lp = logprobs_of({0.5f, 0.3f, 0.15f, 0.05f});
  s2.apply_xtc(lp);
  EXPECT_EQ(kept(lp), (std::vector<bool>{true, false, true, true}));
}

TEST(Sampler, TopKAndGreedy) {
  std::vector<float> lp = logprobs_of({0.1f, 0.5f, 0.15f, 0.25f});
  Sampler::apply_top_k(lp, 2);
  EXPECT_EQ(kept(lp), (std::vector<bool>{false, true, false, true}));
  SamplerOptions o;
  o.temp = 1.5f;
  o.top_k = 1;
  Sampler s(o, 42);
  for (int i = 0; i < 50; ++i) {
    std::vector<float> logits{0.1f, 0.3f, 0.2f, 0.25f};
    EXPECT_EQ(s.sample(logits, {}), 1);
  }
  Sampler greedy(SamplerOptions{}, 0);
  std::vector<float> logits{0.1f, 0.3f, 0.2f, 0.3f};
  EXPECT_EQ(greedy.sample(logits, {}), 1);  // temp 0: argmax, first of ties
}

TEST(Sampler, PenaltiesAsSpecified) {
  SamplerOptions o;
  o.repetition_penalty = 2.f;
  std::vector<float> l{2.f, -2.f, 1.f};
  Sampler(o, 0).apply_penalties(l, {0, 1, 0});  // CTRL, once per distinct token
  EXPECT_EQ(l, (std::vector<float>{1.f, -4.f, 1.f}));
  o.repetition_context_size = 1;
  l = {2.f, -2.f, 1.f};
  Sampler(o, 0).apply_penalties(l, {0, 1});  // only the last token is in context
  EXPECT_EQ(l, (std::vector<float>{2.f, -4.f, 1.f}));
  SamplerOptions p;
  p.presence_penalty = 0.5f;
  l = {1.f, -2.f, 1.f};
  Sampler(p, 0).apply_penalties(l, {0, 0, 1});
  EXPECT_EQ(l, (std::vector<float>{0.5f, -2.5f, 1.f}));
  SamplerOptions f;
  f.frequency_penalty = 0.5f;
  l = {1.f, -2.f, 1.f};
  Sampler(f, 0).apply_penalties(l, {0, 0, 1});
  EXPECT_EQ(l, (std::vector<float>{0.f, -2.5f, 1.f}));
  // A penalty changes the greedy choice.
  SamplerOptions g;
  g.presence_penalty = 1.f;
  std::vector<float> lg{1.f, 0.5f};
  EXPECT_EQ(Sampler(g, 0).sample(lg, {0}), 1);
}

TEST(Sampler, LogitBiasComesFirstAndLogprobsAreKept) {
  SamplerOptions o;
  o.logit_bias = {{1, 3.f}, {7, 100.f}};  // id 7 is outside the row: ignored
  o.repetition_penalty = 2.f;
  std::vector<float> l{2.f, 0.5f, 1.f};
  Sampler s(o, 0);
  s.apply_penalties(l, {1});  // 0.5 + 3 = 3.5, then the CTRL penalty halves it
  EXPECT_EQ(l, (std::vector<float>{2.f, 1.75f, 1.f}));
  EXPECT_TRUE(s.last_logprobs().empty());  // off unless asked
  o.keep_logprobs = true;
  o.repetition_penalty = 0.f;
  Sampler k(o, 0);
  std::vector<float> m{2.f, 0.5f, 1.f};
  EXPECT_EQ(k.sample(m, {}), 1);  // the bias wins the argmax
  const std::vector<float>& lp = k.last_logprobs();
  ASSERT_EQ(lp.size(), 3u);
  const double z = std::log(std::exp(2.0) + std::exp(3.5) + std::exp(1.0));
  EXPECT_NEAR(lp[0], 2.0 - z, 1e-5);
  EXPECT_NEAR(lp[1], 3.5 - z, 1e-5);
  EXPECT_NEAR(lp[2], 1.0 - z, 1e-5);
}

TEST(Sampler, SeededDrawsReproduceAndFollowTheDistribution) {
  SamplerOptions o;
  o.temp = 1.f;
  auto draw = [&](uint64_t seed) {
    Sampler s(o, seed);
    std::vector<int32_t> out;
    for (int i = 0; i < 2000; ++i) {
      std::vector<float> l = logprobs_of({0.5f, 0.3f, 0.2f});
      out.push_back(s.sample(l, {}));
    }
    return out;
  };
  std::vector<int32_t> a = draw(7), b = draw(7), c = draw(8);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  int n0 = int(std::count(a.begin(), a.end(), 0));
  EXPECT_NEAR(n0 / 2000.0, 0.5, 0.05);
  SamplerOptions negative;
  negative.temp = -1.f;
  EXPECT_THROW(Sampler(negative, 0), std::exception);
}

TEST(Helpers, UnescapeAndModelDir) {
  EXPECT_EQ(unescape_prompt("a\\nb\\tc\\x"), "a\nb\tc\\x");
  // A Hub id goes through the Hub cache: offline and not cached, it is refused naming the repo.
  std::string cache = (std::filesystem::temp_directory_path() / "lmtune-empty-hub-cache").string();
  setenv("HF_HUB_OFFLINE", "1", 1);
  setenv("HF_HUB_CACHE", cache.c_str(), 1);
  try {
    resolve_model_dir("some-org/some-model");
    FAIL();
  } catch (const std::exception& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("some-org/some-model"), std::string::npos) << msg;
    EXPECT_NE(msg.find("HF_HUB_OFFLINE=1"), std::string::npos) << msg;
  }
  unsetenv("HF_HUB_OFFLINE");
  unsetenv("HF_HUB_CACHE");
  EXPECT_THROW(resolve_model_dir("/no/such/folder"), std::exception);
}

// Greedy generation against transformers (the fixture writes the reference folders).
class GreedyRef : public ::testing::TestWithParam<std::string> {};

TEST_P(GreedyRef, EqualsTransformersGenerate) {
  const char* root = std::getenv("LMTUNE_GENERATE_REF_DIR");
  if (!root) GTEST_SKIP() << "LMTUNE_GENERATE_REF_DIR not set";
  std::string dir = std::string(root) + "/" + GetParam();
  ASSERT_TRUE(std::filesystem::exists(dir + "/ref.json")) << dir;
  const char* dv = std::getenv("LMTUNE_DEVICE");
  Device dev = dv && std::string(dv) == "cuda" ? Device::cuda : Device::cpu;
  if (dev == Device::cuda && !cuda_available()) GTEST_SKIP() << "no CUDA device";
  // f32 on CUDA too: bf16 rounding can flip near-ties of argmax, and an exact token-for-token
  // comparison needs the reference's precision (every CUDA kernel has an f32 path).
  auto model = load_model(dir, dev, DType::f32);
  nlohmann::json ref = nlohmann::json::parse(std::ifstream(dir + "/ref.json"));
  for (size_t i = 0; i < ref["prompts"].size(); ++i) {
    std::vector<int32_t> prompt = ref["prompts"][i].get<std::vector<int32_t>>();
    std::vector<int32_t> want = ref["outputs"][i].get<std::vector<int32_t>>();
    for (int64_t step : {int64_t(2048), int64_t(3)}) {  // one prefill, and chunked prefill
      DenseKVCache cache(model->config(), dev, DType::f32);
      Sampler sampler(SamplerOptions{}, 0);
      Generator gen(*model, cache, sampler);
      GenerationConfig gc;
      gc.max_tokens = int64_t(want.size());
      gc.prefill_step_size = step;
      GenerationStats st = gen.generate(prompt, gc);
      EXPECT_EQ(st.tokens, want) << "prompt " << i << ", prefill step " << step;
      EXPECT_EQ(st.finish_reason, "length");
    }
    // Stop ids: make the third generated token an EOS.
    DenseKVCache cache(model->config(), dev, DType::f32);
    Sampler sampler(SamplerOptions{}, 0);
    Generator gen(*model, cache, sampler);
    GenerationConfig gc;
    gc.max_tokens = int64_t(want.size());
    gc.eos_ids = {want[2]};
    GenerationStats st = gen.generate(prompt, gc);
    size_t first = size_t(std::find(want.begin(), want.end(), want[2]) - want.begin());
    EXPECT_EQ(st.tokens, std::vector<int32_t>(want.begin(), want.begin() + long(first)));
    EXPECT_EQ(st.finish_reason, "stop");
    EXPECT_EQ(st.generation_tokens, int64_t(first) + 1);
  }
}

// Speculative decoding on a longrope model whose sequences pass original_max_position_embeddings
// while generating (a verify step feeds several tokens across it): transformers' greedy tokens, with
// the model as its own draft (every proposal accepted) and with another model as a draft (most
// rejected, so the cache is trimmed after the re-run).
TEST(SpeculativeRef, LongropeCrossEqualsTransformers) {
  const char* root = std::getenv("LMTUNE_GENERATE_REF_DIR");
  if (!root) GTEST_SKIP() << "LMTUNE_GENERATE_REF_DIR not set";
  const std::string dir = std::string(root) + "/phi3_longrope_cross";
  auto model = load_model(dir, Device::cpu, DType::f32);
  auto other = load_model(std::string(root) + "/phi3_longrope", Device::cpu, DType::f32);
  ASSERT_EQ(other->config().n_vocab, model->config().n_vocab);
  nlohmann::json ref = nlohmann::json::parse(std::ifstream(dir + "/ref.json"));
  for (size_t i = 0; i < ref["prompts"].size(); ++i) {
    std::vector<int32_t> prompt = ref["prompts"][i].get<std::vector<int32_t>>();
    std::vector<int32_t> want = ref["outputs"][i].get<std::vector<int32_t>>();
    for (Model* draft : {model.get(), other.get()})
      for (int64_t n_draft : {int64_t(2), int64_t(4)}) {
        DenseKVCache cache(model->config(), Device::cpu, DType::f32);
        DenseKVCache dcache(draft->config(), Device::cpu, DType::f32);
        Sampler sampler(SamplerOptions{}, 0);
        SpeculativeGenerator gen(*model, cache, *draft, dcache, sampler, n_draft);
        GenerationConfig gc;
        gc.max_tokens = int64_t(want.size());
        SpeculativeStats st = gen.generate(prompt, gc, [](int32_t, bool) { return true; });
        EXPECT_EQ(st.gen.tokens, want) << "prompt " << i << ", " << (draft == model.get() ? "self" : "other")
                                       << " draft, " << n_draft << " proposals";
      }
  }
}

// The server's batch engine on the same model: the three prompts (1, 5 and 13 ids; the limit is
// 8) run together, so steps mix sequences within and past the limit, prefill chunks of 3 cross it
// and decoding rows cross it; then each alone with the model as its own draft, whose verify steps
// cross it. Each gives transformers' tokens.
TEST(BatchRef, LongropeCrossEqualsTransformers) {
  const char* root = std::getenv("LMTUNE_GENERATE_REF_DIR");
  if (!root) GTEST_SKIP() << "LMTUNE_GENERATE_REF_DIR not set";
  const std::string dir = std::string(root) + "/phi3_longrope_cross";
  auto model = load_model(dir, Device::cpu, DType::f32);
  nlohmann::json ref = nlohmann::json::parse(std::ifstream(dir + "/ref.json"));
  const size_t n = ref["prompts"].size();
  for (int64_t step : {int64_t(3), int64_t(2048)}) {
    BatchEngineOptions o;
    o.prefill_step_size = step;
    o.prompt_cache = {8, 0};
    BatchEngine engine(*model, o);
    for (int round = 0; round < 2; ++round) {  // the second from the prompt cache where it kept one
      std::vector<test::Waiter> w(n);
      for (size_t i = 0; i < n; ++i)
        engine.submit(
            test::greedy_job(ref["prompts"][i].get<std::vector<int32_t>>(), int64_t(ref["outputs"][i].size()), w[i]));
      for (size_t i = 0; i < n; ++i) {
        BatchOutcome out = w[i].result.get();
        ASSERT_EQ(out.end, BatchEnd::length) << out.error;
        EXPECT_EQ(out.tokens, ref["outputs"][i].get<std::vector<int32_t>>())
            << "prompt " << i << ", prefill step " << step << ", round " << round;
      }
    }
  }
  BatchEngineOptions o;
  o.draft_model = model.get();
  o.num_draft_tokens = 3;
  BatchEngine engine(*model, o);
  for (size_t i = 0; i < n; ++i) {
    test::Waiter w;
    engine.submit(
        test::greedy_job(ref["prompts"][i].get<std::vector<int32_t>>(), int64_t(ref["outputs"][i].size()), w));
    BatchOutcome out = w.result.get();
    ASSERT_EQ(out.end, BatchEnd::length) << out.error;
    EXPECT_EQ(out.tokens, ref["outputs"][i].get<std::vector<int32_t>>()) << "prompt " << i << ", speculative";
    EXPECT_GT(out.drafted, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Families, GreedyRef,
                         ::testing::Values("llama", "mistral_window", "qwen2", "qwen3", "gemma", "gemma2", "gemma3",
                                           "gemma3_mm", "smollm3", "granite", "olmo2", "phi3", "phi3_longrope",
                                           "phi3_longrope_cross", "phi3_partial", "mixtral", "qwen3_moe"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });
