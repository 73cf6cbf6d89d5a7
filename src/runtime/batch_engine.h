// Continuous batching: one scheduler thread owns the model and runs every admitted sequence
// together. Each step packs one token of every decoding sequence and prefill chunks of new prompts
// into one Model::forward_packed (one weight read per step serves them all); requests join and
// leave between steps, each with its own sampler, length, deadline and KV cache (batch 1, growing
// in blocks of kv_block positions, freed when the sequence ends or moved into the prompt cache,
// runtime/prompt_cache.h, from which a later prompt sharing a prefix starts with a copy). With a
// draft model, a sequence decoding alone decodes speculatively.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "models/model.h"
#include "runtime/prompt_cache.h"
#include "runtime/sampler.h"

namespace lmtune {

class BatchGraph;

struct BatchEngineOptions {
  int64_t decode_concurrency = 32;   // sequences admitted at once (prefilling or decoding)
  int64_t prompt_concurrency = 8;    // of those, at most this many prefilling at once
  int64_t prefill_step_size = 2048;  // prompt tokens per step, over all prefilling sequences
  int64_t kv_block = 256;            // a sequence's cache grows by this many positions at a time
  // CUDA: a step of decoding rows only replays a recorded one (runtime/decode_graph.h for a
  // sequence alone, runtime/batch_graph.h for 2 to 64 together).
  bool decode_graph = true;
  // The prompt cache (runtime/prompt_cache.h): a finished sequence's KV cache is kept under its
  // tokens; a new prompt sharing a prefix starts from a copy of it. max_entries 0 (here the
  // default; the server's is 10): off.
  PromptCacheLimits prompt_cache{0, 0};
  // Speculative decoding (mlx-lm's rounds, as runtime/speculative.h): when a step would decode one
  // sequence alone, and its job allows it, draft_model proposes num_draft_tokens tokens and the
  // model scores them in one forward, keeping the longest agreeing prefix plus its own next token.
  // 2 to spec_batch_max sequences decoding together, each allowed to, take the rounds together:
  // the draft proposes for all of them in packed steps and the model scores every sequence's
  // proposals in one packed forward (longrope models excepted: plain batched steps). More, or a
  // mix, take plain batched steps. null: off. The draft must outlive the engine and share the
  // model's tokenizer (it proposes only ids below both n_vocab).
  Model* draft_model = nullptr;
  int64_t num_draft_tokens = 3;
  int64_t spec_batch_max = 8;
  // The prompt cache's key for this model's entries (PromptCache: entries of one key never serve
  // another); switch_model sets a new one.
  std::string cache_key;
};

// How a sequence ended.
enum class BatchEnd {
  eos,        // an EOS id was chosen (finish "stop")
  stopped,    // on_token or on_prefill returned false (finish "stop")
  length,     // max_tokens reached (finish "length")
  deadline,   // the deadline passed after it started (finish "length")
  expired,    // the deadline passed while it waited for a slot: it never started
  cancelled,  // BatchTicket::cancel() (finish "stop")
  failed,     // the forward threw (error says why), or the engine shut down before it ended
};

struct BatchOutcome {
  BatchEnd end = BatchEnd::failed;
  std::vector<int32_t> tokens;  // generated ids, a final EOS left out
  int64_t prompt_fed = 0;       // prompt tokens in the sequence's cache: prompt_cached + those prefilled
  int64_t prompt_cached = 0;    // of them, copied from the prompt cache at admission (not prefilled)
  int64_t drafted = 0;          // speculative rounds: draft tokens the model scored
  int64_t accepted = 0;         // of them, those the model chose too (emitted from the draft)
  std::string error;
  std::string finish_reason() const;  // OpenAI's: "stop" or "length" ("" for expired / failed)
};

// A request. The callbacks run on the scheduler thread between steps: keep them short (no
// blocking I/O), they hold up every running sequence.
struct BatchJob {
  std::vector<int32_t> prompt;  // non-empty, ids inside the vocabulary
  SamplerOptions sampler;
  uint64_t seed = 0;
  int64_t max_tokens = 100;  // < 0: until an EOS id
  std::vector<int32_t> eos_ids;
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  std::function<void()> on_start;                               // admitted: prefill begins
  std::function<bool(int64_t done, int64_t total)> on_prefill;  // after each of its prefill chunks
  // Each generated id except a final EOS; the sampler's last_logprobs() are that token's.
  std::function<bool(int32_t token, const Sampler& sampler)> on_token;
  std::function<void(const BatchOutcome&)> on_done;  // exactly once
  std::shared_ptr<LogitsConstraint> constraint;      // masks the job's logits before sampling, or null
  // May decode speculatively when alone (the engine has a draft model). A job with a constraint
  // never does: the constraint's state cannot be rewound past rejected proposals.
  bool speculative = true;
  int64_t num_draft_tokens = 0;  // proposals per round; 0: the engine's num_draft_tokens
  // Prompt lengths (0 < n < prompt size) where the prefill stops a chunk and, with a prompt cache,
  // keeps a copy of the cache so far as a checkpoint entry (PromptCache::insert): the end of a
  // chat's system prompt, reusable by other conversations while this one still runs.
  std::vector<int64_t> cache_points;
};

// A submitted job's handle: cancel() ends it at the next step (on_done with BatchEnd::cancelled).
class BatchTicket {
 public:
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

 private:
  std::atomic<bool> cancelled_{false};
};

// Counters for the server's /metrics; a consistent snapshot.
struct BatchStats {
  int64_t waiting = 0, prefilling = 0, decoding = 0;
  uint64_t steps = 0;                    // forward steps run
  uint64_t step_rows = 0;                // tokens over all steps
  uint64_t graph_steps = 0;              // of the steps, recorded-graph replays (alone or n together)
  static constexpr int kBuckets = 9;     // sequences per step <= 1, 2, 4, ..., 128, more
  uint64_t batch_counts[kBuckets] = {};  // per bucket, not cumulative; over: the last
  uint64_t batch_sum = 0;
  // Where a step's wall time goes: the forward (launches, the device's work and the logits'
  // copy to the host, which waits for it) and the host's work on its rows after it (sampling, stop
  // checks, the jobs' callbacks); and of the steps, those that fed decode tokens only (no prompt
  // chunk), with their whole wall time: their mean is a decoding step's length.
  double forward_seconds = 0, host_seconds = 0;
  uint64_t decode_steps = 0;
  double decode_step_seconds = 0;
  // The prompt cache: lookups at admission, hits among them and the prompt tokens they supplied;
  // entries dropped for the bounds; the entries and bytes held now.
  uint64_t cache_lookups = 0, cache_hits = 0, cache_tokens = 0, cache_evictions = 0;
  int64_t cache_entries = 0, cache_bytes = 0;
  // Speculative decoding: rounds run (a sequence's each; a round of several sequences together is
  // also one step of them all), draft tokens scored and, of them, accepted; rounds run together
  // with other sequences'.
  uint64_t spec_rounds = 0, drafted = 0, accepted = 0, spec_rounds_batched = 0;
};

class BatchEngine {
 public:
  // model must outlive the engine; the engine's thread is its only user meanwhile.
  BatchEngine(Model& model, BatchEngineOptions opts);
  ~BatchEngine();  // unfinished jobs end as failed ("the engine stopped")
  BatchEngine(const BatchEngine&) = delete;
  BatchEngine& operator=(const BatchEngine&) = delete;

  // Queues a job (it starts when a slot is free, in arrival order). Throws on an empty prompt or
  // ids outside the vocabulary, before queueing.
  std::shared_ptr<BatchTicket> submit(BatchJob job);
  BatchStats stats() const;
  // Makes `model` (outliving the engine, or the next switch) the one every later job runs on, its
  // prompt cache entries kept under cache_key; the previous model's entries stay under theirs.
  // Waits until the scheduler has applied it, which it does once no job is queued or running: the
  // caller must stop submitting jobs for the old model first, and submit none meanwhile (throws).
  // draft (null: none) replaces the draft model alike.
  void switch_model(Model& model, std::string cache_key, Model* draft);
  const BatchEngineOptions& options() const { return opts_; }

 private:
  struct Sequence;
  struct Pending {
    BatchJob job;
    std::shared_ptr<BatchTicket> ticket;
  };
  void loop();
  void admit(std::vector<std::unique_ptr<Sequence>>& active, std::deque<Pending>& waiting);
  // stats_'s waiting / decoding / prefilling from the scheduler's lists (under mu_).
  void update_gauges(const std::vector<std::unique_ptr<Sequence>>& active, const std::deque<Pending>& waiting);
  // One forward over the active sequences; sequences that end are finished and removed.
  void step(std::vector<std::unique_ptr<Sequence>>& active);
  // Whether s (decoding alone) takes a speculative round, and the round (its tokens through
  // after_token, as a plain step's).
  bool drafts(const Sequence& s) const;
  // A round's draft length: the request's or the engine's, at most the tokens left to max_tokens.
  int64_t draft_length(const Sequence& s) const;
  // Before a round: s's history within the ids both vocabularies share (throws otherwise), and its
  // draft cache, made on the first round.
  void ready_draft(Sequence& s, size_t shared_vocab);
  // A draft that failed: s goes on in plain steps, without a draft.
  static void draft_failed(Sequence& s, const std::exception& e);
  void speculative_round(Sequence& s);
  // The rounds of several decoding sequences at once (options' spec_batch_max).
  void speculative_batch(const std::vector<Sequence*>& seqs);
  // A round's end for s: the model's rows (n_draft + 1 of V logits: s's last id and each proposal)
  // checked against the proposals, each choice through after_token until one disagrees or s ends;
  // then the model's and the draft's caches cut back. Returns the proposals accepted.
  int64_t accept_proposals(Sequence& s, const std::vector<int32_t>& proposals, const float* rows);
  bool after_prefill_chunk(Sequence& s, const float* logits);  // false: the sequence ended
  bool after_token(Sequence& s, int32_t token);                // false: the sequence ended
  void finish(Sequence& s, BatchEnd end, std::string error = {});
  // Admission's cache: a copy of the prompt cache's longest prefix of the prompt, or a fresh one.
  std::unique_ptr<DenseKVCache> cache_for(const std::vector<int32_t>& prompt, int64_t& cached);
  void keep_in_prompt_cache(Sequence& s);
  // At a cache point of s's prompt (its cache holds exactly prompt_fed tokens): a checkpoint entry.
  void keep_checkpoint(Sequence& s);  // a sequence ending: its cache into the prompt cache
  // The ids s has seen, in order: the prompt's first prompt_fed, then (once the whole prompt is
  // in) every generated one. Its cache holds a prefix of them.
  static std::vector<int32_t> known_ids(const Sequence& s);
  // The eager forward of a step on a longrope model (per sequence, the step's ids in packed).
  std::vector<float> forward_longrope(const std::vector<Sequence*>& in_step, const std::vector<int32_t>& ids,
                                      const std::vector<PackedSequence>& packed);

  Model* model_;  // written by the scheduler under mu_ (switch_model); read there, or under mu_
  BatchEngineOptions opts_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable switched_;  // switch_to_ applied (or the engine stopped)
  Model* switch_to_ = nullptr;        // under mu_: the model switch_model asked for
  Model* switch_draft_ = nullptr;     // under mu_: and its draft (null: none)
  std::string switch_key_;            // under mu_
  std::deque<Pending> incoming_;      // submitted, not yet seen by the scheduler
  bool stop_ = false;
  BatchStats stats_;          // under mu_
  PromptCache prompt_cache_;  // the scheduler thread's only
  std::string cache_key_;     // the scheduler thread's only: the current model's prompt cache key
  // The scheduler thread's only: recorded batched decoding steps by their sequence count (at most
  // kBatchGraphs kept), and whether recording one failed (then batched steps stay eager).
  static constexpr size_t kBatchGraphs = 16;
  std::map<int64_t, std::unique_ptr<BatchGraph>> batch_graphs_;
  bool batch_graph_off_ = false;
  std::thread thread_;
};

}  // namespace lmtune
