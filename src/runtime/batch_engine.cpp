// The scheduler: admission (arrival order, within the two concurrency bounds), one packed forward
// per step (decoding sequences first, then prefill chunks within prefill_step_size tokens), and
// per sequence the same choices as Generator::generate (EOS, on_token, max_tokens) plus deadline
// and cancellation, checked between steps.
#include "runtime/batch_engine.h"

#include <algorithm>
#include <cstdio>

#include "backend/cpu/parallel.h"
#include "core/allocator.h"
#include "core/error.h"
#include "core/runtime_config.h"
#include "ops/ops.h"
#include "runtime/batch_graph.h"
#include "runtime/decode_graph.h"
#include "runtime/generate.h"
#include "runtime/kv_cache.h"

namespace lmtune {

namespace {

// A step's logits on the host: the forward's output downloaded in the model's dtype, each row made
// f32 by whoever samples it (no cast on the device, no copy of the whole (rows, V) block), or the
// f32 values a recorded step or longrope's path returned.
struct HostLogits {
  Tensor t;              // (rows, V) on the CPU, f32/bf16/f16; or undefined
  std::vector<float> v;  // else rows * V values
  size_t V = 0;

  std::vector<float> row(size_t i) const {
    if (t.defined()) return t.slice_rows(int64_t(i), int64_t(i) + 1).to_f32_vector();
    return std::vector<float>(v.begin() + ptrdiff_t(i * V), v.begin() + ptrdiff_t((i + 1) * V));
  }
};

}  // namespace

using Clock = std::chrono::steady_clock;

std::string BatchOutcome::finish_reason() const {
  switch (end) {
    case BatchEnd::eos:
    case BatchEnd::stopped:
    case BatchEnd::cancelled: return "stop";
    case BatchEnd::length:
    case BatchEnd::deadline: return "length";
    default: return "";
  }
}

struct BatchEngine::Sequence {
  BatchJob job;
  std::shared_ptr<BatchTicket> ticket;
  std::unique_ptr<DenseKVCache> cache;
  Sampler sampler;
  std::vector<int32_t> history;  // what the penalties see: the prompt, then every generated id
  BatchOutcome out;
  int32_t next = -1;                   // chosen, not fed yet (while decoding)
  bool decoding = false;               // the whole prompt is in the cache
  int64_t decode_feeds = 0;            // tokens fed while decoding
  std::unique_ptr<DecodeGraph> graph;  // recorded once it first decodes alone (CUDA)
  bool graph_off = false;              // recording failed once
  bool done = false;
  // Speculative rounds: the draft's cache, made at the first round, and the ids it holds (always a
  // prefix of history; it catches up on what it missed while the sequence decoded in a batch).
  std::unique_ptr<DenseKVCache> draft_cache;
  std::vector<int32_t> draft_fed;
  int64_t verified = -1;   // during a round: the model's cache rows past this are unchecked proposals
  bool draft_off = false;  // the draft failed once (memory, an id past its vocabulary): plain steps
  Sequence(Pending p, std::unique_ptr<DenseKVCache> c)
      : job(std::move(p.job)), ticket(std::move(p.ticket)), cache(std::move(c)), sampler(job.sampler, job.seed) {
    sampler.set_constraint(job.constraint);
  }
};

namespace {

int bucket_of(size_t n) {
  int b = 0;
  while (b + 1 < BatchStats::kBuckets && (size_t(1) << b) < n) ++b;
  return b;
}

void end_pending(BatchJob& job, BatchEnd end, const std::string& error = {}) {
  BatchOutcome o;
  o.end = end;
  o.error = error;
  if (job.on_done) job.on_done(o);
}

}  // namespace

BatchEngine::BatchEngine(Model& model, BatchEngineOptions opts)
    : model_(&model), opts_(opts), prompt_cache_(opts.prompt_cache), cache_key_(opts.cache_key) {
  LMT_CHECK(opts_.decode_concurrency >= 1, "[batch] decode_concurrency must be >= 1, got ", opts_.decode_concurrency);
  LMT_CHECK(opts_.prompt_concurrency >= 1, "[batch] prompt_concurrency must be >= 1, got ", opts_.prompt_concurrency);
  LMT_CHECK(opts_.prefill_step_size >= 1, "[batch] prefill_step_size must be >= 1, got ", opts_.prefill_step_size);
  LMT_CHECK(opts_.kv_block >= 1, "[batch] kv_block must be >= 1, got ", opts_.kv_block);
  LMT_CHECK(!opts_.draft_model || opts_.num_draft_tokens >= 1, "[batch] num_draft_tokens must be >= 1, got ",
            opts_.num_draft_tokens);

  thread_ = std::thread([this] { loop(); });
}

BatchEngine::~BatchEngine() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::shared_ptr<BatchTicket> BatchEngine::submit(BatchJob job) {
  LMT_CHECK(!job.prompt.empty(), "[batch] the prompt is empty (nothing to predict from)");
  int64_t V;
  {
    std::lock_guard<std::mutex> lk(mu_);  // switch_model changes the model
    V = model_->config().n_vocab;
  }
  for (int32_t t : job.prompt)
    LMT_CHECK(t >= 0 && t < V, "[batch] prompt token ", t, " is outside the model's vocabulary of ", V);
  auto ticket = std::make_shared<BatchTicket>();
  {
    std::lock_guard<std::mutex> lk(mu_);
    LMT_CHECK(!stop_, "[batch] the engine has stopped");
    LMT_CHECK(!switch_to_, "[batch] a job submitted while the engine switches models");
    incoming_.push_back({std::move(job), ticket});
    ++stats_.waiting;
  }
  cv_.notify_all();
  return ticket;
}

void BatchEngine::switch_model(Model& model, std::string cache_key, Model* draft) {
  std::unique_lock<std::mutex> lk(mu_);
  LMT_CHECK(!stop_, "[batch] the engine has stopped");
  LMT_CHECK(!draft || opts_.num_draft_tokens >= 1, "[batch] num_draft_tokens must be >= 1, got ",
            opts_.num_draft_tokens);
  switch_to_ = &model;
  switch_draft_ = draft;
  switch_key_ = std::move(cache_key);
  cv_.notify_all();
  switched_.wait(lk, [&] { return switch_to_ == nullptr; });
}

BatchStats BatchEngine::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

void BatchEngine::loop() {
  std::vector<std::unique_ptr<Sequence>> active;
  std::deque<Pending> waiting;
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      if (active.empty() && waiting.empty()) cv_.wait(lk, [&] { return stop_ || !incoming_.empty() || switch_to_; });
      if (stop_) break;
      if (switch_to_ && active.empty() && waiting.empty() && incoming_.empty()) {
        model_ = switch_to_;
        opts_.draft_model = switch_draft_;
        batch_graphs_.clear();  // recorded for the old model's weights
        cache_key_ = std::move(switch_key_);
        switch_to_ = nullptr;
        if (model_->device() == Device::cpu) allocator(Device::cpu).empty_cache();
        switched_.notify_all();
        continue;
      }
      while (!incoming_.empty()) waiting.push_back(std::move(incoming_.front())), incoming_.pop_front();
    }
    // Free slots go first (in arrival order); a job still waiting past its deadline, or
    // cancelled, never starts.
    admit(active, waiting);
    const Clock::time_point now = Clock::now();
    for (auto it = waiting.begin(); it != waiting.end();) {
      const bool cancelled = it->ticket->cancelled();
      if (cancelled || now >= it->job.deadline) {
        end_pending(it->job, cancelled ? BatchEnd::cancelled : BatchEnd::expired);
        it = waiting.erase(it);
      } else {
        ++it;
      }
    }
    // The gauges as they stand before the step (a step may be long: a job admitted now counts as
    // prefilling, not as waiting, while it runs), and again after it.
    update_gauges(active, waiting);
    if (!active.empty()) step(active);
    std::erase_if(active, [](const std::unique_ptr<Sequence>& s) { return s->done; });
    // Idle on the CPU: the freed caches and activations go back to the system, so a server's
    // resident memory returns to its baseline between bursts (a GPU keeps its cache for speed).
    if (active.empty() && waiting.empty() && model_->device() == Device::cpu) allocator(Device::cpu).empty_cache();
    update_gauges(active, waiting);
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    switch_to_ = nullptr;
    switched_.notify_all();
  }
  for (auto& s : active) finish(*s, BatchEnd::failed, "the engine stopped");
  for (auto& p : waiting) end_pending(p.job, BatchEnd::failed, "the engine stopped");
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& p : incoming_) end_pending(p.job, BatchEnd::failed, "the engine stopped");
  incoming_.clear();
}

void BatchEngine::update_gauges(const std::vector<std::unique_ptr<Sequence>>& active,
                                const std::deque<Pending>& waiting) {
  std::lock_guard<std::mutex> lk(mu_);
  stats_.waiting = int64_t(waiting.size() + incoming_.size());
  stats_.decoding = std::count_if(active.begin(), active.end(), [](const auto& s) { return s->decoding; });
  stats_.prefilling = int64_t(active.size()) - stats_.decoding;
  stats_.cache_entries = prompt_cache_.entries();
  stats_.cache_bytes = prompt_cache_.bytes();
  stats_.cache_evictions = prompt_cache_.evictions();
}

std::unique_ptr<DenseKVCache> BatchEngine::cache_for(const std::vector<int32_t>& prompt, int64_t& cached) {
  cached = 0;
  if (prompt_cache_.enabled()) {
    PromptCache::Hit hit;
    try {
      hit = prompt_cache_.lookup(prompt, cache_key_);
    } catch (const std::exception& e) {  // the copy failed (memory): prefill the whole prompt
      std::fprintf(stderr, "[batch] prompt cache copy failed, prefilling the whole prompt: %s\n", e.what());
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      ++stats_.cache_lookups;
      stats_.cache_hits += hit.cache != nullptr;
      stats_.cache_tokens += uint64_t(hit.cache ? hit.tokens : 0);
    }
    if (hit.cache) return cached = hit.tokens, std::move(hit.cache);
  }
  const Model& m = *model_;
  return std::make_unique<DenseKVCache>(m.config(), m.device(), m.dtype(), 1, 0, 4, opts_.kv_block);
}

std::vector<int32_t> BatchEngine::known_ids(const Sequence& s) {
  std::vector<int32_t> ids(s.job.prompt.begin(), s.job.prompt.begin() + s.out.prompt_fed);
  if (s.out.prompt_fed == int64_t(s.job.prompt.size())) ids.insert(ids.end(), s.out.tokens.begin(), s.out.tokens.end());
  return ids;
}

void BatchEngine::keep_in_prompt_cache(Sequence& s) {
  if (!prompt_cache_.enabled() || !s.cache || s.out.end == BatchEnd::failed) return;
  if (s.verified >= 0 && s.cache->offset() > s.verified) s.cache->trim_to(s.verified);  // ended in a round
  const int64_t held = s.cache->offset();
  // longrope: a cache past original_max_position_embeddings holds keys rotated with the long
  // factors, wrong for a later prompt that shares only a prefix within the limit: not kept.
  const ModelConfig& cfg = model_->config();
  if (cfg.rope.type == "longrope" && held > cfg.rope.original_max_position_embeddings) return;
  // Fed so far: known_ids but the last generated one, which was chosen and never fed.
  std::vector<int32_t> tokens = known_ids(s);
  if (held <= 0 || held > int64_t(tokens.size())) return;
  tokens.resize(size_t(held));
  try {
    prompt_cache_.insert(std::move(tokens), std::move(s.cache), cache_key_);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[batch] prompt cache insert failed: %s\n", e.what());
  }
}

void BatchEngine::keep_checkpoint(Sequence& s) {
  const int64_t fed = s.out.prompt_fed;
  const std::vector<int64_t>& points = s.job.cache_points;
  if (!prompt_cache_.enabled() || fed >= int64_t(s.job.prompt.size()) || s.cache->offset() != fed ||
      std::find(points.begin(), points.end(), fed) == points.end())
    return;
  const ModelConfig& cfg = model_->config();
  if (cfg.rope.type == "longrope" && fed > cfg.rope.original_max_position_embeddings)
    return;  // as keep_in_prompt_cache
  try {
    std::vector<int32_t> tokens(s.job.prompt.begin(), s.job.prompt.begin() + fed);
    if (prompt_cache_.touch(tokens, cache_key_, true)) return;  // kept already: no copy
    prompt_cache_.insert(std::move(tokens), s.cache->copy_prefix(fed), cache_key_, true);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[batch] prompt cache checkpoint failed: %s\n", e.what());
  }
}

void BatchEngine::admit(std::vector<std::unique_ptr<Sequence>>& active, std::deque<Pending>& waiting) {
  int64_t prefilling = std::count_if(active.begin(), active.end(), [](const auto& s) { return !s->decoding; });
  while (!waiting.empty() && int64_t(active.size()) < opts_.decode_concurrency &&
         prefilling < opts_.prompt_concurrency) {
    Pending p = std::move(waiting.front());
    waiting.pop_front();
    if (p.ticket->cancelled()) {
      end_pending(p.job, BatchEnd::cancelled);
      continue;
    }
    std::unique_ptr<DenseKVCache> cache;
    int64_t cached = 0;
    try {
      cache = cache_for(p.job.prompt, cached);
    } catch (const std::exception& e) {
      end_pending(p.job, BatchEnd::failed, e.what());
      continue;
    }
    active.push_back(std::make_unique<Sequence>(std::move(p), std::move(cache)));
    ++prefilling;
    Sequence& s = *active.back();
    s.out.prompt_cached = s.out.prompt_fed = cached;
    try {
      if (s.job.on_start) s.job.on_start();
    } catch (const std::exception& e) {
      finish(s, BatchEnd::failed, e.what());
    }
  }
}

void BatchEngine::step(std::vector<std::unique_ptr<Sequence>>& active) {
  std::vector<Sequence*> in_step;
  std::vector<int32_t> ids;
  std::vector<PackedSequence> packed;
  std::vector<int64_t> chunk;  // prompt tokens fed per sequence in the step (0: a decode token)
  for (auto& s : active) {
    if (s->done || !s->decoding) continue;
    in_step.push_back(s.get()), ids.push_back(s->next), packed.push_back({1, s->cache.get()}), chunk.push_back(0);
  }
  int64_t budget = opts_.prefill_step_size;
  for (auto& s : active) {
    if (s->done || s->decoding || budget <= 0) continue;
    const int64_t fed = s->out.prompt_fed;
    int64_t n = std::min(int64_t(s->job.prompt.size()) - fed, budget);
    if (prompt_cache_.enabled())  // a chunk ends at the next cache point
      for (int64_t p : s->job.cache_points)
        if (p > fed && p < fed + n) n = p - fed;
    ids.insert(ids.end(), s->job.prompt.begin() + fed, s->job.prompt.begin() + fed + n);
    in_step.push_back(s.get()), packed.push_back({n, s->cache.get()}), chunk.push_back(n);
    budget -= n;
  }
  if (in_step.empty()) return;
  const int64_t V = model_->config().n_vocab;
  HostLogits host;
  host.V = size_t(V);
  bool graphed = false;
  const Clock::time_point t0 = Clock::now();
  const bool decode_only = std::all_of(chunk.begin(), chunk.end(), [](int64_t c) { return c == 0; });
  try {
    Sequence& first = *in_step[0];
    if (in_step.size() == 1 && first.decoding && drafts(first)) return speculative_round(first);
    if (decode_only && in_step.size() >= 2 && int64_t(in_step.size()) <= opts_.spec_batch_max &&
        std::all_of(in_step.begin(), in_step.end(), [&](const Sequence* s) { return drafts(*s); }) &&
        model_->config().rope.type != "longrope" && opts_.draft_model->config().rope.type != "longrope")
      return speculative_batch(in_step);
    if (in_step.size() == 1 && first.decoding && opts_.decode_graph && first.decode_feeds >= 1 && !first.graph_off) {
      // One sequence decoding alone: generate's recorded step, where the device has graphs.
      if (!first.graph && DecodeGraph::usable(*model_, *first.cache))
        first.graph = std::make_unique<DecodeGraph>(*model_, *first.cache);
      if (first.graph) {
        try {
          host.v = first.graph->step(first.next);
          graphed = true;
        } catch (const Error& e) {  // recording failed (the cache is as it was): eager from now on
          std::fprintf(stderr, "[batch] decoding without a CUDA graph: %s\n", e.what());
          first.graph.reset();
          first.graph_off = true;
        }
      }
    }
    // Decoding rows only, 2 to 64 of them: the recorded step for that many.
    if (!graphed && decode_only && in_step.size() >= 2 && opts_.decode_graph && runtime_config().cuda_batch_graph &&
        !batch_graph_off_) {
      std::vector<DenseKVCache*> caches;
      for (Sequence* s : in_step) caches.push_back(s->cache.get());
      if (BatchGraph::usable(*model_, caches)) {
        const int64_t n = int64_t(in_step.size());
        auto it = batch_graphs_.find(n);
        if (it == batch_graphs_.end()) {
          if (batch_graphs_.size() >= kBatchGraphs) batch_graphs_.erase(batch_graphs_.begin());
          it = batch_graphs_.emplace(n, std::make_unique<BatchGraph>(*model_, n)).first;
        }
        try {
          host.v = it->second->step(ids, caches);
          graphed = true;
        } catch (const Error& e) {  // recording failed (the caches are as they were): eager from now on
          std::fprintf(stderr, "[batch] batched decoding without a CUDA graph: %s\n", e.what());
          batch_graphs_.clear();
          batch_graph_off_ = true;
        }
      }
    }
    // A sequence keeps its recorded step while others run beside it (it holds only one batch-1
    // step's intermediates): eager steps write the same cache rows, and the graph is recorded
    // again only if the cache's buffers moved meanwhile (DecodeGraph::step checks).
    if (!graphed && model_->config().rope.type == "longrope") {
      host.v = forward_longrope(in_step, ids, packed);
    } else if (!graphed) {
      Tensor lg = model_->forward_packed(Tensor::from_i32(ids, {1, int64_t(ids.size())}), packed);
      host.t = ops::to(lg, Device::cpu);
    }
  } catch (const std::exception& e) {
    for (Sequence* s : in_step) finish(*s, BatchEnd::failed, std::string("the forward failed: ") + e.what());
    return;
  }
  const Clock::time_point t1 = Clock::now();
  // The decoding rows' samplers (each sequence's own: its logits, penalties, RNG) run over the CPU's
  // worker pool, idle between forwards; the choices then go through after_token one by one, on this
  // thread, in row order. Rows with a constraint sample on this thread too (a constraint may build
  // shared tables on first use).
  std::vector<int32_t> chosen(in_step.size(), -1);
  std::vector<std::string> sample_error(in_step.size());
  std::vector<size_t> pooled;
  auto sample_row = [&](size_t i) {
    Sequence& s = *in_step[i];
    try {
      std::vector<float> logits = host.row(i);
      chosen[i] = s.sampler.sample(logits, s.history);
    } catch (const std::exception& e) {
      sample_error[i] = e.what();
    }
  };
  for (size_t i = 0; i < in_step.size(); ++i)
    if (chunk[i] == 0 && !in_step[i]->sampler.constraint()) pooled.push_back(i);
  cpu::parallel_rows(int64_t(pooled.size()), int64_t(pooled.size()) * V >> 14, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) sample_row(pooled[size_t(r)]);
  });
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++stats_.steps;
    stats_.forward_seconds += std::chrono::duration<double>(t1 - t0).count();
    stats_.step_rows += ids.size();
    stats_.graph_steps += graphed;
    ++stats_.batch_counts[bucket_of(in_step.size())];
    stats_.batch_sum += in_step.size();
  }
  for (size_t i = 0; i < in_step.size(); ++i) {
    Sequence& s = *in_step[i];
    try {
      if (chunk[i] == 0) {
        ++s.decode_feeds;
        if (chosen[i] < 0 && sample_error[i].empty()) sample_row(i);  // a constrained row
        if (!sample_error[i].empty()) throw Error(sample_error[i]);
        after_token(s, chosen[i]);
      } else {
        s.out.prompt_fed += chunk[i];
        keep_checkpoint(s);
        after_prefill_chunk(s, host.row(i).data());
      }
    } catch (const std::exception& e) {
      if (!s.done) finish(s, BatchEnd::failed, e.what());
    }
  }
  const Clock::time_point t2 = Clock::now();
  std::lock_guard<std::mutex> lk(mu_);
  stats_.host_seconds += std::chrono::duration<double>(t2 - t1).count();
  if (decode_only) ++stats_.decode_steps, stats_.decode_step_seconds += std::chrono::duration<double>(t2 - t0).count();
}

// longrope (Phi-3.5, the 128k Phi-3 models): a sequence whose rows cross
// original_max_position_embeddings in this step first feeds every id its cache holds again, into
// the emptied cache, so that its whole history is rotated with the long factors (as
// Generator::generate does; runtime/generate.h). forward_packed runs the sequences within the
// limit and those past it with their own factors (models/decoder.h).
std::vector<float> BatchEngine::forward_longrope(const std::vector<Sequence*>& in_step, const std::vector<int32_t>& ids,
                                                 const std::vector<PackedSequence>& packed) {
  const ModelConfig& cfg = model_->config();
  std::vector<int32_t> all_ids;
  std::vector<PackedSequence> seqs = packed;
  auto at = ids.begin();
  for (size_t i = 0; i < in_step.size(); ++i) {
    DenseKVCache& c = *in_step[i]->cache;  // packed[i]'s
    const int64_t held = c.offset();
    if (longrope_reruns(cfg, held, packed[i].length)) {
      const std::vector<int32_t> known = known_ids(*in_step[i]);
      LMT_CHECK(held <= int64_t(known.size()), "[batch] a cache of ", held, " rows for ", known.size(), " known ids");
      all_ids.insert(all_ids.end(), known.begin(), known.begin() + held);
      seqs[i].length += held;
      c.reset();
    }
    all_ids.insert(all_ids.end(), at, at + packed[i].length);
    at += packed[i].length;
  }
  Tensor lg = model_->forward_packed(Tensor::from_i32(all_ids, {1, int64_t(all_ids.size())}), seqs);
  return ops::to(lg, Device::cpu, DType::f32).to_f32_vector();
}

bool BatchEngine::after_prefill_chunk(Sequence& s, const float* row) {
  const int64_t total = int64_t(s.job.prompt.size()), fed = s.out.prompt_fed;
  if (s.job.on_prefill && !s.job.on_prefill(fed, total)) return finish(s, BatchEnd::stopped), false;
  if (fed < total) {
    if (s.ticket->cancelled()) return finish(s, BatchEnd::cancelled), false;
    if (Clock::now() >= s.job.deadline) return finish(s, BatchEnd::deadline), false;
    return true;
  }
  s.history = s.job.prompt;
  std::vector<float> logits(row, row + model_->config().n_vocab);
  return after_token(s, s.sampler.sample(logits, s.history));
}

bool BatchEngine::after_token(Sequence& s, int32_t token) {
  const auto& eos = s.job.eos_ids;
  if (std::find(eos.begin(), eos.end(), token) != eos.end()) return finish(s, BatchEnd::eos), false;
  s.out.tokens.push_back(token);
  s.history.push_back(token);
  if (s.job.on_token && !s.job.on_token(token, s.sampler)) return finish(s, BatchEnd::stopped), false;
  if (s.job.max_tokens >= 0 && int64_t(s.out.tokens.size()) >= s.job.max_tokens)
    return finish(s, BatchEnd::length), false;
  if (s.ticket->cancelled()) return finish(s, BatchEnd::cancelled), false;
  if (Clock::now() >= s.job.deadline) return finish(s, BatchEnd::deadline), false;
  s.next = token;
  s.decoding = true;
  return true;
}

bool BatchEngine::drafts(const Sequence& s) const {
  return opts_.draft_model && s.job.speculative && !s.job.constraint && !s.draft_off;
}

int64_t BatchEngine::draft_length(const Sequence& s) const {
  int64_t n = s.job.num_draft_tokens > 0 ? s.job.num_draft_tokens : opts_.num_draft_tokens;
  if (s.job.max_tokens >= 0) n = std::max<int64_t>(1, std::min(n, s.job.max_tokens - int64_t(s.out.tokens.size())));
  return n;
}

void BatchEngine::ready_draft(Sequence& s, size_t shared_vocab) {
  LMT_CHECK(*std::max_element(s.history.begin(), s.history.end()) < int32_t(shared_vocab),
            "[batch] an id past the draft model's vocabulary of ", shared_vocab);
  if (!s.draft_cache) {
    const Model& draft = *opts_.draft_model;
    s.draft_cache =
        std::make_unique<DenseKVCache>(draft.config(), draft.device(), draft.dtype(), 1, 0, 4, opts_.kv_block);
    s.draft_fed.clear();
  }
}

void BatchEngine::draft_failed(Sequence& s, const std::exception& e) {
  std::fprintf(stderr, "[batch] the draft model failed, decoding without it: %s\n", e.what());
  s.draft_cache.reset();
  s.draft_fed.clear();
  s.draft_off = true;
}

// The round of SpeculativeGenerator::generate on this sequence's caches: the draft catches up on
// history (its first round: the whole prompt, in prefill steps), proposes, the model scores
// history's last id and the proposals in one forward, and each row's choice goes through
// after_token until one disagrees or the sequence ends. Then the model's cache is cut back to
// history but its last id, as after a plain step; a sequence ending inside the round is cut to the
// rows checked so far (Sequence::verified) before its cache goes to the prompt cache. A draft that
// fails leaves the model's cache untouched: the sequence goes on in plain steps.
void BatchEngine::speculative_round(Sequence& s) {
  Model& draft = *opts_.draft_model;
  const int64_t V = model_->config().n_vocab;
  const size_t V_shared = size_t(std::min(V, draft.config().n_vocab));
  const int64_t n_draft = draft_length(s);
  std::vector<int32_t> proposals;
  std::vector<float> rows;
  try {
    ready_draft(s, V_shared);
    std::vector<int32_t> history = s.history;
    std::vector<int32_t> feed(history.begin() + ptrdiff_t(s.draft_fed.size()), history.end());
    for (int64_t i = 0; i < n_draft; ++i) {
      Tensor lg;
      for (size_t at = 0; at < feed.size(); at += size_t(opts_.prefill_step_size)) {
        const size_t n = std::min(feed.size() - at, size_t(opts_.prefill_step_size));
        std::vector<int32_t> chunk(feed.begin() + ptrdiff_t(at), feed.begin() + ptrdiff_t(at + n));
        if (longrope_reruns(draft.config(), int64_t(s.draft_fed.size()), int64_t(n)) &&
            s.draft_cache->offset() == int64_t(s.draft_fed.size())) {  // the draft's own switch (above)
          chunk.insert(chunk.begin(), s.draft_fed.begin(), s.draft_fed.end());
          s.draft_cache->reset();
          s.draft_fed.clear();
        }
        lg = draft.forward(Tensor::from_i32(chunk, {1, int64_t(chunk.size())}), *s.draft_cache, true);
        s.draft_fed.insert(s.draft_fed.end(), chunk.begin(), chunk.end());
      }
      std::vector<float> row = ops::to(lg, Device::cpu, DType::f32).to_f32_vector();
      row.resize(V_shared);  // ids past the shared vocabulary are padding rows the model cannot take
      const int32_t d = s.sampler.sample(row, history);
      proposals.push_back(d);
      history.push_back(d);
      feed.assign(1, d);
    }
  } catch (const std::exception& e) {
    draft_failed(s, e);
    return;  // no step for this sequence now; the next one is a plain step
  }
  try {
    std::vector<int32_t> ids{s.history.back()};
    ids.insert(ids.end(), proposals.begin(), proposals.end());
    const int64_t held = s.cache->offset(), scored = int64_t(ids.size());
    if (longrope_reruns(model_->config(), held, scored)) {  // the whole history again (forward_longrope)
      LMT_CHECK(held < int64_t(s.history.size()), "[batch] a cache of ", held, " rows for ", s.history.size(), " ids");
      ids.insert(ids.begin(), s.history.begin(), s.history.begin() + held);
      s.cache->reset();
    }
    Tensor lg = model_->forward(Tensor::from_i32(ids, {1, int64_t(ids.size())}), *s.cache, false);
    rows = ops::to(lg, Device::cpu, DType::f32).to_f32_vector();
    rows.erase(rows.begin(), rows.end() - ptrdiff_t(size_t(scored) * size_t(V)));  // (n_draft + 1, V)
  } catch (const std::exception& e) {
    finish(s, BatchEnd::failed, std::string("the forward failed: ") + e.what());
    return;
  }
  const int64_t accepted = accept_proposals(s, proposals, rows.data());
  std::lock_guard<std::mutex> lk(mu_);
  ++stats_.steps;
  stats_.step_rows += uint64_t(n_draft + 1);
  ++stats_.batch_counts[bucket_of(1)];
  ++stats_.batch_sum;
  ++stats_.spec_rounds;
  stats_.drafted += uint64_t(n_draft);
  stats_.accepted += uint64_t(accepted);
}

int64_t BatchEngine::accept_proposals(Sequence& s, const std::vector<int32_t>& proposals, const float* rows) {
  const size_t V = size_t(model_->config().n_vocab);
  const int64_t n_draft = int64_t(proposals.size());
  int64_t accepted = 0;
  s.out.drafted += n_draft;
  try {
    for (int64_t n = 0; n <= n_draft; ++n) {
      std::vector<float> row(rows + size_t(n) * V, rows + size_t(n + 1) * V);
      const int32_t t = s.sampler.sample(row, s.history);
      const bool agree = n < n_draft && t == proposals[size_t(n)];
      accepted += agree;
      s.out.accepted += agree;
      // Rows up to history hold it; the next one holds proposal n, which is t when they agree.
      s.verified = int64_t(s.history.size()) + (agree ? 1 : 0);
      if (!after_token(s, t) || !agree) break;
    }
  } catch (const std::exception& e) {
    if (!s.done) finish(s, BatchEnd::failed, e.what());
  }
  s.verified = -1;
  if (!s.done) {
    s.cache->trim_to(int64_t(s.history.size()) - 1);
    size_t common = 0;
    while (common < s.draft_fed.size() && common + 1 < s.history.size() && s.draft_fed[common] == s.history[common])
      ++common;
    s.draft_cache->trim_to(int64_t(common));
    s.draft_fed.resize(common);
  }
  return accepted;
}

// speculative_round for several sequences at once (none on a longrope model or draft): each draft
// cache first catches up on its sequence's history but the last id (prefill chunks, one sequence
// at a time); then the draft proposes for all of them in packed steps of one token each (a
// sequence that has proposed its n_draft drops out), and the model scores every sequence's last id
// and proposals in one packed forward that keeps every row. A draft that fails turns the draft
// off for the sequences of the round (they go on in plain steps); a forward that fails ends them.
void BatchEngine::speculative_batch(const std::vector<Sequence*>& seqs) {
  Model& draft = *opts_.draft_model;
  const int64_t V = model_->config().n_vocab;
  const size_t V_shared = size_t(std::min(V, draft.config().n_vocab));
  struct Round {
    Sequence* s;
    int64_t n_draft;
    std::vector<int32_t> history, proposals;  // history: the sequence's, then its proposals
  };
  std::vector<Round> rounds;
  for (Sequence* s : seqs) {
    const int64_t n_draft = draft_length(*s);
    try {
      ready_draft(*s, V_shared);
      const size_t upto = s->history.size() - 1;
      while (s->draft_fed.size() < upto) {
        const size_t at = s->draft_fed.size(), n = std::min(upto - at, size_t(opts_.prefill_step_size));
        std::vector<int32_t> chunk(s->history.begin() + ptrdiff_t(at), s->history.begin() + ptrdiff_t(at + n));
        draft.forward(Tensor::from_i32(chunk, {1, int64_t(n)}), *s->draft_cache, true);
        s->draft_fed.insert(s->draft_fed.end(), chunk.begin(), chunk.end());
      }
      rounds.push_back({s, n_draft, s->history, {}});
    } catch (const std::exception& e) {
      draft_failed(*s, e);  // no step for this sequence now; the next one is a plain step
    }
  }
  try {
    for (int64_t i = 0;; ++i) {
      std::vector<Round*> live;
      std::vector<int32_t> ids;
      std::vector<PackedSequence> packed;
      for (Round& r : rounds)
        if (i < r.n_draft)
          live.push_back(&r), ids.push_back(r.history.back()), packed.push_back({1, r.s->draft_cache.get()});
      if (live.empty()) break;
      const Tensor lg = draft.forward_packed(Tensor::from_i32(ids, {1, int64_t(ids.size())}), packed);
      const std::vector<float> host = ops::to(lg, Device::cpu, DType::f32).to_f32_vector();
      const size_t Vd = size_t(draft.config().n_vocab);
      for (size_t k = 0; k < live.size(); ++k) {
        Round& r = *live[k];
        r.s->draft_fed.push_back(ids[k]);
        // ids past the shared vocabulary are padding rows the model cannot take
        std::vector<float> row(host.begin() + ptrdiff_t(k * Vd), host.begin() + ptrdiff_t(k * Vd + V_shared));
        const int32_t d = r.s->sampler.sample(row, r.history);
        r.proposals.push_back(d);
        r.history.push_back(d);
      }
    }
  } catch (const std::exception& e) {
    for (Round& r : rounds) draft_failed(*r.s, e);
    return;
  }
  if (rounds.empty()) return;
  std::vector<int32_t> ids;
  std::vector<PackedSequence> packed;
  for (const Round& r : rounds) {
    ids.push_back(r.s->history.back());
    ids.insert(ids.end(), r.proposals.begin(), r.proposals.end());
    packed.push_back({int64_t(r.proposals.size()) + 1, r.s->cache.get(), true});
  }
  std::vector<float> rows;
  try {
    const Tensor lg = model_->forward_packed(Tensor::from_i32(ids, {1, int64_t(ids.size())}), packed);
    rows = ops::to(lg, Device::cpu, DType::f32).to_f32_vector();
  } catch (const std::exception& e) {
    for (Round& r : rounds) finish(*r.s, BatchEnd::failed, std::string("the forward failed: ") + e.what());
    return;
  }
  uint64_t drafted = 0, accepted = 0;
  size_t at = 0;
  for (Round& r : rounds) {
    accepted += uint64_t(accept_proposals(*r.s, r.proposals, rows.data() + at * size_t(V)));
    drafted += r.proposals.size();
    at += r.proposals.size() + 1;
  }
  std::lock_guard<std::mutex> lk(mu_);
  ++stats_.steps;
  stats_.step_rows += ids.size();
  ++stats_.batch_counts[bucket_of(rounds.size())];
  stats_.batch_sum += rounds.size();
  stats_.spec_rounds += rounds.size();
  stats_.spec_rounds_batched += rounds.size() > 1 ? rounds.size() : 0;
  stats_.drafted += drafted;
  stats_.accepted += accepted;
}

void BatchEngine::finish(Sequence& s, BatchEnd end, std::string error) {
  if (s.done) return;
  s.done = true;
  s.out.end = end;
  s.out.error = std::move(error);
  s.graph.reset();
  s.draft_cache.reset();
  keep_in_prompt_cache(s);  // moves the cache into the prompt cache, when there is one
  s.cache.reset();          // the sequence's KV memory goes back to the allocator now
  if (s.job.on_done) {
    try {
      s.job.on_done(s.out);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "[batch] on_done threw: %s\n", e.what());
    }
  }
}

}  // namespace lmtune
