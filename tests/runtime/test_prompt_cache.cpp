// The server's prompt cache (runtime/prompt_cache.h) on small CPU caches: longest-prefix lookup
// (never the whole prompt), the copy holding the entry's rows (dense and --kv-bits), LRU eviction
// by entries and by bytes in use order, entries covered by a longer one dropped, size strings; then
// the batching engine with the cache: a second request sharing a prefix reports cached tokens and
// the cold run's greedy tokens, while other sequences run and entries are stored and evicted.
// Built twice: on the CPU, and with LMTUNE_PROMPT_CACHE_CUDA on a CUDA device (test_cuda_prompt_cache,
// gpu label; skips without one), where the caches, their copies and the model live on the GPU.
#include <gtest/gtest.h>

#include <cstring>
#include <future>

#include "backend/backend.h"
#include "batch_fixture.h"
#include "core/error.h"
#include "ops/ops.h"
#include "runtime/batch_engine.h"
#include "runtime/generate.h"
#include "runtime/prompt_cache.h"

using namespace lmtune;
using namespace lmtune::test;

namespace {

#ifdef LMTUNE_PROMPT_CACHE_CUDA
constexpr Device kDev = Device::cuda;
#define SKIP_WITHOUT_DEVICE() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device"
#else
constexpr Device kDev = Device::cpu;
#define SKIP_WITHOUT_DEVICE()
#endif

ModelConfig kv_config() {
  ModelConfig c;
  c.n_layer = 2;
  c.n_kv_head = 2;
  c.head_dim = 32;
  return c;
}

// A cache holding n tokens whose key rows are token-dependent values: row t of layer l is
// filled with tokens[t] * 10 + l (values), so a copy can be checked row by row.
std::unique_ptr<DenseKVCache> filled(const std::vector<int32_t>& tokens, int64_t step = 16) {
  const ModelConfig c = kv_config();
  auto cache = std::make_unique<DenseKVCache>(c, kDev, DType::f32, 1, 0, 4, step);
  const int64_t T = int64_t(tokens.size());
  for (int64_t l = 0; l < c.n_layer; ++l) {
    std::vector<float> k;
    for (int32_t t : tokens) k.insert(k.end(), size_t(c.n_kv_head * c.head_dim), float(t * 10 + l));
    Tensor kt = Tensor::from_f32(k, {1, T, c.n_kv_head, c.head_dim});
    cache->update(l, ops::to(kt, kDev),
                  ops::to(ops::mul(kt, ops::full(kt.shape(), -1.f, DType::f32, Device::cpu)), kDev));
  }
  cache->advance(T);
  return cache;
}

std::vector<int32_t> range(int32_t from, int32_t n) {
  std::vector<int32_t> v;
  for (int32_t i = 0; i < n; ++i) v.push_back(from + i);
  return v;
}

std::vector<int32_t> cat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

TEST(PromptCache, LongestPrefixCopiedNeverTheWholePrompt) {
  SKIP_WITHOUT_DEVICE();
  PromptCache pc({10, 0});
  const std::vector<int32_t> a = range(1, 20), b = cat(range(1, 8), range(100, 12));
  pc.insert(a, filled(a));
  pc.insert(b, filled(b));
  EXPECT_EQ(pc.entries(), 2);
  // Shares 12 tokens with a, 8 with b: a's copy, trimmed to 12.
  const std::vector<int32_t> p = cat(range(1, 12), {500, 501});
  PromptCache::Hit h = pc.lookup(p);
  ASSERT_TRUE(h.cache);
  EXPECT_EQ(h.tokens, 12);
  EXPECT_EQ(h.cache->offset(), 12);
  std::vector<Tensor> planes = h.cache->held_planes(1);
  std::vector<float> k = planes[0].to_f32_vector(), v = planes[1].to_f32_vector();
  ASSERT_EQ(k.size(), size_t(12 * 2 * 32));
  for (int64_t t = 0; t < 12; ++t) {
    EXPECT_EQ(k[size_t(t * 64)], float(p[size_t(t)] * 10 + 1)) << t;
    EXPECT_EQ(v[size_t(t * 64 + 63)], -float(p[size_t(t)] * 10 + 1)) << t;
  }
  // The stored prompt itself: all but its last token (that one's logits start the answer).
  h = pc.lookup(a);
  EXPECT_EQ(h.tokens, 19);
  // A longer prompt extending a: all of a.
  EXPECT_EQ(pc.lookup(cat(a, {7, 7})).tokens, 20);
  // A one-token prompt, and one sharing nothing: misses.
  EXPECT_FALSE(pc.lookup({1}).cache);
  EXPECT_FALSE(pc.lookup(range(300, 5)).cache);
  // The copy is independent: growing it leaves the entry as it was.
  h = pc.lookup(p);
  Tensor more = ops::to(Tensor::from_f32(std::vector<float>(2 * 64, 9.f), {1, 2, 2, 32}), kDev);
  h.cache->update(0, more, more);
  h.cache->advance(2);
  EXPECT_EQ(h.cache->offset(), 14);
  EXPECT_EQ(pc.lookup(p).tokens, 12);
  EXPECT_EQ(pc.lookup(a).cache->held_planes(0)[0].to_f32_vector()[size_t(13 * 64)], float(a[13] * 10));
}

TEST(PromptCache, EvictsLeastRecentlyUsedByEntries) {
  SKIP_WITHOUT_DEVICE();
  PromptCache pc({3, 0});
  const auto a = range(10, 5), b = range(20, 5), c = range(30, 5), d = range(40, 5);
  pc.insert(a, filled(a));
  pc.insert(b, filled(b));
  pc.insert(c, filled(c));
  ASSERT_TRUE(pc.lookup(cat(a, {1})).cache);  // a becomes the most recently used
  pc.insert(d, filled(d));                    // b, the least recently used, goes
  EXPECT_EQ(pc.keys(), (std::vector<std::vector<int32_t>>{d, a, c}));
  EXPECT_EQ(pc.evictions(), 1u);
  EXPECT_FALSE(pc.lookup(cat(b, {1})).cache);
  pc.insert(b, filled(b));  // c goes next
  EXPECT_EQ(pc.keys(), (std::vector<std::vector<int32_t>>{b, d, a}));
}

TEST(PromptCache, EvictsByBytes) {
  SKIP_WITHOUT_DEVICE();
  const auto a = range(10, 5), b = range(20, 5), c = range(30, 40);
  const int64_t one = int64_t(filled(a)->nbytes());  // 16 rows
  EXPECT_EQ(int64_t(filled(c)->nbytes()), 3 * one);  // 48 rows
  PromptCache pc({10, 3 * one});
  pc.insert(a, filled(a));
  pc.insert(b, filled(b));
  EXPECT_EQ(pc.bytes(), 2 * one);
  pc.insert(c, filled(c));  // 5 blocks held: a then b go
  EXPECT_EQ(pc.keys(), (std::vector<std::vector<int32_t>>{c}));
  EXPECT_EQ(pc.bytes(), 3 * one);
  pc.insert(a, filled(a));  // c goes
  EXPECT_EQ(pc.keys(), (std::vector<std::vector<int32_t>>{a}));
  PromptCache small({10, one - 1});
  small.insert(a, filled(a));  // larger than the bound alone: not kept
  EXPECT_EQ(small.entries(), 0);
  EXPECT_EQ(small.bytes(), 0);
}

TEST(PromptCache, CoveredEntriesAndDisabled) {
  SKIP_WITHOUT_DEVICE();
  PromptCache pc({10, 0});
  const auto a = range(1, 6), longer = cat(a, {50, 51, 52});
  pc.insert(a, filled(a));
  pc.insert(range(90, 3), filled(range(90, 3)));
  pc.insert(longer, filled(longer));  // a is a prefix of it: dropped
  EXPECT_EQ(pc.keys(), (std::vector<std::vector<int32_t>>{longer, range(90, 3)}));
  pc.insert(range(90, 3), filled(range(90, 3)));
  pc.insert(a, filled(a));  // covered by longer: longer kept, marked used
  EXPECT_EQ(pc.keys(), (std::vector<std::vector<int32_t>>{longer, range(90, 3)}));
  EXPECT_THROW(pc.insert(range(1, 3), filled(range(1, 4))), Error);  // tokens and rows disagree
  PromptCache off({0, 0});
  off.insert(a, filled(a));
  EXPECT_EQ(off.entries(), 0);
  EXPECT_FALSE(off.lookup(longer).cache);
}

// Checkpoints (a system prompt's cache, BatchJob::cache_points): a longer entry covering one does
// not drop it, an equal one merges into it, and the bounds take every other entry first.
TEST(PromptCache, CheckpointsStayUntilNothingElseIsLeft) {
  SKIP_WITHOUT_DEVICE();
  PromptCache pc({3, 0});
  const auto sys = range(1, 5), conv = cat(sys, {60, 61, 62});
  pc.insert(sys, filled(sys), {}, true);
  pc.insert(conv, filled(conv));  // covers the checkpoint: both kept
  EXPECT_EQ(pc.keys(), (std::vector<std::vector<int32_t>>{conv, sys}));
  pc.insert(sys, filled(sys), {}, true);  // equal: merged, marked used
  EXPECT_EQ(pc.keys(), (std::vector<std::vector<int32_t>>{sys, conv}));
  EXPECT_TRUE(pc.touch(conv, {}, false));  // the same without a cache to discard
  EXPECT_FALSE(pc.touch(range(1, 4), {}, true));
  EXPECT_FALSE(pc.touch(conv, "another model", false));
  EXPECT_EQ(pc.keys(), (std::vector<std::vector<int32_t>>{conv, sys}));
  pc.insert(sys, filled(sys), {}, true);
  // Newer entries push out conv, the least recently used that is no checkpoint, not sys.
  pc.insert(range(70, 3), filled(range(70, 3)));
  pc.insert(range(80, 3), filled(range(80, 3)));
  EXPECT_EQ(pc.keys(), (std::vector<std::vector<int32_t>>{range(80, 3), range(70, 3), sys}));
  // The checkpoint serves a new conversation with the same system prompt.
  const PromptCache::Hit hit = pc.lookup(cat(sys, {90, 91}));
  EXPECT_EQ(hit.tokens, 5);
  // A checkpoint goes last: with only checkpoints left, the least recently used of them.
  PromptCache only({1, 0});
  only.insert(sys, filled(sys), {}, true);
  only.insert(range(40, 4), filled(range(40, 4)));
  EXPECT_EQ(only.keys(), (std::vector<std::vector<int32_t>>{sys}));
  only.insert(range(30, 4), filled(range(30, 4)), {}, true);
  EXPECT_EQ(only.keys(), (std::vector<std::vector<int32_t>>{range(30, 4)}));
}

// Entries of one key (model and adapters) are invisible to another's lookups and inserts; the
// bounds count them all.
TEST(PromptCache, KeysNeverCross) {
  SKIP_WITHOUT_DEVICE();
  PromptCache pc({3, 0});
  const auto a = range(1, 10), longer = cat(a, {70, 71});
  pc.insert(a, filled(a), "base");
  EXPECT_FALSE(pc.lookup(longer, "adapter").cache);
  EXPECT_FALSE(pc.lookup(longer).cache);  // the empty key is a key too
  EXPECT_EQ(pc.lookup(longer, "base").tokens, 10);
  pc.insert(longer, filled(longer), "adapter");  // does not drop base's a, which it would cover
  EXPECT_EQ(pc.keys(), (std::vector<std::vector<int32_t>>{longer, a}));
  pc.insert(a, filled(a), "adapter");  // covered by adapter's longer: not stored again
  EXPECT_EQ(pc.entries(), 2);
  PromptCache::Hit h = pc.lookup(cat(a, {5}), "adapter");
  ASSERT_TRUE(h.cache);
  EXPECT_EQ(h.tokens, 10);
  EXPECT_EQ(h.cache->held_planes(0)[0].to_f32_vector()[0], float(a[0] * 10));
  pc.insert(range(200, 4), filled(range(200, 4)), "third");
  pc.insert(range(300, 4), filled(range(300, 4)), "base");  // one over the bound: the oldest (base's a) goes
  EXPECT_EQ(pc.entries(), 3);
  EXPECT_FALSE(pc.lookup(longer, "base").cache);
}

TEST(PromptCache, QuantizedCacheCopied) {
  SKIP_WITHOUT_DEVICE();
  const ModelConfig c = kv_config();
  DenseKVCache q(c, kDev, DType::f32, 1, 0, 4, 16);
  q.set_quantization({4, 32, 0});
  Tensor k = ops::to(ops::randn({1, 9, 2, 32}, 3, 1.f), kDev), v = ops::to(ops::randn({1, 9, 2, 32}, 4, 1.f), kDev);
  for (int64_t l = 0; l < 2; ++l) q.update(l, k, v);
  q.advance(9);
  ASSERT_TRUE(q.quantized());
  std::unique_ptr<DenseKVCache> copy = q.copy_prefix(5);
  EXPECT_TRUE(copy->quantized());
  EXPECT_EQ(copy->offset(), 5);
  for (int64_t l = 0; l < 2; ++l) {
    std::vector<Tensor> want = q.held_planes(l), got = copy->held_planes(l);
    ASSERT_EQ(got.size(), 6u);
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i].shape(), (Shape{1, 5, 2, want[i].dim(3)}));
      ASSERT_EQ(got[i].dtype(), want[i].dtype());
      const size_t n = got[i].nbytes();  // the first 5 rows of the 9: the same bytes
      EXPECT_EQ(std::memcmp(got[i].raw(), want[i].raw(), n), 0) << l << " " << i;
    }
  }
}

TEST(PromptCache, SizeStrings) {
  EXPECT_EQ(parse_size("1000"), 1000);
  EXPECT_EQ(parse_size("2GB"), 2000000000);
  EXPECT_EQ(parse_size("1.5gb"), 1500000000);
  EXPECT_EQ(parse_size("512MiB"), 512LL << 20);
  EXPECT_EQ(parse_size("3kb"), 3000);
  EXPECT_EQ(parse_size("7B"), 7);
  for (const char* bad : {"", "GB", "2XB", "-1GB", "1.2.3GB", ".5GB", "2 GB"})
    EXPECT_THROW(parse_size(bad), Error) << bad;
}

namespace {

std::vector<int32_t> alone(Model& m, const std::vector<int32_t>& prompt, int64_t max_tokens) {
  DenseKVCache cache(m.config(), kDev, DType::f32);
  Sampler sampler(SamplerOptions{}, 0);
  Generator gen(m, cache, sampler);
  GenerationConfig cfg;
  cfg.max_tokens = max_tokens;
  cfg.prefill_step_size = 16;
  return gen.generate(prompt, cfg).tokens;
}

BatchOutcome run_one(BatchEngine& e, const std::vector<int32_t>& prompt, int64_t max_tokens) {
  Waiter w;
  e.submit(greedy_job(prompt, max_tokens, w));
  return w.result.get();
}

}  // namespace

TEST(PromptCacheEngine, SecondTurnReusesTheFirstWithTheColdTokens) {
  SKIP_WITHOUT_DEVICE();
  auto model = tiny_model({kDev, DType::f32, 0, false});
  BatchEngineOptions o;
  o.prefill_step_size = 16;
  o.kv_block = 16;
  o.prompt_cache = {10, 0};
  BatchEngine engine(*model, o);
  const std::vector<int32_t> first = tokens(30, 1);
  BatchOutcome a = run_one(engine, first, 12);
  EXPECT_EQ(a.prompt_cached, 0);
  ASSERT_EQ(a.tokens.size(), 12u);
  // The next turn: the first prompt, its answer and a new message. Held: the prompt and the answer
  // but its last token (never fed).
  const std::vector<int32_t> second = cat(cat(first, a.tokens), tokens(9, 2));
  BatchOutcome b = run_one(engine, second, 15);
  EXPECT_EQ(b.prompt_cached, 30 + 12 - 1);
  EXPECT_EQ(b.prompt_fed, int64_t(second.size()));
  EXPECT_EQ(b.tokens, alone(*model, second, 15));
  // The same prompt again: all but its last token come from the cache, the same answer.
  BatchOutcome c = run_one(engine, second, 15);
  EXPECT_EQ(c.prompt_cached, int64_t(second.size()) - 1);
  EXPECT_EQ(c.tokens, b.tokens);
  const BatchStats st = engine.stats();
  EXPECT_EQ(st.cache_lookups, 3u);
  EXPECT_EQ(st.cache_hits, 2u);
  EXPECT_EQ(st.cache_tokens, uint64_t(b.prompt_cached + c.prompt_cached));
  // first's entry is covered by b's (its tokens are a prefix): one entry is left.
  EXPECT_EQ(st.cache_entries, 1);
  EXPECT_GT(st.cache_bytes, 0);
}

// A job's cache point (the end of a chat's system prompt): the prefill stops a chunk there and
// keeps a checkpoint, so a second conversation with the same system prompt, submitted while the
// first still decodes, starts from it; both keep their cold greedy tokens.
TEST(PromptCacheEngine, CheckpointServesAConversationWhileTheFirstRuns) {
  SKIP_WITHOUT_DEVICE();
  auto model = tiny_model({kDev, DType::f32, 0, false});
  BatchEngineOptions o;
  o.prefill_step_size = 16;
  o.prompt_cache = {10, 0};
  BatchEngine engine(*model, o);
  const std::vector<int32_t> sys = tokens(21, 12), a = cat(sys, tokens(9, 13)), b = cat(sys, tokens(5, 14));
  std::vector<Waiter> w(2);
  BatchJob first = greedy_job(a, 30, w[0]);
  first.cache_points = {21};
  int seen = 0;
  first.on_token = [&](int32_t, const Sampler&) {
    if (++seen == 3) {
      BatchJob second = greedy_job(b, 8, w[1]);
      second.cache_points = {21};
      engine.submit(std::move(second));
    }
    return true;
  };
  engine.submit(std::move(first));
  const BatchOutcome ob = w[1].result.get(), oa = w[0].result.get();
  EXPECT_EQ(ob.prompt_cached, 21) << "the checkpoint of the first conversation's system prompt";
  EXPECT_EQ(oa.tokens, alone(*model, a, 30));
  EXPECT_EQ(ob.tokens, alone(*model, b, 8));
}

TEST(PromptCacheEngine, QuantizedModelSecondTurn) {
  SKIP_WITHOUT_DEVICE();
  auto model = tiny_model({kDev, DType::f32, 4, false});
  BatchEngineOptions o;
  o.prefill_step_size = 8;
  o.prompt_cache = {4, 0};
  BatchEngine engine(*model, o);
  const std::vector<int32_t> first = tokens(20, 3);
  BatchOutcome a = run_one(engine, first, 6);
  const std::vector<int32_t> second = cat(cat(first, a.tokens), tokens(5, 4));
  BatchOutcome b = run_one(engine, second, 10);
  EXPECT_EQ(b.prompt_cached, 20 + 6 - 1);
  EXPECT_EQ(b.tokens, alone(*model, second, 10));
}

TEST(PromptCacheEngine, EntriesStoredAndEvictedWhileOthersRun) {
  SKIP_WITHOUT_DEVICE();
  auto model = tiny_model({kDev, DType::f32, 0, false});
  BatchEngineOptions o;
  o.prefill_step_size = 16;
  o.kv_block = 16;
  o.prompt_cache = {2, 0};
  BatchEngine engine(*model, o);
  const std::vector<int32_t> shared = tokens(16, 5);
  const std::vector<int32_t> ta = tokens(6, 6), tb = tokens(7, 7);
  ASSERT_NE(ta[0], tb[0]);
  const std::vector<std::vector<int32_t>> prompts = {tokens(20, 1), cat(shared, ta), cat(shared, tb),
                                                     tokens(10, 9), tokens(12, 10),  cat(shared, tokens(4, 11))};
  const std::vector<int64_t> lengths = {60, 3, 5, 3, 3, 4};
  std::vector<Waiter> w(prompts.size());
  // The first sequence decodes throughout; the others join from its callback, each after the
  // previous one has ended (a short one takes a few steps), so entries are stored and evicted
  // while it runs.
  BatchJob first = greedy_job(prompts[0], lengths[0], w[0]);
  int seen = 0;
  first.on_token = [&](int32_t, const Sampler&) {
    ++seen;
    const int at[] = {2, 12, 22, 32, 42};
    for (size_t i = 0; i < std::size(at); ++i)
      if (seen == at[i]) engine.submit(greedy_job(prompts[i + 1], lengths[i + 1], w[i + 1]));
    return true;
  };
  engine.submit(std::move(first));
  std::vector<BatchOutcome> out;
  for (size_t i = 0; i < prompts.size(); ++i) {
    out.push_back(w[i].result.get());
    EXPECT_EQ(out[i].end, BatchEnd::length) << i;
    EXPECT_EQ(out[i].tokens, alone(*model, prompts[i], lengths[i])) << "sequence " << i;
  }
  EXPECT_EQ(out[1].prompt_cached, 0);
  EXPECT_EQ(out[2].prompt_cached, 16) << "the shared prefix of the entry the previous job left";
  EXPECT_EQ(out[3].prompt_cached, 0);
  // Two newer entries (3 and 4) pushed out the shared-prefix ones: a miss.
  EXPECT_EQ(out[5].prompt_cached, 0);
  const BatchStats st = engine.stats();
  EXPECT_EQ(st.cache_hits, 1u);
  EXPECT_EQ(st.cache_entries, 2);
  EXPECT_GE(st.cache_evictions, 2u);
}
