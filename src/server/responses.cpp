// Response shapes as OpenAI's API reference gives them; logprobs as chat's content list or the
// legacy completions' tokens / token_logprobs / top_logprobs / text_offset.
#include "server/responses.h"

#include <random>

#include "server/api_error.h"

namespace lmtune::server {

using json = nlohmann::ordered_json;

namespace {

// JSON has no -inf: a token the processors made impossible gets OpenAI's floor instead.
double finite_logprob(float lp) { return std::isfinite(lp) ? double(lp) : -9999.0; }

json bytes_of(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(int(c));
  return b;
}

json chat_logprobs(const std::vector<TokenLogprob>& lps) {
  json content = json::array();
  for (const TokenLogprob& t : lps) {
    json top = json::array();
    for (const auto& a : t.top)
      top.push_back({{"token", a.token}, {"logprob", finite_logprob(a.logprob)}, {"bytes", bytes_of(a.token)}});
    content.push_back({{"id", t.id},
                       {"token", t.token},
                       {"logprob", finite_logprob(t.logprob)},
                       {"bytes", bytes_of(t.token)},
                       {"top_logprobs", top}});
  }
  return {{"content", content}};
}

json completion_logprobs(const std::vector<TokenLogprob>& lps) {
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(), offsets = json::array();
  for (const TokenLogprob& t : lps) {
    tokens.push_back(t.token);
    token_logprobs.push_back(finite_logprob(t.logprob));
    json alts = json::object();
    for (const auto& a : t.top) alts[a.token] = finite_logprob(a.logprob);
    top.push_back(alts);
    offsets.push_back(t.text_offset);
  }
  return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top}, {"text_offset", offsets}};
}

json logprobs_of(const CompletionRequest& r, const std::vector<TokenLogprob>& lps) {
  if (!r.logprobs) return nullptr;
  return r.endpoint == Endpoint::chat ? chat_logprobs(lps) : completion_logprobs(lps);
}

json head_json(const ResponseHead& h, bool chunk) {
  const char* object =
      h.endpoint == Endpoint::chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion";
  return {{"id", h.id}, {"object", object}, {"created", h.created}, {"model", h.model}};
}

}  // namespace

std::string new_response_id(Endpoint endpoint) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char kHex[] = "0123456789abcdef";
  std::string id = endpoint == Endpoint::chat ? "chatcmpl-" : "cmpl-";
  for (int i = 0; i < 24; ++i) id += kHex[rng() % 16];
  return id;
}

json usage_json(int64_t prompt_tokens, int64_t completion_tokens, int64_t cached_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", cached_tokens}}}};
}

json tool_call_json(const ToolCall& c) {
  return {{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}};
}

json completion_json(const ResponseHead& h, const CompletionRequest& r, const GenerationResult& g,
                     const SplitOutput* split) {
  json j = head_json(h, false);
  json choice = {{"index", 0}};
  std::string finish = g.finish_reason;
  if (r.endpoint == Endpoint::chat && split) {
    json m = {{"role", "assistant"}, {"content", split->content}};
    // Only calls (the newlines a model writes around them aside): no content, as OpenAI answers.
    if (!split->calls.empty() && split->content.find_first_not_of(" \t\r\n") == std::string::npos)
      m["content"] = nullptr;
    if (!split->reasoning.empty()) m["reasoning"] = split->reasoning;
    if (!split->calls.empty()) {
      json calls = json::array();
      for (const ToolCall& c : split->calls) calls.push_back(tool_call_json(c));
      m["tool_calls"] = calls;
      finish = "tool_calls";
    }
    choice["message"] = m;
  } else if (r.endpoint == Endpoint::chat) {
    choice["message"] = {{"role", "assistant"}, {"content", g.text}};
  } else {
    choice["text"] = g.text;
  }
  choice["logprobs"] = logprobs_of(r, g.logprobs);
  choice["finish_reason"] = finish;
  j["choices"] = json::array({choice});
  j["usage"] = usage_json(g.prompt_tokens, g.completion_tokens, g.cached_tokens);
  return j;
}

json chunk_json(const ResponseHead& h, const CompletionRequest& r, const Delta& d, bool first) {
  json j = head_json(h, true);
  json choice = {{"index", 0}};
  if (r.endpoint == Endpoint::chat) {
    json delta = {{"content", d.text}};
    if (first) delta["role"] = "assistant";
    choice["delta"] = delta;
  } else {
    choice["text"] = d.text;
  }
  choice["logprobs"] = logprobs_of(r, d.logprobs);
  choice["finish_reason"] = nullptr;
  j["choices"] = json::array({choice});
  if (r.include_usage) j["usage"] = nullptr;
  return j;
}

json piece_chunk_json(const ResponseHead& h, const CompletionRequest& r, const OutputPiece& p, int tool_index,
                      const std::vector<TokenLogprob>& logprobs) {
  json j = head_json(h, true);
  json delta = json::object();
  if (p.kind == OutputPiece::Kind::content) delta["content"] = p.text;
  if (p.kind == OutputPiece::Kind::reasoning) delta["reasoning"] = p.text;
  if (p.kind == OutputPiece::Kind::tool_call) {
    json c = tool_call_json(p.call);
    c = {{"index", tool_index}, {"id", c["id"]}, {"type", c["type"]}, {"function", c["function"]}};
    delta["tool_calls"] = json::array({c});
  }
  json choice = {{"index", 0}, {"delta", delta}};
  choice["logprobs"] = logprobs_of(r, logprobs);
  choice["finish_reason"] = nullptr;
  j["choices"] = json::array({choice});
  if (r.include_usage) j["usage"] = nullptr;
  return j;
}

json final_chunk_json(const ResponseHead& h, const CompletionRequest& r, const std::string& finish_reason) {
  json j = head_json(h, true);
  json choice = {{"index", 0}};
  if (r.endpoint == Endpoint::chat) {
    choice["delta"] = json::object();
  } else {
    choice["text"] = "";
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = finish_reason;
  j["choices"] = json::array({choice});
  if (r.include_usage) j["usage"] = nullptr;
  return j;
}

json usage_chunk_json(const ResponseHead& h, const CompletionRequest& r, int64_t prompt_tokens,
                      int64_t completion_tokens, int64_t cached_tokens) {
  json j = head_json(h, true);
  j["choices"] = json::array();
  j["usage"] = usage_json(prompt_tokens, completion_tokens, cached_tokens);
  return j;
}

std::string sse(const json& j) { return "data: " + dump_json(j) + "\n\n"; }

json models_json(const std::vector<std::pair<std::string, int64_t>>& models) {
  json data = json::array();
  for (const auto& [id, created] : models)
    data.push_back({{"id", id}, {"object", "model"}, {"created", created}, {"owned_by", "lmtune"}});
  return {{"object", "list"}, {"data", data}};
}

}  // namespace lmtune::server
