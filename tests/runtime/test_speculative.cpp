// Speculative decoding (runtime/speculative.h) on models/default (CPU, f32): at temp 0 the tokens
// equal Generator::generate's token for token, with a random draft of the same vocabulary (few
// proposals agree) and with the model as its own draft (every proposal agrees); repetition
// penalties see the same history; EOS and max_tokens stop where the plain loop stops; bad
// settings are refused.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "ops/ops.h"
#include "runtime/generate.h"
#include "runtime/speculative.h"

using namespace lmtune;

namespace {

std::unique_ptr<Model> default_model() { return load_model(LMTUNE_DEFAULT_MODEL_DIR, Device::cpu, DType::f32); }

// A random llama with n_vocab tokens: a poor draft for models/default, so most proposals fail.
std::unique_ptr<Model> random_draft(int64_t n_vocab, uint64_t seed) {
  ModelConfig c;
  c.model_type = "llama";
  c.n_vocab = n_vocab;
  c.n_head = 2;
  c.n_kv_head = 1;
  c.head_dim = 32;
  c.n_embd = 64;
  c.n_ff = 128;
  c.n_layer = 2;
  c.rms_norm_eps = 1e-5;
  c.layer_window = {0, 0};
  auto m = create_model(c);
  std::map<std::string, Tensor> w;
  for (const TensorSpec& spec : m->tensor_specs()) {
    bool norm = spec.name.find("norm") != std::string::npos;
    w[spec.name] = norm ? ops::full(spec.shape, 1.f, DType::f32, Device::cpu)
                        : ops::randn(spec.shape, ++seed, 1.f / std::sqrt(float(spec.shape.back())));
  }
  m->set_weights(std::move(w));
  return m;
}

// models/default's first n_layer layers (embedding, final norm and head kept): a draft that agrees
// with the model on some tokens and not on others.
std::unique_ptr<Model> truncated(const Model& model, int64_t n_layer) {
  ModelConfig c = model.config();
  c.n_layer = n_layer;
  c.layer_window.resize(size_t(n_layer));
  c.layer_rope.resize(size_t(n_layer), true);
  c.layer_moe.resize(size_t(n_layer), false);
  auto m = create_model(c);
  std::map<std::string, Tensor> w;
  for (const TensorSpec& spec : m->tensor_specs()) w[spec.name] = model.weights().at(spec.name);
  m->set_weights(std::move(w));
  return m;
}

std::vector<int32_t> prompt() {
  std::vector<int32_t> p(13);
  for (size_t i = 0; i < p.size(); ++i) p[i] = int32_t(100 + 37 * i);
  return p;
}

GenerationStats plain(Model& model, const SamplerOptions& so, const GenerationConfig& cfg) {
  DenseKVCache cache(model.config(), Device::cpu, DType::f32);
  Sampler sampler(so, 7);
  Generator gen(model, cache, sampler);
  return gen.generate(prompt(), cfg);
}

SpeculativeStats speculative(Model& model, Model& draft, const SamplerOptions& so, const GenerationConfig& cfg,
                             int64_t n_draft, std::vector<bool>* from_draft = nullptr) {
  DenseKVCache cache(model.config(), Device::cpu, DType::f32), dcache(draft.config(), Device::cpu, DType::f32);
  Sampler sampler(so, 7);
  SpeculativeGenerator gen(model, cache, draft, dcache, sampler, n_draft);
  SpeculativeStats st = gen.generate(prompt(), cfg, [&](int32_t, bool d) {
    if (from_draft) from_draft->push_back(d);
    return true;
  });
  // Both caches end holding the prompt and every emitted token but the last (as the plain loop).
  EXPECT_EQ(cache.offset(), int64_t(prompt().size() + st.gen.tokens.size()) - (st.gen.finish_reason == "stop" ? 0 : 1));
  EXPECT_LE(dcache.offset(), cache.offset());
  return st;
}

}  // namespace

TEST(Speculative, GreedyEqualsPlainWithARandomDraft) {
  auto model = default_model();
  auto draft = random_draft(model->config().n_vocab, 500);
  GenerationConfig cfg;
  cfg.max_tokens = 40;
  cfg.prefill_step_size = 5;
  const GenerationStats ref = plain(*model, {}, cfg);
  ASSERT_EQ(ref.tokens.size(), 40u);
  for (int64_t n_draft : {1, 2, 3, 5}) {
    SpeculativeStats st = speculative(*model, *draft, {}, cfg, n_draft);
    EXPECT_EQ(st.gen.tokens, ref.tokens) << "num_draft_tokens " << n_draft;
    EXPECT_EQ(st.gen.generation_tokens, ref.generation_tokens);
    EXPECT_EQ(st.gen.finish_reason, "length");
    EXPECT_GT(st.drafted, 0);
    EXPECT_LT(st.accepted, st.drafted) << "a random draft agreeing everywhere: the check is not checking";
  }
}

TEST(Speculative, GreedyEqualsPlainWithAPartlyAgreeingDraft) {
  auto model = default_model();
  auto draft = truncated(*model, 2);
  GenerationConfig cfg;
  cfg.max_tokens = 40;
  const GenerationStats ref = plain(*model, {}, cfg);
  for (int64_t n_draft : {2, 3, 4}) {
    std::vector<bool> from_draft;
    SpeculativeStats st = speculative(*model, *draft, {}, cfg, n_draft, &from_draft);
    EXPECT_EQ(st.gen.tokens, ref.tokens) << "num_draft_tokens " << n_draft;
    EXPECT_GT(st.accepted, 0) << "no proposal accepted: the accepting path is not exercised";
    EXPECT_LT(st.accepted, st.drafted) << "every proposal accepted: the rejecting path is not exercised";
    EXPECT_EQ(int64_t(std::count(from_draft.begin(), from_draft.end(), true)), st.accepted);
  }
}

TEST(Speculative, TheModelAsItsOwnDraftAgreesEverywhere) {
  auto model = default_model();
  GenerationConfig cfg;
  cfg.max_tokens = 30;
  const GenerationStats ref = plain(*model, {}, cfg);
  for (int64_t n_draft : {1, 3, 4}) {
    std::vector<bool> from_draft;
    SpeculativeStats st = speculative(*model, *model, {}, cfg, n_draft, &from_draft);
    EXPECT_EQ(st.gen.tokens, ref.tokens);
    EXPECT_EQ(st.accepted, st.drafted);
    EXPECT_DOUBLE_EQ(st.acceptance_rate(), 1.0);
    // Rounds of n_draft proposals plus the model's own token; the last round stops at max_tokens.
    ASSERT_EQ(from_draft.size(), 30u);
    for (size_t i = 0; i < from_draft.size(); ++i) EXPECT_EQ(from_draft[i], (i + 1) % size_t(n_draft + 1) != 0) << i;
  }
}

TEST(Speculative, PenaltiesSeeTheSameHistory) {
  auto model = default_model();
  auto draft = random_draft(model->config().n_vocab, 900);
  SamplerOptions so;
  so.repetition_penalty = 1.5f;
  so.repetition_context_size = 8;
  so.presence_penalty = 0.7f;
  GenerationConfig cfg;
  cfg.max_tokens = 30;
  const GenerationStats ref = plain(*model, so, cfg);
  const GenerationStats unpenalized = plain(*model, {}, cfg);
  ASSERT_NE(ref.tokens, unpenalized.tokens) << "the penalties change nothing here: pick stronger ones";
  EXPECT_EQ(speculative(*model, *draft, so, cfg, 3).gen.tokens, ref.tokens);
  EXPECT_EQ(speculative(*model, *model, so, cfg, 3).gen.tokens, ref.tokens);
}

TEST(Speculative, StopsAtEosWhereThePlainLoopStops) {
  auto model = default_model();
  GenerationConfig cfg;
  cfg.max_tokens = 30;
  const GenerationStats free_run = plain(*model, {}, cfg);
  cfg.eos_ids = {free_run.tokens[6]};  // the 7th token becomes a stop id
  const GenerationStats ref = plain(*model, {}, cfg);
  ASSERT_EQ(ref.finish_reason, "stop");
  for (Model* draft : {model.get()}) {
    SpeculativeStats st = speculative(*model, *draft, {}, cfg, 4);
    EXPECT_EQ(st.gen.tokens, ref.tokens);
    EXPECT_EQ(st.gen.generation_tokens, ref.generation_tokens);
    EXPECT_EQ(st.gen.finish_reason, "stop");
  }
}

TEST(Speculative, SampledRunsAreReproducibleAndFull) {
  auto model = default_model();
  auto draft = random_draft(model->config().n_vocab, 500);
  SamplerOptions so;
  so.temp = 0.8f;
  so.top_k = 50;
  GenerationConfig cfg;
  cfg.max_tokens = 25;
  SpeculativeStats a = speculative(*model, *draft, so, cfg, 3), b = speculative(*model, *draft, so, cfg, 3);
  EXPECT_EQ(a.gen.tokens, b.gen.tokens);  // one seeded sampler drives proposals and checks
  EXPECT_EQ(a.gen.tokens.size(), 25u);
}

TEST(Speculative, DraftWithALargerVocabularyProposesSharedIdsOnly) {
  auto model = default_model();
  auto draft = random_draft(model->config().n_vocab + 64, 500);  // padded embedding rows
  GenerationConfig cfg;
  cfg.max_tokens = 20;
  EXPECT_EQ(speculative(*model, *draft, {}, cfg, 3).gen.tokens, plain(*model, {}, cfg).tokens);
}

TEST(Speculative, Refusals) {
  auto model = default_model();
  DenseKVCache cache(model->config(), Device::cpu, DType::f32), dcache(model->config(), Device::cpu, DType::f32);
  DenseKVCache rotating(model->config(), Device::cpu, DType::f32, 1, 64);
  Sampler sampler(SamplerOptions{}, 0);
  EXPECT_THROW(SpeculativeGenerator(*model, cache, *model, dcache, sampler, 0), Error);
  EXPECT_THROW(SpeculativeGenerator(*model, rotating, *model, dcache, sampler, 3), Error);
  EXPECT_THROW(SpeculativeGenerator(*model, cache, *model, cache, sampler, 3), Error);
  SpeculativeGenerator gen(*model, cache, *model, dcache, sampler, 3);
  GenerationConfig cfg;
  EXPECT_THROW(gen.generate({}, cfg), Error);
  EXPECT_THROW(gen.generate({5, 99999}, cfg), Error);
}
