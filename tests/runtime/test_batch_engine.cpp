// The continuous-batching scheduler (runtime/batch_engine.h) on a tiny random model on the CPU:
// greedy tokens equal Generator::generate's alone for sequences that join while others decode;
// EOS, on_token's stop, cancellation, deadlines (waiting and mid-prefill), the two concurrency
// bounds, prefill progress, and the stats. Joins and cancels are made from inside the callbacks,
// which run on the scheduler thread between steps, so no test depends on timing.
#include <gtest/gtest.h>

#include <algorithm>
#include <future>
#include <thread>

#include "batch_fixture.h"
#include "core/error.h"
#include "runtime/batch_engine.h"
#include "runtime/generate.h"

using namespace lmtune;
using namespace lmtune::test;
using Clock = std::chrono::steady_clock;

namespace {

std::vector<int32_t> alone(Model& m, const std::vector<int32_t>& prompt, int64_t max_tokens, int64_t step,
                           std::vector<int32_t> eos = {}) {
  DenseKVCache cache(m.config(), Device::cpu, DType::f32);
  Sampler sampler(SamplerOptions{}, 0);
  Generator gen(m, cache, sampler);
  GenerationConfig cfg;
  cfg.max_tokens = max_tokens;
  cfg.prefill_step_size = step;
  cfg.eos_ids = std::move(eos);
  return gen.generate(prompt, cfg).tokens;
}

}  // namespace

TEST(BatchEngine, JoiningSequencesEqualGenerateAlone) {
  auto model = tiny_model({});
  BatchEngineOptions o;
  o.prefill_step_size = 16;
  BatchEngine engine(*model, o);
  const std::vector<std::vector<int32_t>> prompts = {tokens(20, 1), tokens(7, 2), tokens(45, 3), tokens(3, 4)};
  const std::vector<int64_t> lengths = {40, 25, 12, 30};
  std::vector<Waiter> w(prompts.size());
  // The first sequence submits the others after its 5th, 8th and 9th tokens: they join mid-way.
  BatchJob first = greedy_job(prompts[0], lengths[0], w[0]);
  int seen = 0;
  first.on_token = [&](int32_t, const Sampler&) {
    ++seen;
    if (seen == 5) engine.submit(greedy_job(prompts[1], lengths[1], w[1]));
    if (seen == 8) engine.submit(greedy_job(prompts[2], lengths[2], w[2]));
    if (seen == 9) engine.submit(greedy_job(prompts[3], lengths[3], w[3]));
    return true;
  };
  engine.submit(std::move(first));
  for (size_t i = 0; i < prompts.size(); ++i) {
    BatchOutcome out = w[i].result.get();
    EXPECT_EQ(out.end, BatchEnd::length) << i;
    EXPECT_EQ(out.finish_reason(), "length");
    EXPECT_EQ(out.prompt_fed, int64_t(prompts[i].size()));
    EXPECT_EQ(out.tokens, alone(*model, prompts[i], lengths[i], 16)) << "sequence " << i;
  }
  BatchStats st = engine.stats();
  uint64_t multi = 0;
  for (int b = 1; b < BatchStats::kBuckets; ++b) multi += st.batch_counts[b];
  EXPECT_GT(multi, 0u) << "no step ran more than one sequence";
  EXPECT_GE(st.steps, 40u);
  EXPECT_EQ(st.decoding + st.prefilling + st.waiting, 0);
}

TEST(BatchEngine, EosStopAndCancel) {
  auto model = tiny_model({});
  BatchEngine engine(*model, {});
  const std::vector<int32_t> prompt = tokens(10, 5);
  const std::vector<int32_t> ref = alone(*model, prompt, 20, 2048);
  ASSERT_EQ(ref.size(), 20u);
  // EOS: the 4th greedy token (where it first occurs) ends the sequence, unreported.
  const int32_t eos = ref[3];
  const size_t first = size_t(std::find(ref.begin(), ref.end(), eos) - ref.begin());
  Waiter we;
  BatchJob j = greedy_job(prompt, 20, we);
  j.eos_ids = {eos};
  engine.submit(std::move(j));
  BatchOutcome out = we.result.get();
  EXPECT_EQ(out.end, BatchEnd::eos);
  EXPECT_EQ(out.finish_reason(), "stop");
  EXPECT_EQ(out.tokens, std::vector<int32_t>(ref.begin(), ref.begin() + long(first)));
  // on_token returning false: that token is the last.
  Waiter ws;
  j = greedy_job(prompt, 20, ws);
  j.on_token = [n = 0](int32_t, const Sampler&) mutable { return ++n < 6; };
  engine.submit(std::move(j));
  out = ws.result.get();
  EXPECT_EQ(out.end, BatchEnd::stopped);
  EXPECT_EQ(out.tokens, std::vector<int32_t>(ref.begin(), ref.begin() + 6));
  // cancel() between steps: checked after the token that asked for it.
  Waiter wc;
  std::promise<std::shared_ptr<BatchTicket>> ticket;
  auto ticket_f = ticket.get_future().share();
  j = greedy_job(prompt, 1000, wc);
  j.on_token = [ticket_f, n = 0](int32_t, const Sampler&) mutable {
    if (++n == 3) ticket_f.get()->cancel();
    return true;
  };
  ticket.set_value(engine.submit(std::move(j)));
  out = wc.result.get();
  EXPECT_EQ(out.end, BatchEnd::cancelled);
  EXPECT_EQ(out.finish_reason(), "stop");
  EXPECT_EQ(out.tokens, std::vector<int32_t>(ref.begin(), ref.begin() + 3));
}

TEST(BatchEngine, DeadlinesWaitingAndInPrefill) {
  auto model = tiny_model({});
  BatchEngineOptions o;
  o.prefill_step_size = 8;
  o.decode_concurrency = 1;
  Waiter hold, w1;
  std::promise<void> running;
  BatchEngine engine(*model, o);
  // A job that decodes until cancelled holds the only slot.
  BatchJob h = greedy_job(tokens(4, 9), -1, hold);
  h.on_token = [&running, n = 0](int32_t, const Sampler&) mutable {
    if (++n == 1) running.set_value();
    return true;
  };
  std::shared_ptr<BatchTicket> holder = engine.submit(std::move(h));
  running.get_future().wait();
  // Past its deadline while it waits for the slot: expired, never started.
  BatchJob j = greedy_job(tokens(10, 1), 5, w1);
  bool started = false;
  j.on_start = [&] { started = true; };
  j.deadline = Clock::now() - std::chrono::seconds(1);
  engine.submit(std::move(j));
  BatchOutcome out = w1.result.get();
  EXPECT_EQ(out.end, BatchEnd::expired);
  EXPECT_EQ(out.finish_reason(), "");
  EXPECT_FALSE(started);
  holder->cancel();
  EXPECT_EQ(hold.result.get().end, BatchEnd::cancelled);
  // The deadline passes during the first prefill chunk (the callback outwaits it): the prefill
  // stops after that chunk, with no token.
  Waiter w2;
  j = greedy_job(tokens(40, 2), 5, w2);
  const auto deadline = Clock::now() + std::chrono::milliseconds(200);
  j.deadline = deadline;
  std::vector<std::pair<int64_t, int64_t>> progress;
  j.on_prefill = [&](int64_t done, int64_t total) {
    progress.emplace_back(done, total);
    std::this_thread::sleep_until(deadline + std::chrono::milliseconds(10));
    return true;
  };
  engine.submit(std::move(j));
  out = w2.result.get();
  EXPECT_EQ(out.end, BatchEnd::deadline);
  EXPECT_EQ(out.finish_reason(), "length");
  EXPECT_TRUE(out.tokens.empty());
  EXPECT_EQ(out.prompt_fed, 8);
  EXPECT_EQ(progress, (std::vector<std::pair<int64_t, int64_t>>{{8, 40}}));
}

TEST(BatchEngine, ConcurrencyBoundsAndPrefillProgress) {
  auto model = tiny_model({});
  BatchEngineOptions o;
  o.decode_concurrency = 3;
  o.prompt_concurrency = 2;
  o.prefill_step_size = 6;
  BatchEngine engine(*model, o);
  const int n = 7;
  std::vector<Waiter> w(n);
  // Callbacks run on the scheduler thread: plain counters are safe.
  int active = 0, prefilling = 0, max_active = 0, max_prefilling = 0;
  std::vector<std::vector<std::pair<int64_t, int64_t>>> progress(n);
  std::vector<int> prefill_left(n, 1);
  auto prefill_over = [&](int i) {
    if (prefill_left[size_t(i)]) prefill_left[size_t(i)] = 0, --prefilling;
  };
  for (int i = 0; i < n; ++i) {
    BatchJob j = greedy_job(tokens(size_t(5 + 3 * i), i), 8 + i, w[size_t(i)]);
    j.on_start = [&] {
      max_active = std::max(max_active, ++active);
      max_prefilling = std::max(max_prefilling, ++prefilling);
    };
    j.on_prefill = [&, i](int64_t done, int64_t total) {
      progress[size_t(i)].emplace_back(done, total);
      if (done == total) prefill_over(i);
      return true;
    };
    j.on_done = [&, i](const BatchOutcome& out) {
      prefill_over(i);
      --active;
      w[size_t(i)].done.set_value(out);
    };
    engine.submit(std::move(j));
  }
  for (int i = 0; i < n; ++i) {
    BatchOutcome out = w[size_t(i)].result.get();
    const std::vector<int32_t> prompt = tokens(size_t(5 + 3 * i), i);
    EXPECT_EQ(out.end, BatchEnd::length) << i;
    EXPECT_EQ(out.tokens, alone(*model, prompt, 8 + i, 6)) << "sequence " << i;
    ASSERT_FALSE(progress[size_t(i)].empty());
    EXPECT_EQ(progress[size_t(i)].back(), std::make_pair(int64_t(prompt.size()), int64_t(prompt.size())));
    for (size_t k = 1; k < progress[size_t(i)].size(); ++k)
      EXPECT_GT(progress[size_t(i)][k].first, progress[size_t(i)][k - 1].first);
  }
  EXPECT_LE(max_active, 3);
  EXPECT_LE(max_prefilling, 2);
  EXPECT_GE(max_active, 2) << "the bounds were never reached: the test would not see them";
}

TEST(BatchEngine, RefusesBadJobsAndEndsQueuedOnesAtShutdown) {
  auto model = tiny_model({});
  Waiter w, first;
  std::promise<void> running;
  {
    BatchEngineOptions o;
    o.decode_concurrency = 1;
    BatchEngine engine(*model, o);
    EXPECT_THROW(engine.submit(BatchJob{}), Error);  // empty prompt
    BatchJob bad;
    bad.prompt = {5, 100000};
    EXPECT_THROW(engine.submit(std::move(bad)), Error);
    // One long job holds the only slot; the second waits and ends when the engine goes.
    BatchJob j = greedy_job(tokens(4, 1), -1, first);
    j.on_token = [&running, n = 0](int32_t, const Sampler&) mutable {
      if (++n == 1) running.set_value();
      return true;
    };
    engine.submit(std::move(j));
    running.get_future().wait();
    engine.submit(greedy_job(tokens(4, 2), 3, w));
  }  // the destructor ends both
  EXPECT_EQ(first.result.get().end, BatchEnd::failed);
  BatchOutcome out = w.result.get();
  EXPECT_EQ(out.end, BatchEnd::failed);
  EXPECT_NE(out.error.find("stopped"), std::string::npos);
}

// With a draft model, a sequence decoding alone takes speculative rounds; its greedy tokens stay
// those of generate alone, with the model as its own draft (every proposal accepted) and with an
// unrelated draft (few accepted), for sequences alone, joining others (plain batched steps while
// together), cut by max_tokens inside a round, stopped by EOS, and continued from the prompt cache.
TEST(BatchEngine, SpeculativeWhenAloneKeepsGreedyTokens) {
  auto model = tiny_model({});
  auto self = tiny_model({});
  auto other = tiny_model({Device::cpu, DType::f32, 0, true});
  for (Model* draft : {self.get(), other.get()}) {
    BatchEngineOptions o;
    o.prefill_step_size = 16;
    o.draft_model = draft;
    o.num_draft_tokens = 3;
    o.prompt_cache = {4, 0};
    BatchEngine engine(*model, o);
    const std::vector<std::vector<int32_t>> prompts = {tokens(20, 1), tokens(7, 2), tokens(45, 3)};
    const std::vector<int64_t> lengths = {40, 26, 13};
    std::vector<Waiter> w(prompts.size());
    BatchJob first = greedy_job(prompts[0], lengths[0], w[0]);
    int seen = 0;
    first.on_token = [&](int32_t, const Sampler&) {
      if (++seen == 10) engine.submit(greedy_job(prompts[1], lengths[1], w[1]));
      if (seen == 12) engine.submit(greedy_job(prompts[2], lengths[2], w[2]));
      return true;
    };
    engine.submit(std::move(first));
    int64_t drafted = 0, accepted = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      // The later ones are submitted by the first one's tokens: none if it failed.
      ASSERT_EQ(w[i].result.wait_for(std::chrono::seconds(60)), std::future_status::ready) << i;
      BatchOutcome out = w[i].result.get();
      ASSERT_EQ(out.end, BatchEnd::length) << i << ": " << out.error;
      EXPECT_EQ(out.tokens, alone(*model, prompts[i], lengths[i], 16)) << "sequence " << i;
      drafted += out.drafted, accepted += out.accepted;
    }
    // EOS inside a round: the first sequence's 7th token as EOS.
    const std::vector<int32_t> want = alone(*model, prompts[0], lengths[0], 16);
    Waiter we;
    BatchJob eos = greedy_job(prompts[0], 40, we);
    eos.eos_ids = {want[6]};
    engine.submit(std::move(eos));
    BatchOutcome out = we.result.get();
    EXPECT_EQ(out.end, BatchEnd::eos);
    EXPECT_EQ(out.tokens, alone(*model, prompts[0], 40, 16, {want[6]}));
    // Again from the prompt cache (the first run's entry): the same tokens.
    Waiter wa;
    engine.submit(greedy_job(prompts[0], lengths[0], wa));
    out = wa.result.get();
    EXPECT_GT(out.prompt_cached, 0);
    EXPECT_EQ(out.tokens, want);
    BatchStats st = engine.stats();
    EXPECT_GT(st.spec_rounds, 0u);
    EXPECT_GE(int64_t(st.drafted), drafted);
    EXPECT_GT(drafted, 0);
    if (draft == self.get()) {
      EXPECT_EQ(accepted, drafted) << "the model as its own draft";
    } else {
      EXPECT_LT(accepted, drafted) << "an unrelated draft";
    }
    uint64_t multi = 0;
    for (int b = 1; b < BatchStats::kBuckets; ++b) multi += st.batch_counts[b];
    EXPECT_GT(multi, 0u) << "no batched step while sequences ran together";
  }
}

// Sequences decoding together take their speculative rounds together (options' spec_batch_max):
// one packed draft step a proposal for all of them, one packed forward scoring every sequence's
// proposals. Greedy tokens stay those of generate alone, with per-job draft lengths (1, 2, the
// default 3), max_tokens cut inside a round, an EOS inside one, and sequences ending at different
// rounds; with spec_batch_max 1, plain batched steps.
TEST(BatchEngine, SpeculativeTogetherKeepsGreedyTokens) {
  auto model = tiny_model({});
  auto self = tiny_model({});
  auto other = tiny_model({Device::cpu, DType::f32, 0, true});
  for (Model* draft : {self.get(), other.get()}) {
    for (int64_t batch_max : {8, 1}) {
      BatchEngineOptions o;
      o.prefill_step_size = 16;
      o.draft_model = draft;
      o.num_draft_tokens = 3;
      o.spec_batch_max = batch_max;
      BatchEngine engine(*model, o);
      const std::vector<std::vector<int32_t>> prompts = {tokens(10, 4), tokens(12, 5), tokens(8, 6)};
      const std::vector<int64_t> lengths = {31, 24, 17}, draft_len = {0, 1, 2};
      const std::vector<int32_t> want_eos = alone(*model, prompts[2], 40, 16);
      std::vector<Waiter> w(prompts.size());
      for (size_t i = 0; i < prompts.size(); ++i) {
        BatchJob j = greedy_job(prompts[i], lengths[i], w[i]);
        j.num_draft_tokens = draft_len[i];
        if (i == 2) j.max_tokens = 40, j.eos_ids = {want_eos[13]};  // ends by EOS, inside a round or not
        engine.submit(std::move(j));
      }
      int64_t drafted = 0, accepted = 0;
      for (size_t i = 0; i < prompts.size(); ++i) {
        ASSERT_EQ(w[i].result.wait_for(std::chrono::seconds(60)), std::future_status::ready) << i;
        BatchOutcome out = w[i].result.get();
        const std::vector<int32_t> want =
            i == 2 ? alone(*model, prompts[i], 40, 16, {want_eos[13]}) : alone(*model, prompts[i], lengths[i], 16);
        EXPECT_EQ(out.end, i == 2 ? BatchEnd::eos : BatchEnd::length) << i << ": " << out.error;
        EXPECT_EQ(out.tokens, want) << "sequence " << i << ", spec_batch_max " << batch_max;
        if (i != 2) drafted += out.drafted, accepted += out.accepted;  // an EOS wastes the round's later proposals
      }
      const BatchStats st = engine.stats();
      EXPECT_GT(drafted, 0);
      if (batch_max == 8)
        EXPECT_GT(st.spec_rounds_batched, 0u) << "no round taken together";
      else
        EXPECT_EQ(st.spec_rounds_batched, 0u) << "a round taken together past spec_batch_max 1";
      if (draft == self.get())
        EXPECT_EQ(accepted, drafted) << "the model as its own draft";
      else
        EXPECT_LT(accepted, drafted) << "an unrelated draft";
    }
  }
}

// switch_model: later jobs run on the new model, and the prompt cache never hands one model's
// entries to the other (a switch back finds its own again).
TEST(BatchEngine, SwitchModelKeepsPromptCachesApart) {
  auto a = tiny_model({});
  auto b = tiny_model({Device::cpu, DType::f32, 0, true});
  BatchEngineOptions o;
  o.prompt_cache = {4, 0};
  o.cache_key = "a";
  BatchEngine engine(*a, o);
  const std::vector<int32_t> p = tokens(24, 5);
  auto run = [&] {
    Waiter w;
    engine.submit(greedy_job(p, 12, w));
    return w.result.get();
  };
  BatchOutcome first = run();
  EXPECT_EQ(first.tokens, alone(*a, p, 12, 2048));
  engine.switch_model(*b, "b", nullptr);
  BatchOutcome other = run();
  EXPECT_EQ(other.prompt_cached, 0) << "model a's entry served model b";
  EXPECT_EQ(other.tokens, alone(*b, p, 12, 2048));
  EXPECT_NE(other.tokens, first.tokens) << "the two models must differ for this test to mean anything";
  engine.switch_model(*a, "a", nullptr);
  BatchOutcome back = run();
  EXPECT_EQ(back.prompt_cached, int64_t(p.size()) - 1);
  EXPECT_EQ(back.tokens, first.tokens);
  EXPECT_EQ(engine.stats().cache_entries, 2);
}

// A draft that cannot run (here a prompt id past its smaller vocabulary) costs the sequence
// nothing: it decodes in plain steps with generate's tokens, and no proposal is counted.
TEST(BatchEngine, FailingDraftFallsBackToPlainSteps) {
  auto model = tiny_model({});
  auto draft = tiny_model({Device::cpu, DType::f32, 0, false, 200});
  BatchEngineOptions o;
  o.draft_model = draft.get();
  BatchEngine engine(*model, o);
  std::vector<int32_t> p = tokens(12, 6);
  p[3] = 240;
  Waiter w;
  engine.submit(greedy_job(p, 20, w));
  ASSERT_EQ(w.result.wait_for(std::chrono::seconds(60)), std::future_status::ready);
  BatchOutcome out = w.result.get();
  EXPECT_EQ(out.end, BatchEnd::length) << out.error;
  EXPECT_EQ(out.tokens, alone(*model, p, 20, 2048));
  EXPECT_EQ(out.drafted, 0);
  EXPECT_EQ(engine.stats().spec_rounds, 0u);
}
