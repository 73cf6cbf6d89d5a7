// One request at a time on the shared cache and generator: reset, a fresh sampler with the
// request's options and seed, then the loop with detokenizer, stop matcher, deadline and logprobs.
#include "server/session.h"

#include <algorithm>
#include <cctype>
#include <numeric>
#include <random>

#include "core/error.h"
#include "server/api_error.h"
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

Session::Session(ServedModel served) : served_(std::move(served)), sampler_(SamplerOptions{}, 0) {
  LMT_CHECK(served_.model && served_.chat, "[server] the session needs a model and its tokenizer");
  const Model& m = *served_.model;
  cache_ = std::make_unique<DenseKVCache>(m.config(), m.device(), m.dtype(), 1, 0);
  gen_ = std::make_unique<Generator>(*served_.model, *cache_, sampler_);
}

std::unique_lock<std::timed_mutex> Session::acquire(Clock::time_point deadline) {
  std::unique_lock<std::timed_mutex> lock(mutex_, std::defer_lock);
  (void)lock.try_lock_until(deadline);
  return lock;
}

std::vector<int32_t> Session::prompt_ids(const CompletionRequest& r) const {
  const Tokenizer& tok = served_.chat->tokenizer();
  std::vector<int32_t> ids;
  if (r.endpoint == Endpoint::completions) {
    ids = r.prompt_ids.empty() ? tok.encode(r.prompt, true) : r.prompt_ids;
  } else {
    std::string text;
    std::string source = served_.chat_template;
    if (source.empty() && tok.chat_templates().empty() && served_.use_default_chat_template) source = kChatMl;
    if (!source.empty() || !tok.chat_templates().empty()) {
      ChatTemplateOptions o;
      o.add_generation_prompt = true;
      o.kwargs = r.template_kwargs;
      o.chat_template = source;
      o.tools = r.tools;
      try {
        text = served_.chat->render(r.messages, o);
      } catch (const std::exception& e) {
        throw ApiError(400, std::string("the chat template refused these messages: ") + e.what(), "messages");
      }
    } else {
      text = role_mapping_prompt(r.messages);
    }
    // As generate: no second BOS when the template already starts with it.
    const bool add_special = tok.bos_token().empty() || text.rfind(tok.bos_token(), 0) != 0;
    ids = tok.encode(text, add_special);
  }
  const char* param = r.endpoint == Endpoint::chat ? "messages" : "prompt";
  if (ids.empty()) throw ApiError(400, "the prompt is empty (no tokens to predict from)", param);
  if (served_.max_prompt_tokens > 0 && int64_t(ids.size()) > served_.max_prompt_tokens)
    throw ApiError(400,
                   "the prompt has " + std::to_string(ids.size()) + " tokens; this server takes at most " +
                       std::to_string(served_.max_prompt_tokens) + " (--max-prompt-tokens)",
                   param, "context_length_exceeded");
  return ids;
}

std::string Session::template_source(const CompletionRequest& r) const {
  const Tokenizer& tok = served_.chat->tokenizer();
  std::string source = served_.chat_template;
  if (source.empty() && tok.chat_templates().empty() && served_.use_default_chat_template) source = kChatMl;
  if (source.empty() && tok.chat_templates().empty()) return "";
  ChatTemplateOptions o;
  o.chat_template = source;
  o.tools = r.tools;
  try {
    return served_.chat->select_template(o);
  } catch (const std::exception&) {
    return "";
  }
}

TokenLogprob Session::logprob_entry(int32_t id, const std::vector<float>& lp, int top) const {
  const Tokenizer& tok = served_.chat->tokenizer();
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

GenerationResult Session::run(const CompletionRequest& r, const std::vector<int32_t>& ids, Clock::time_point arrival,
                              Clock::time_point deadline, const std::function<bool(const Delta&)>& on_delta,
                              const std::function<bool(int64_t, int64_t)>& on_prefill) {
  GenerationResult res;
  sampler_ = Sampler(r.sampler, r.seed ? *r.seed : std::random_device{}());
  if (r.grammar) {
    std::call_once(token_table_once_, [&] { token_table_ = TokenTable::from_tokenizer(served_.chat->tokenizer()); });
    sampler_.set_constraint(std::make_shared<JsonConstraint>(r.grammar, token_table_, served_.eos_ids));
  }
  gen_->reset();  // no prompt cache in this slice: every request prefills its whole prompt
  GenerationConfig gc;
  gc.max_tokens = r.max_tokens;
  gc.prefill_step_size = served_.prefill_step_size;
  gc.eos_ids = served_.eos_ids;
  // Between prefill steps: the client's keepalive (when streaming) and the deadline.
  gc.on_prefill = [&](int64_t done, int64_t total) {
    if (on_prefill && !on_prefill(done, total)) res.cancelled = true;
    if (!res.cancelled && done < total && Clock::now() >= deadline) res.timed_out = true;
    return !res.cancelled && !res.timed_out;
  };

  StreamingDetokenizer detok(served_.chat->tokenizer());
  StopMatcher stop(r.stop);
  Delta pending;
  Clock::time_point first{};
  size_t token_bytes = 0;
  auto emit = [&](std::string text) {
    if (text.empty() && pending.logprobs.empty()) return true;
    pending.text = std::move(text);
    res.text += pending.text;
    res.logprobs.insert(res.logprobs.end(), pending.logprobs.begin(), pending.logprobs.end());
    const bool keep_going = on_delta(pending);
    pending = Delta{};
    if (!keep_going) res.cancelled = true;
    return keep_going;
  };
  GenerationStats st = gen_->generate(ids, gc, [&](int32_t id) {
    if (res.completion_tokens++ == 0) first = Clock::now();
    if (r.logprobs) {
      pending.logprobs.push_back(logprob_entry(id, sampler_.last_logprobs(), r.top_logprobs));
      pending.logprobs.back().text_offset = token_bytes;
      token_bytes += pending.logprobs.back().token.size();
    }
    if (!emit(stop.push(detok.push(id)))) return false;
    if (stop.stopped()) return false;
    // A closed constrained value allows nothing but EOS: stop now, without one more forward pass.
    if (sampler_.constraint() && sampler_.constraint()->complete()) return false;
    if (Clock::now() >= deadline) {
      res.timed_out = true;
      return false;
    }
    return true;
  });
  if (!res.cancelled && !stop.stopped()) {
    std::string rest = stop.push(detok.finish());
    if (!stop.stopped()) rest += stop.finish();
    emit(std::move(rest));
  } else if (!res.cancelled) {
    emit("");  // the stopping token's logprobs
  }
  const Clock::time_point end = Clock::now();
  res.prompt_tokens = int64_t(ids.size());
  res.finish_reason = stop.stopped() ? "stop" : res.timed_out ? "length" : st.finish_reason;
  if (res.completion_tokens > 0) {
    res.ttft_s = seconds(arrival, first);
    res.decode_tps =
        res.completion_tokens > 1 ? double(res.completion_tokens - 1) / std::max(seconds(first, end), 1e-9) : 0;
  } else {
    res.ttft_s = seconds(arrival, end);
  }
  return res;
}

}  // namespace lmtune::server
