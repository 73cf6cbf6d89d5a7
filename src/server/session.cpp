// Requests through the batching engine: each with a fresh sampler (its options and seed), its own
// detokenizer, stop matcher and logprobs; admission bounds the requests in flight.
#include "server/session.h"

#include <algorithm>
#include <cctype>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <numeric>
#include <random>

#include "core/error.h"
#include "io/hub.h"
#include "server/api_error.h"
#include "server/prompt_segments.h"
#include "server/stop_matcher.h"
#include "tokenizer/streaming_detokenizer.h"

namespace lmtune::server {

namespace {

// transformers' former default_chat_template (ChatML), for --use-default-chat-template.
const char kChatMl[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

// mlx-lm's convert_chat: role prefixes for a model without a chat template.
std::string role_mapping_prompt(const nlohmann::ordered_json& messages) {
  std::string out;
  for (const auto& m : messages) {
    const std::string role = m.value("role", "");
    std::string prefix = role == "system"      ? "ASSISTANT's RULE: "
                         : role == "user"      ? "USER: "
                         : role == "assistant" ? "ASSISTANT: "
                                               : "";
    const auto it = m.find("content");
    std::string content = it != m.end() && it->is_string() ? it->get<std::string>() : "";
    out += prefix + content + "\n";
  }
  out += "ASSISTANT: ";
  while (!out.empty() && std::isspace(static_cast<unsigned char>(out.back()))) out.pop_back();
  return out;
}

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

}  // namespace

Session::Session(ServedModel served) : served_(std::move(served)) {
  LMT_CHECK(served_.resident && served_.resident->model && served_.resident->chat,
            "[server] the session needs a model and its tokenizer");
  LMT_CHECK(served_.max_queued >= 0, "[server] max_queued must be >= 0, got ", served_.max_queued);
  BatchEngineOptions o;
  o.decode_concurrency = served_.decode_concurrency;
  o.prompt_concurrency = served_.prompt_concurrency;
  o.prefill_step_size = served_.prefill_step_size;
  o.prompt_cache = served_.prompt_cache;
  o.draft_model = served_.resident->draft.get();
  o.num_draft_tokens = served_.num_draft_tokens;
  o.cache_key = served_.resident->cache_key();
  served_key_ = served_.resident->key();
  current_ = std::move(served_.resident);  // not kept apart: a switch frees it
  engine_ = std::make_unique<BatchEngine>(*current_->model, o);
}

// The engine first: its thread runs on current_'s model until it stops.
Session::~Session() { engine_.reset(); }

std::vector<std::pair<std::string, int64_t>> hub_cache_models() {
  namespace fs = std::filesystem;
  HubSettings hs = HubSettings::from_env();
  hs.offline = true;
  std::vector<std::pair<std::string, int64_t>> out;
  for (const CachedRepo& repo : scan_hub_cache(hs.cache_dir)) {
    std::error_code ec;
    std::string snap;
    try {
      snap = resolve_model(repo.repo_id, hs);  // refs/main's snapshot, checked to stay in the cache
    } catch (const Error&) {
      continue;  // no main snapshot, or one that leads out of the cache
    }
    const fs::path d(snap);
    if (fs::is_regular_file(d / "config.json", ec) && fs::is_regular_file(d / "tokenizer_config.json", ec) &&
        (fs::is_regular_file(d / "model.safetensors.index.json", ec) ||
         fs::is_regular_file(d / "model.safetensors", ec)))
      out.emplace_back(repo.repo_id, repo.last_modified);
  }
  return out;
}

Session::Slot Session::admit() {
  const int64_t limit = served_.decode_concurrency + served_.max_queued;
  if (++admitted_ > limit) {
    --admitted_;
    throw ApiError(503,
                   "the server is busy: " + std::to_string(limit) +
                       " requests are in flight (--decode-concurrency + --max-queued-requests); retry later",
                   "", "server_busy", "server_error");
  }
  return Slot(&admitted_);
}

namespace {

// A request's model folder or Hub id (for `param`: model or draft_model) as a canonical folder
// holding config.json; ApiError 404 model_not_found otherwise.
std::string model_folder(const std::string& name, const std::string& param, const std::string& served_id) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path p(name);
  if (!fs::is_directory(p, ec) && is_hub_model_name(name)) {
    // A Hub id (org/name[@revision]) from the Hugging Face cache only: a request never makes the
    // server download (the cache is filled by `lmtune generate --model ...` or huggingface-cli).
    HubSettings hs = HubSettings::from_env();
    hs.offline = true;
    try {
      p = resolve_model(name, hs);
    } catch (const Error& e) {
      throw ApiError(404,
                     "The model '" + name +
                         "' is not in the Hugging Face cache (the server loads Hub ids from the cache only, never "
                         "downloading; fetch it first, e.g. `lmtune generate --model " +
                         name + " -p hi`): " + e.what(),
                     param, "model_not_found");
    }
  }
  if (!fs::is_directory(p, ec))
    throw ApiError(404,
                   "The model '" + name + "' does not exist (this server serves " + served_id +
                       ", and loads other models from local folders or the Hugging Face cache)",
                   param, "model_not_found");
  if (!fs::is_regular_file(p / "config.json", ec))
    throw ApiError(404, "The model folder '" + name + "' has no config.json", param, "model_not_found");
  return fs::canonical(p, ec).string();
}

}  // namespace

ResidentKey Session::key_for(const CompletionRequest& r) const {
  namespace fs = std::filesystem;
  ResidentKey key = served_key_;
  std::error_code ec;
  const bool named = !r.model.empty() && r.model != "default_model" && r.model != served_.id;
  if (named) {
    key.model_dir = model_folder(r.model, "model", served_.id);
    if (key.model_dir != served_key_.model_dir) key.adapters.clear();  // another model: no adapters unless named
  }
  if (r.adapters) {
    key.adapters.clear();
    if (!r.adapters->empty()) {
      const fs::path p(*r.adapters);
      if (!fs::is_directory(p, ec))
        throw ApiError(404, "The adapter folder '" + *r.adapters + "' does not exist", "adapters",
                       "adapters_not_found");
      if (!fs::is_regular_file(p / "adapter_config.json", ec))
        throw ApiError(400, "The folder '" + *r.adapters + "' has no adapter_config.json (not an adapter folder)",
                       "adapters", "invalid_value");
      key.adapters = fs::canonical(p, ec).string();
    }
  }
  if (r.draft_model && *r.draft_model != "default_model")
    key.draft = r.draft_model->empty() ? "" : model_folder(*r.draft_model, "draft_model", served_.id);
  return key;
}

void Session::Lease::release() {
  if (!session_) return;
  {
    std::lock_guard<std::mutex> lk(session_->swap_mu_);
    --session_->leases_;
  }
  session_->swap_cv_.notify_all();
  session_ = nullptr;
  resident_.reset();
}

Session::Lease Session::acquire(const CompletionRequest& r, Clock::time_point deadline) {
  const ResidentKey key = key_for(r);
  std::unique_lock<std::mutex> lk(swap_mu_);
  const uint64_t me = next_ticket_++;
  waiters_.push_back(me);
  auto leave = [&] {
    waiters_.erase(std::find(waiters_.begin(), waiters_.end(), me));
    swap_cv_.notify_all();
  };
  for (;;) {
    if (!loading_ && waiters_.front() == me) {
      if (current_->key() == key) {
        leave();
        ++leases_;
        return Lease(this, current_);
      }
      if (leases_ == 0) {
        if (!served_.loader) {
          leave();
          throw ApiError(400, "this server serves one model and its adapters only",
                         key.adapters.empty() ? "model" : "adapters", "unsupported_parameter");
        }
        // The first waiter, nothing running: load the pair (the others wait meanwhile), then
        // switch the idle engine to it. The resident model stays until the new one is loaded.
        loading_ = true;
        lk.unlock();
        std::shared_ptr<Resident> next;
        std::string error;
        try {
          next = served_.loader(key, current_);
          LMT_CHECK(next && next->model && next->chat, "[server] the loader returned no model");
          engine_->switch_model(*next->model, next->cache_key(), next->draft.get());
        } catch (const std::exception& e) {
          error = e.what();
          next.reset();
        }
        lk.lock();
        loading_ = false;
        if (!next) {
          leave();
          const bool draft_asked = r.draft_model && !r.draft_model->empty() && *r.draft_model != "default_model";
          throw ApiError(400,
                         "cannot load model " + key.model_dir +
                             (key.adapters.empty() ? "" : " with adapters " + key.adapters) +
                             (key.draft.empty() ? "" : " and draft model " + key.draft) + ": " + error,
                         r.adapters && !r.adapters->empty() ? "adapters"
                         : draft_asked                      ? "draft_model"
                                                            : "model",
                         "invalid_value");
        }
        current_ = std::move(next);
        ++switches_;
        leave();
        ++leases_;
        return Lease(this, current_);
      }
    }
    if (swap_cv_.wait_until(lk, deadline) == std::cv_status::timeout && Clock::now() >= deadline) {
      leave();
      throw ApiError(503, "the server is busy: the model it asks for was not loaded before --request-timeout", "",
                     "server_busy", "server_error");
    }
  }
}

std::vector<int32_t> Session::chat_ids(const Resident& m, const CompletionRequest& r,
                                       const nlohmann::ordered_json& messages, bool add_generation_prompt) const {
  const Tokenizer& tok = m.chat->tokenizer();
  std::string text;
  std::string source = served_.chat_template;
  if (source.empty() && tok.chat_templates().empty() && served_.use_default_chat_template) source = kChatMl;
  if (!source.empty() || !tok.chat_templates().empty()) {
    ChatTemplateOptions o;
    o.add_generation_prompt = add_generation_prompt;
    o.kwargs = r.template_kwargs;
    o.chat_template = source;
    o.tools = r.tools;
    text = m.chat->render(messages, o);
  } else {
    text = role_mapping_prompt(messages);
  }
  // As generate: no second BOS when the template already starts with it.
  const bool add_special = tok.bos_token().empty() || text.rfind(tok.bos_token(), 0) != 0;
  return tok.encode(text, add_special);
}

std::vector<int64_t> Session::cache_points(const Resident& m, const CompletionRequest& r,
                                           const std::vector<int32_t>& ids) const {
  // mlx-lm's segments (prompt_segments.h), for a chat whose last message is the user's. The system
  // head: the leading system (or developer) messages and an empty user message, rendered as the
  // start of a prompt (a template that refuses that gives no system segment).
  if (r.endpoint != Endpoint::chat || r.messages.empty() || r.messages.back().value("role", "") != "user") return {};
  nlohmann::ordered_json head = nlohmann::ordered_json::array();
  for (const auto& msg : r.messages) {
    const std::string role = msg.value("role", "");
    if (role != "system" && role != "developer") break;
    head.push_back(msg);
  }
  std::vector<int32_t> system_head;
  if (!head.empty()) {
    head.push_back({{"role", "user"}, {"content", ""}});
    // Keyed by a hash of what renders it: 32 request bodies' worth of strings is not kept (a collision
    // would only move a checkpoint: segment_ends cuts at the first difference from the prompt).
    const size_t key =
        std::hash<std::string>{}(head.dump() + '\x1f' + r.tools.dump() + '\x1f' + r.template_kwargs.dump());
    bool known = false;
    {
      std::lock_guard<std::mutex> lock(m.system_heads_mu);
      auto it = m.system_heads.find(key);
      known = it != m.system_heads.end();
      if (known) system_head = it->second;
    }
    if (!known) {
      try {
        system_head = chat_ids(m, r, head, false);
      } catch (const std::exception&) {  // a template that refuses the head: no system segment (remembered as such)
      }
      std::lock_guard<std::mutex> lock(m.system_heads_mu);
      if (m.system_heads.emplace(key, system_head).second) {
        m.system_head_order.push_back(key);
        if (m.system_head_order.size() > Resident::kSystemHeads) {
          m.system_heads.erase(m.system_head_order.front());
          m.system_head_order.pop_front();
        }
      }
    }
  }
  return segment_ends(ids, system_head, think_start_ids(m.chat->tokenizer()));
}

std::vector<int32_t> Session::prompt_ids(const Resident& m, const CompletionRequest& r) const {
  const Tokenizer& tok = m.chat->tokenizer();
  std::vector<int32_t> ids;
  if (r.endpoint == Endpoint::completions) {
    ids = r.prompt_ids.empty() ? tok.encode(r.prompt, true) : r.prompt_ids;
  } else {
    try {
      ids = chat_ids(m, r, r.messages, true);
    } catch (const std::exception& e) {
      throw ApiError(400, std::string("the chat template refused these messages: ") + e.what(), "messages");
    }
  }
  const char* param = r.endpoint == Endpoint::chat ? "messages" : "prompt";
  if (ids.empty()) throw ApiError(400, "the prompt is empty (no tokens to predict from)", param);
  if (m.max_prompt_tokens > 0 && int64_t(ids.size()) > m.max_prompt_tokens)
    throw ApiError(400,
                   "the prompt has " + std::to_string(ids.size()) + " tokens; this server takes at most " +
                       std::to_string(m.max_prompt_tokens) + " (--max-prompt-tokens)",
                   param, "context_length_exceeded");
  return ids;
}

std::string Session::template_source(const Resident& m, const CompletionRequest& r) const {
  const Tokenizer& tok = m.chat->tokenizer();
  std::string source = served_.chat_template;
  if (source.empty() && tok.chat_templates().empty() && served_.use_default_chat_template) source = kChatMl;
  if (source.empty() && tok.chat_templates().empty()) return "";
  ChatTemplateOptions o;
  o.chat_template = source;
  o.tools = r.tools;
  try {
    return m.chat->select_template(o);
  } catch (const std::exception&) {
    return "";
  }
}

TokenLogprob Session::logprob_entry(const Tokenizer& tok, int32_t id, const std::vector<float>& lp, int top) {
  TokenLogprob e{id, tok.decode(&id, 1), id >= 0 && size_t(id) < lp.size() ? lp[size_t(id)] : 0.f, {}};
  if (top > 0 && !lp.empty()) {
    std::vector<int32_t> order(lp.size());
    std::iota(order.begin(), order.end(), 0);
    const size_t k = std::min(size_t(top), order.size());
    std::partial_sort(order.begin(), order.begin() + long(k), order.end(),
                      [&](int32_t a, int32_t b) { return lp[size_t(a)] > lp[size_t(b)]; });
    for (size_t i = 0; i < k; ++i) {
      const int32_t t = order[i];
      e.top.push_back({t, tok.decode(&t, 1), lp[size_t(t)]});
    }
  }
  return e;
}

// The scheduler's side (the engine's callbacks) fills the event queue; the connection's thread
// drains it. Detokenizing, stop strings and logprobs run on the scheduler side, so a stop string
// ends the sequence at the token that completed it, as a lone generation would.
struct Session::Job {
  struct Event {
    bool prefill = false;
    int64_t done = 0, total = 0;  // prefill progress
    Delta delta;
  };
  Job(std::shared_ptr<const Resident> m, std::vector<std::string> stops)
      : resident(std::move(m)), detok(resident->chat->tokenizer()), stop(std::move(stops)) {}
  // Keeps the tokenizer (and model) alive until the engine is done with the job, even when the
  // client left and the lease ended first.
  std::shared_ptr<const Resident> resident;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Event> events;
  bool started = false, finished = false;
  BatchOutcome outcome;
  GenerationResult res;  // text, logprobs and counts, written by the scheduler side under mu
  Clock::time_point arrival, first{}, end{};
  std::shared_ptr<BatchTicket> ticket;
  std::atomic<bool> client_gone{false};
  // Scheduler side only.
  StreamingDetokenizer detok;
  StopMatcher stop;
  size_t token_bytes = 0;
  Delta pending;

  void push(Event e) {
    {
      std::lock_guard<std::mutex> lk(mu);
      if (!e.prefill) {
        res.text += e.delta.text;
        res.logprobs.insert(res.logprobs.end(), e.delta.logprobs.begin(), e.delta.logprobs.end());
      }
      events.push_back(std::move(e));
    }
    cv.notify_all();
  }
  // Releases text (and the logprobs gathered since the last release), as the one-at-a-time loop did.
  void emit(std::string text) {
    if (text.empty() && pending.logprobs.empty()) return;
    pending.text = std::move(text);
    push({false, 0, 0, std::move(pending)});
    pending = Delta{};
  }
};

std::shared_ptr<Session::Job> Session::start(const Lease& lease, const CompletionRequest& r,
                                             const std::vector<int32_t>& ids, Clock::time_point arrival,
                                             Clock::time_point deadline) {
  Resident& m = *lease.shared();
  auto job = std::make_shared<Job>(lease.shared(), r.stop);
  job->arrival = arrival;
  job->res.prompt_tokens = int64_t(ids.size());
  BatchJob b;
  b.prompt = ids;
  b.sampler = r.sampler;
  b.sampler.xtc_special_tokens = m.xtc_special_tokens;
  b.seed = r.seed ? *r.seed : std::random_device{}();
  b.max_tokens = r.max_tokens;
  b.eos_ids = m.eos_ids;
  b.deadline = deadline;
  b.speculative = !(r.seed && r.sampler.temp > 0) && r.num_draft_tokens.value_or(1) > 0;
  b.num_draft_tokens = r.num_draft_tokens.value_or(0);
  if (served_.prompt_cache.max_entries > 0) b.cache_points = cache_points(m, r, ids);
  if (r.grammar) {  // response_format / a forced tool call: the engine's sampler for this job masks by it
    std::call_once(m.token_table_once, [&] { m.token_table = TokenTable::from_tokenizer(m.chat->tokenizer()); });
    b.constraint = std::make_shared<JsonConstraint>(r.grammar, m.token_table, m.eos_ids);
  }
  b.on_start = [job] {
    {
      std::lock_guard<std::mutex> lk(job->mu);
      job->started = true;
    }
    job->cv.notify_all();
  };
  b.on_prefill = [job](int64_t done, int64_t total) {
    job->push({true, done, total, {}});
    return !job->client_gone;
  };
  const bool logprobs = r.logprobs;
  const int top = r.top_logprobs;
  b.on_token = [job, logprobs, top](int32_t id, const Sampler& sampler) {
    Job& j = *job;
    if (j.res.completion_tokens++ == 0) j.first = Clock::now();
    if (logprobs) {
      j.pending.logprobs.push_back(logprob_entry(j.resident->chat->tokenizer(), id, sampler.last_logprobs(), top));
      j.pending.logprobs.back().text_offset = j.token_bytes;
      j.token_bytes += j.pending.logprobs.back().token.size();
    }
    j.emit(j.stop.push(j.detok.push(id)));
    // A closed constrained value allows nothing but EOS: stop now, without one more forward pass.
    const bool closed = sampler.constraint() && sampler.constraint()->complete();
    return !j.stop.stopped() && !j.client_gone && !closed;
  };
  b.on_done = [job](const BatchOutcome& out) {
    Job& j = *job;
    const bool gone = j.client_gone || out.end == BatchEnd::cancelled;
    if (out.end != BatchEnd::expired && out.end != BatchEnd::failed) {
      if (!gone && !j.stop.stopped()) {
        std::string rest = j.stop.push(j.detok.finish());
        if (!j.stop.stopped()) rest += j.stop.finish();
        j.emit(std::move(rest));
      } else if (!gone) {
        j.emit("");  // the stopping token's logprobs
      }
    }
    {
      std::lock_guard<std::mutex> lk(j.mu);
      j.outcome = out;
      j.finished = true;
      j.end = Clock::now();
    }
    j.cv.notify_all();
  };
  job->ticket = engine_->submit(std::move(b));
  std::unique_lock<std::mutex> lk(job->mu);
  job->cv.wait(lk, [&] { return job->started || job->finished; });
  if (!job->started && job->outcome.end == BatchEnd::expired)
    throw ApiError(503, "the server is busy: no slot freed before --request-timeout", "", "server_busy",
                   "server_error");
  if (!job->started) throw Error("[server] the request did not start: " + job->outcome.error);
  return job;
}

void Session::abandon(Job& job) {
  job.client_gone = true;
  job.ticket->cancel();
}

GenerationResult Session::run(Job& job, const std::function<bool(const Delta&)>& on_delta,
                              const std::function<bool(int64_t, int64_t)>& on_prefill) {
  bool gone = false;
  std::unique_lock<std::mutex> lk(job.mu);
  for (;;) {
    job.cv.wait(lk, [&] { return !job.events.empty() || job.finished; });
    if (job.events.empty()) break;  // finished, everything delivered
    Job::Event e = std::move(job.events.front());
    job.events.pop_front();
    if (gone) continue;
    lk.unlock();  // the write may block on a slow client; the scheduler keeps going
    const bool ok = e.prefill ? !on_prefill || on_prefill(e.done, e.total) : on_delta(e.delta);
    lk.lock();
    if (!ok) {
      gone = true;
      abandon(job);
    }
  }
  const BatchOutcome& out = job.outcome;
  if (out.end == BatchEnd::failed) throw Error(out.error.empty() ? "the engine failed the request" : out.error);
  GenerationResult res = job.res;
  res.cached_tokens = out.prompt_cached;
  res.drafted = out.drafted;
  res.accepted = out.accepted;
  res.cancelled = gone || job.client_gone || out.end == BatchEnd::cancelled;
  res.timed_out = out.end == BatchEnd::deadline;
  res.finish_reason = job.stop.stopped() ? "stop" : out.finish_reason();
  if (res.completion_tokens > 0) {
    res.ttft_s = seconds(job.arrival, job.first);
    res.decode_tps =
        res.completion_tokens > 1 ? double(res.completion_tokens - 1) / std::max(seconds(job.first, job.end), 1e-9) : 0;
  } else {
    res.ttft_s = seconds(job.arrival, job.end);
  }
  return res;
}

}  // namespace lmtune::server
