// Prometheus text format 0.0.4: # HELP / # TYPE lines, cumulative histogram buckets with le="+Inf".
#include "server/metrics.h"

#include <cstdio>

namespace lmtune::server {

namespace {
std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}
}  // namespace

void Metrics::Histogram::observe(double v) {
  if (counts.size() != bounds.size() + 1) counts.assign(bounds.size() + 1, 0);
  size_t i = 0;
  while (i < bounds.size() && v > bounds[i]) ++i;
  ++counts[i];
  sum += v;
  ++count;
}

void Metrics::Histogram::render(std::string& out, const std::string& name, const std::string& help) const {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  uint64_t cum = 0;
  for (size_t i = 0; i <= bounds.size(); ++i) {
    cum += i < counts.size() ? counts[i] : 0;
    const std::string le = i < bounds.size() ? num(bounds[i]) : "+Inf";
    out += name + "_bucket{le=\"" + le + "\"} " + std::to_string(cum) + "\n";
  }
  out += name + "_sum " + num(sum) + "\n" + name + "_count " + std::to_string(count) + "\n";
}

void Metrics::request_started() {
  std::lock_guard<std::mutex> g(mu_);
  ++in_flight_;
}

void Metrics::request_finished(const std::string& endpoint, int status, double seconds) {
  std::lock_guard<std::mutex> g(mu_);
  --in_flight_;
  ++requests_[{endpoint, status}];
  latency_.observe(seconds);
}

void Metrics::generation_finished(int64_t prompt_tokens, int64_t completion_tokens, double ttft_s, bool cancelled,
                                  bool timed_out) {
  std::lock_guard<std::mutex> g(mu_);
  prompt_tokens_ += uint64_t(prompt_tokens);
  completion_tokens_ += uint64_t(completion_tokens);
  if (ttft_s >= 0 && completion_tokens > 0) ttft_.observe(ttft_s);
  cancelled_ += cancelled;
  timed_out_ += timed_out;
}

std::string Metrics::render() const {
  std::lock_guard<std::mutex> g(mu_);
  std::string out =
      "# HELP lmtune_requests_total HTTP requests answered, by endpoint and status.\n"
      "# TYPE lmtune_requests_total counter\n";
  for (const auto& [k, n] : requests_)
    out += "lmtune_requests_total{endpoint=\"" + k.first + "\",status=\"" + std::to_string(k.second) + "\"} " +
           std::to_string(n) + "\n";
  auto counter = [&](const char* name, const char* help, uint64_t v) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n" + name + " " +
           std::to_string(v) + "\n";
  };
  counter("lmtune_prompt_tokens_total", "Prompt tokens (those the prompt cache supplied included).", prompt_tokens_);
  counter("lmtune_completion_tokens_total", "Tokens generated.", completion_tokens_);
  counter("lmtune_client_disconnects_total", "Generations stopped because the client went away.", cancelled_);
  counter("lmtune_request_timeouts_total", "Generations stopped by --request-timeout.", timed_out_);
  out +=
      "# HELP lmtune_requests_in_flight Requests being answered now.\n# TYPE lmtune_requests_in_flight gauge\n"
      "lmtune_requests_in_flight " +
      std::to_string(in_flight_) + "\n";
  latency_.render(out, "lmtune_request_duration_seconds", "Time from a request's arrival to its last byte.");
  ttft_.render(out, "lmtune_time_to_first_token_seconds", "Time from a request's arrival to its first token.");
  return out;
}

std::string Metrics::render(const BatchStats& b, uint64_t model_switches) const {
  std::string out = render();
  auto line = [&](const char* name, const char* type, const char* help, const std::string& v) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " + v + "\n";
  };
  line("lmtune_sequences_running", "gauge", "Sequences decoding in the batch now.", std::to_string(b.decoding));
  line("lmtune_sequences_prefilling", "gauge", "Sequences prefilling their prompts now.", std::to_string(b.prefilling));
  line("lmtune_sequences_waiting", "gauge", "Requests waiting for a batch slot.", std::to_string(b.waiting));
  line("lmtune_batch_steps_total", "counter", "Batched forward steps run.", std::to_string(b.steps));
  line("lmtune_batch_tokens_total", "counter", "Tokens fed over all steps (decode tokens and prefill chunks).",
       std::to_string(b.step_rows));
  line("lmtune_batch_graph_steps_total", "counter",
       "Steps replayed as a recorded CUDA graph (a sequence alone, or 2 to 64 decoding together).",
       std::to_string(b.graph_steps));
  auto secs = [](double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6f", v);
    return std::string(buf);
  };
  line("lmtune_batch_forward_seconds_total", "counter",
       "Seconds in batched steps' forwards (launches, device work, the logits' copy to the host).",
       secs(b.forward_seconds));
  line("lmtune_batch_host_seconds_total", "counter",
       "Seconds in batched steps' host work on their rows (sampling, stop checks, callbacks).", secs(b.host_seconds));
  line("lmtune_batch_decode_steps_total", "counter", "Steps that fed decode tokens only (no prompt chunk).",
       std::to_string(b.decode_steps));
  line("lmtune_batch_decode_step_seconds_total", "counter", "Wall seconds of the decode-only steps.",
       secs(b.decode_step_seconds));
  line("lmtune_prompt_cache_lookups_total", "counter", "Prompts looked up in the prompt cache.",
       std::to_string(b.cache_lookups));
  line("lmtune_prompt_cache_hits_total", "counter", "Prompts that started from a prompt cache entry.",
       std::to_string(b.cache_hits));
  line("lmtune_prompt_cache_tokens_total", "counter", "Prompt tokens taken from the prompt cache (not prefilled).",
       std::to_string(b.cache_tokens));
  line("lmtune_prompt_cache_evictions_total", "counter", "Prompt cache entries dropped for its bounds.",
       std::to_string(b.cache_evictions));
  line("lmtune_prompt_cache_entries", "gauge", "Entries in the prompt cache.", std::to_string(b.cache_entries));
  line("lmtune_prompt_cache_bytes", "gauge", "Bytes of KV cache held by the prompt cache.",
       std::to_string(b.cache_bytes));
  line("lmtune_speculative_rounds_total", "counter", "Speculative rounds, a sequence's each (with a draft model).",
       std::to_string(b.spec_rounds));
  line("lmtune_speculative_rounds_batched_total", "counter",
       "Of them, rounds taken together with other sequences' (one packed draft step, one packed verify).",
       std::to_string(b.spec_rounds_batched));
  line("lmtune_draft_tokens_total", "counter", "Draft tokens the model scored.", std::to_string(b.drafted));
  line("lmtune_draft_tokens_accepted_total", "counter", "Draft tokens the model chose too.",
       std::to_string(b.accepted));
  line("lmtune_model_switches_total", "counter",
       "Times a request's model or adapters were loaded in place of the resident ones.",
       std::to_string(model_switches));
  Histogram h;
  for (int i = 0; i + 1 < BatchStats::kBuckets; ++i) h.bounds.push_back(double(1 << i));
  h.counts.assign(b.batch_counts, b.batch_counts + BatchStats::kBuckets);
  h.sum = double(b.batch_sum);
  h.count = b.steps;
  h.render(out, "lmtune_batch_size", "Sequences per batched forward step.");
  return out;
}

}  // namespace lmtune::server
