// The batching engine on CUDA (f32 weights, so that argmax near-ties cannot flip): a sequence
// alone decodes through the recorded step (runtime/decode_graph.h) as generate does, with
// generate's tokens; sequences that join mid-way get their tokens alone. Skips without a GPU.
#include <gtest/gtest.h>

#include <future>

#include "backend/backend.h"
#include "batch_fixture.h"
#include "runtime/batch_engine.h"
#include "runtime/generate.h"

using namespace lmtune;
using namespace lmtune::test;

namespace {

std::vector<int32_t> alone(Model& m, const std::vector<int32_t>& prompt, int64_t max_tokens) {
  DenseKVCache cache(m.config(), Device::cuda, DType::f32);
  Sampler sampler(SamplerOptions{}, 0);
  Generator gen(m, cache, sampler);
  GenerationConfig cfg;
  cfg.max_tokens = max_tokens;
  cfg.prefill_step_size = 16;
  return gen.generate(prompt, cfg).tokens;
}

}  // namespace

TEST(CudaBatchEngine, LoneSequenceUsesTheGraphAndJoinersEqualAlone) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  auto model = tiny_model({Device::cuda, DType::f32, 0, false});
  // The references first: the backend has one stream, and a reference generated while the engine's
  // thread records its decode step would run inside that capture (and break it).
  const std::vector<int32_t> want_lone = alone(*model, tokens(20, 1), 300);
  const std::vector<int32_t> want[3] = {alone(*model, tokens(9, 2), 40), alone(*model, tokens(15, 3), 20),
                                        alone(*model, tokens(30, 6), 20)};
  BatchEngineOptions o;
  o.prefill_step_size = 16;
  BatchEngine engine(*model, o);
  // Alone: 300 tokens, so the cache grows past its first 256-position block while graphed.
  std::promise<BatchOutcome> lone;
  BatchJob j;
  j.prompt = tokens(20, 1);
  j.max_tokens = 300;
  j.on_done = [&](const BatchOutcome& out) { lone.set_value(out); };
  engine.submit(std::move(j));
  EXPECT_EQ(lone.get_future().get().tokens, want_lone);
  EXPECT_GT(engine.stats().graph_steps, 250u) << "the lone sequence did not replay the recorded step";
  // Three more, joining while the first decodes.
  std::vector<std::promise<BatchOutcome>> done(3);
  std::vector<std::future<BatchOutcome>> results;
  for (auto& d : done) results.push_back(d.get_future());
  BatchJob first;
  first.prompt = tokens(9, 2);
  first.max_tokens = 40;
  first.on_done = [&](const BatchOutcome& out) { done[0].set_value(out); };
  first.on_token = [&, n = 0](int32_t, const Sampler&) mutable {
    if (++n == 3 || n == 6) {
      BatchJob b;
      b.prompt = tokens(size_t(5 * n), n);
      b.max_tokens = 20;
      const size_t slot = n == 3 ? 1 : 2;
      b.on_done = [&, slot](const BatchOutcome& out) { done[slot].set_value(out); };
      engine.submit(std::move(b));
    }
    return true;
  };
  engine.submit(std::move(first));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(results[size_t(i)].get().tokens, want[i]) << "sequence " << i;
}

// Speculative rounds taken together on CUDA: packed draft steps (the batched decode-row kernels)
// and one packed verify keeping every row; with the model as its own draft every proposal is
// accepted and the tokens are generate's alone.
TEST(CudaBatchEngine, SpeculativeRoundsTogetherEqualAlone) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  auto model = tiny_model({Device::cuda, DType::f32, 0, false});
  auto draft = tiny_model({Device::cuda, DType::f32, 0, false});
  const std::vector<int64_t> lengths = {30, 24, 18};
  std::vector<std::vector<int32_t>> want;
  for (size_t i = 0; i < lengths.size(); ++i) want.push_back(alone(*model, tokens(8 + 3 * i, int(i) + 4), lengths[i]));
  BatchEngineOptions o;
  o.prefill_step_size = 16;
  o.draft_model = draft.get();
  o.num_draft_tokens = 3;
  BatchEngine engine(*model, o);
  std::vector<std::promise<BatchOutcome>> done(lengths.size());
  for (size_t i = 0; i < lengths.size(); ++i) {
    BatchJob j;
    j.prompt = tokens(8 + 3 * i, int(i) + 4);
    j.max_tokens = lengths[i];
    j.on_done = [&, i](const BatchOutcome& out) { done[i].set_value(out); };
    engine.submit(std::move(j));
  }
  for (size_t i = 0; i < lengths.size(); ++i) {
    const BatchOutcome out = done[i].get_future().get();
    EXPECT_EQ(out.tokens, want[i]) << "sequence " << i;
    EXPECT_EQ(out.accepted, out.drafted) << "sequence " << i << ": the model as its own draft";
  }
  EXPECT_GT(engine.stats().spec_rounds_batched, 0u) << "no round taken together";
}
