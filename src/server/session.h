// The generation session: the resident model driven by a continuous-batching engine
// (runtime/batch_engine.h), a request's prompt built through the chat template, admission (a
// bounded number of requests in flight), and each request generated with its own sampler, stop
// strings, length, deadline and logprobs, streamed to its connection's thread as text deltas.
// A request naming another model folder or adapters (mlx-lm's per-request `model` / `adapters`)
// waits until the requests on the resident one have ended, then the session loads that pair
// (through the loader the CLI gives) and switches the engine to it: one model resident at a time.
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
#include <utility>
#include <vector>

#include "models/model.h"
#include "runtime/batch_engine.h"
#include "runtime/generate.h"
#include "runtime/json_constraint.h"
#include "server/request.h"
#include "tokenizer/chat_template.h"

namespace lmtune::server {

using Clock = std::chrono::steady_clock;

// The Hugging Face cache's models a request's `model` may name (as mlx-lm's /v1/models lists them:
// repos whose main snapshot holds config.json, tokenizer_config.json and the weights, here a single
// model.safetensors too), as (repo id, last modified), sorted by id.
std::vector<std::pair<std::string, int64_t>> hub_cache_models();

// What a request asks to run on: folders, canonical ("" = none for adapters and draft).
struct ResidentKey {
  std::string model_dir, adapters, draft;
  bool operator==(const ResidentKey&) const = default;
};

// One loaded (model folder, adapters, draft model) triple and what depends on its tokenizer.
struct Resident {
  std::string model_dir;  // the folder, canonical (the served one, or a request's `model`)
  std::string adapters;   // the adapter folder, canonical; "" = none
  std::string draft_dir;  // the draft model's folder, canonical; "" = none
  std::shared_ptr<Model> model;
  std::shared_ptr<Model> draft;      // speculative decoding's proposer (shares the tokenizer), or null
  int32_t draft_tokenizer_size = 0;  // its tokenizer's vocabulary (a resident sharing the draft checks it)
  ResidentKey key() const { return {model_dir, adapters, draft_dir}; }
  std::shared_ptr<const ChatTemplate> chat;  // the tokenizer and its templates
  std::vector<int32_t> eos_ids;
  std::vector<int32_t> xtc_special_tokens;  // never cut by XTC: the "\n" ids and the EOS ids (mlx-lm's)
  int64_t max_prompt_tokens = 0;            // longer prompts are refused (400 context_length_exceeded); 0 = no limit
  // The prompt cache's key: its entries serve this pair only.
  std::string cache_key() const { return model_dir + "\n" + adapters; }
  // Each vocabulary token's bytes for constrained decoding, built by the first request that needs them.
  std::once_flag token_table_once;
  std::shared_ptr<const TokenTable> token_table;
  // The system segment's ids (Session::cache_points) by what renders them (the leading system
  // messages, tools, template kwargs): a conversation's requests repeat its system prompt, so its head
  // is rendered and tokenized once. At most kSystemHeads entries, the oldest dropped first.
  static constexpr size_t kSystemHeads = 32;
  mutable std::mutex system_heads_mu;
  mutable std::map<size_t, std::vector<int32_t>> system_heads;  // by a hash of those inputs
  mutable std::deque<size_t> system_head_order;
};

// Loads a key's folders into a Resident; throws saying why it cannot (a draft whose tokenizer
// differs in size from the model's included). `resident` (or null): the one loaded now, whose
// model the new one shares when only the draft differs, and the draft when only the model does (no
// second copy of the weights).
using ModelLoader =
    std::function<std::shared_ptr<Resident>(const ResidentKey& key, const std::shared_ptr<Resident>& resident)>;

struct ServedModel {
  std::shared_ptr<Resident> resident;      // the model served at startup (--model, --adapter-path, --draft-model)
  ModelLoader loader;                      // null: requests may not name other models or adapters
  std::string id;                          // the name /v1/models lists and responses carry
  std::string chat_template;               // --chat-template: a template name or source; "" = the tokenizer's
  bool use_default_chat_template = false;  // no template in the tokenizer: ChatML, as HF's old default
  int64_t prefill_step_size = 2048;
  int64_t decode_concurrency = 32;        // sequences running together (prefilling or decoding)
  int64_t prompt_concurrency = 8;         // of those, prefilling at once
  int64_t max_queued = 64;                // requests admitted beyond decode_concurrency, waiting for a slot
  PromptCacheLimits prompt_cache{10, 0};  // --prompt-cache-size / --prompt-cache-bytes (0 entries: off)
  // --num-draft-tokens: with a draft model (the resident's, --draft-model's or a request's
  // draft_model), a request decoding alone decodes speculatively, unless it is constrained
  // (response_format, a forced tool call) or sampled with a seed (its text then does not depend on
  // the load; see BatchEngineOptions).
  int64_t num_draft_tokens = 3;
};

struct TokenLogprob {
  struct Alt {
    int32_t id;
    std::string token;
    float logprob;
  };
  int32_t id;
  std::string token;  // the token decoded alone (a partial UTF-8 character shows as U+FFFD)
  float logprob;
  std::vector<Alt> top;    // the most likely alternatives, best first
  size_t text_offset = 0;  // bytes of the tokens' text before this one (completions' text_offset)
};

// A piece of the answer: text released since the last delta and the tokens generated meanwhile.
struct Delta {
  std::string text;
  std::vector<TokenLogprob> logprobs;
};

struct GenerationResult {
  std::string text;
  std::vector<TokenLogprob> logprobs;
  std::string finish_reason;  // "stop" (EOS or a stop string) or "length" (max_tokens or the deadline)
  int64_t prompt_tokens = 0, completion_tokens = 0;
  int64_t cached_tokens = 0;          // of the prompt tokens, those taken from the prompt cache (not prefilled)
  double ttft_s = 0;                  // from the request's arrival to its first generated token
  double decode_tps = 0;              // completion tokens per second after the first
  int64_t drafted = 0, accepted = 0;  // speculative rounds: draft tokens scored, and accepted
  bool cancelled = false;             // on_delta returned false (the client went away)
  bool timed_out = false;             // the deadline passed while decoding
};

class Session {
 public:
  struct Job;  // one request's state, shared by the engine's callbacks and the connection's thread

  // Held from a request's admission until its answer is sent (or the client left): at most
  // decode_concurrency + max_queued at once.
  class Slot {
   public:
    Slot() = default;
    explicit Slot(std::atomic<int64_t>* count) : count_(count) {}
    Slot(Slot&& o) noexcept : count_(std::exchange(o.count_, nullptr)) {}
    Slot& operator=(Slot&& o) noexcept {
      release();
      count_ = std::exchange(o.count_, nullptr);
      return *this;
    }
    ~Slot() { release(); }
    void release() {
      if (count_) --*count_, count_ = nullptr;
    }

   private:
    std::atomic<int64_t>* count_ = nullptr;
  };

  // A request's hold on the resident model, from acquire() until its answer ends: no switch to
  // another model happens while one is held.
  class Lease {
   public:
    Lease() = default;
    Lease(Session* s, std::shared_ptr<Resident> r) : session_(s), resident_(std::move(r)) {}
    Lease(Lease&& o) noexcept : session_(std::exchange(o.session_, nullptr)), resident_(std::move(o.resident_)) {}
    Lease& operator=(Lease&& o) noexcept {
      release();
      session_ = std::exchange(o.session_, nullptr);
      resident_ = std::move(o.resident_);
      return *this;
    }
    ~Lease() { release(); }
    void release();
    const Resident& resident() const { return *resident_; }
    const std::shared_ptr<Resident>& shared() const { return resident_; }

   private:
    Session* session_ = nullptr;
    std::shared_ptr<Resident> resident_;
  };

  explicit Session(ServedModel served);
  ~Session();
  const ServedModel& served() const { return served_; }

  // The (model folder, adapters, draft) triple r asks for: its `model` (absent, "default_model",
  // the served id or the served folder: the served model; else a model folder here, or a Hub id in
  // the Hugging Face cache), `adapters` (absent: the served model's --adapter-path, none for
  // another folder; "": none; else an adapter folder) and `draft_model` (absent or
  // "default_model": --draft-model's; "": none; else a model folder or cached Hub id). Throws
  // ApiError 404 (model_not_found, adapters_not_found) for a name that is no folder here, 400 for
  // a folder without config.json / adapter_config.json.
  ResidentKey key_for(const CompletionRequest& r) const;

  // Waits (arrival order) until the resident model is r's pair and holds it: when it is another,
  // once every lease on that one has ended the pair is loaded and the engine switched to it.
  // Throws ApiError 503 server_busy when `deadline` passes first, 400 when the load fails (the
  // resident model stays), and key_for's errors.
  Lease acquire(const CompletionRequest& r, Clock::time_point deadline);

  // The request's prompt ids (chat: the template's render, or mlx-lm's role prefixes when the
  // model has no template). Needs no lock. Throws ApiError 400 when the template refuses the
  // messages, or the prompt is empty or longer than max_prompt_tokens.
  std::vector<int32_t> prompt_ids(const Resident& m, const CompletionRequest& r) const;
  // Where the engine keeps a checkpoint of ids' cache (BatchJob::cache_points): the ends of a
  // chat prompt's system and user segments, as mlx-lm's segment entries (prompt_segments.h).
  std::vector<int64_t> cache_points(const Resident& m, const CompletionRequest& r,
                                    const std::vector<int32_t>& ids) const;

  // A slot, or ApiError 503 server_busy at once when every one is taken.
  Slot admit();

  // The source of the chat template that renders r's messages ("" when mlx-lm's role prefixes do).
  std::string template_source(const Resident& m, const CompletionRequest& r) const;

  // Hands the request to the engine (running lease's model) and waits until it starts (its
  // prefill begins). Throws ApiError 503 server_busy when `deadline` passes first (it never ran).
  std::shared_ptr<Job> start(const Lease& lease, const CompletionRequest& r, const std::vector<int32_t>& ids,
                             Clock::time_point arrival, Clock::time_point deadline);

  // On the caller's thread until the job ends: on_delta gets each released piece (and the
  // logprobs of the tokens since the last one) in order; on_prefill (optional) gets (prompt tokens
  // fed, prompt tokens) after each prefill step. Either returning false stops the generation at
  // the engine's next step (cancelled). Throws when the engine failed the job.
  GenerationResult run(Job& job, const std::function<bool(const Delta&)>& on_delta,
                       const std::function<bool(int64_t, int64_t)>& on_prefill = {});
  // The client left before run(): the job stops at the engine's next step.
  static void abandon(Job& job);

  BatchStats batch_stats() const { return engine_->stats(); }
  int64_t in_flight() const { return admitted_; }
  uint64_t model_switches() const { return switches_; }

 private:
  // messages through the chat template (or mlx-lm's role prefixes), tokenized as generate does.
  std::vector<int32_t> chat_ids(const Resident& m, const CompletionRequest& r, const nlohmann::ordered_json& messages,
                                bool add_generation_prompt) const;
  static TokenLogprob logprob_entry(const Tokenizer& tok, int32_t id, const std::vector<float>& logprobs, int top);

  ServedModel served_;
  std::atomic<int64_t> admitted_{0};
  std::unique_ptr<BatchEngine> engine_;
  // The resident model and its leases (under swap_mu_): requests wait in ticket order, and only
  // the first waiter may take a lease or, with none held, load its pair.
  std::mutex swap_mu_;
  std::condition_variable swap_cv_;
  std::shared_ptr<Resident> current_;
  ResidentKey served_key_;  // the startup triple, what requests get by default
  int64_t leases_ = 0;
  bool loading_ = false;
  uint64_t next_ticket_ = 0;
  std::deque<uint64_t> waiters_;
  std::atomic<uint64_t> switches_{0};
};

}  // namespace lmtune::server
