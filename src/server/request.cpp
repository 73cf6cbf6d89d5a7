// Request validation: each field's JSON type and range checked once, by name, into the typed request.
#include "server/request.h"

#include "io/hub.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

#include "io/hub.h"
#include "server/api_error.h"
#include "server/request_tools.h"

namespace lmtune::server {

using ojson = nlohmann::ordered_json;

namespace {

ApiError bad(const std::string& param, const std::string& message, const std::string& code = "invalid_value") {
  return ApiError(400, message, param, code);
}

std::string type_name(const ojson& v) {
  switch (v.type()) {
    case ojson::value_t::null: return "null";
    case ojson::value_t::boolean: return "a boolean";
    case ojson::value_t::string: return "a string";
    case ojson::value_t::array: return "an array";
    case ojson::value_t::object: return "an object";
    case ojson::value_t::number_float: return "a number with a fraction";
    default: return "an integer";
  }
}

ApiError wrong_type(const std::string& param, const std::string& expected, const ojson& v) {
  return bad(param, "'" + param + "' must be " + expected + ", got " + type_name(v), "invalid_type");
}

// The field's value, or nullptr when it is absent or null (OpenAI's "not given").
const ojson* field(const ojson& body, const char* name) {
  auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

double number_in(const ojson& body, const char* name, double lo, double hi, double fallback) {
  const ojson* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_number()) throw wrong_type(name, "a number", *v);
  double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    throw bad(name, "'" + std::string(name) + "' must be in [" + nlohmann::json(lo).dump() + ", " +
                        nlohmann::json(hi).dump() + "], got " + v->dump());
  return x;
}

int64_t integer_in(const ojson& body, const char* name, int64_t lo, int64_t hi, int64_t fallback) {
  const ojson* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_number_integer()) throw wrong_type(name, "an integer", *v);
  // A value beyond int64 parses as unsigned; either way it is out of range.
  if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX))
    throw bad(name, "'" + std::string(name) + "' must be at most " + std::to_string(hi) + ", got " + v->dump());
  int64_t x = v->get<int64_t>();
  if (x < lo || x > hi)
    throw bad(name, "'" + std::string(name) + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                        "], got " + std::to_string(x));
  return x;
}

bool boolean(const ojson& body, const char* name, bool fallback) {
  const ojson* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_boolean()) throw wrong_type(name, "a boolean", *v);
  return v->get<bool>();
}

// Fields OpenAI defines that change nothing here, accepted as clients send them.
const std::set<std::string> kIgnored = {"user", "metadata", "store", "service_tier", "parallel_tool_calls"};

const std::set<std::string> kCommon = {"model",
                                       "max_tokens",
                                       "temperature",
                                       "top_p",
                                       "top_k",
                                       "min_p",
                                       "min_tokens_to_keep",
                                       "repetition_penalty",
                                       "repetition_context_size",
                                       "presence_penalty",
                                       "presence_context_size",
                                       "frequency_penalty",
                                       "frequency_context_size",
                                       "xtc_probability",
                                       "xtc_threshold",
                                       "logit_bias",
                                       "logprobs",
                                       "stop",
                                       "seed",
                                       "stream",
                                       "stream_options",
                                       "n",
                                       "adapters",
                                       "draft_model",
                                       "num_draft_tokens"};
const std::set<std::string> kChatOnly = {
    "messages",    "max_completion_tokens", "top_logprobs", "chat_template_kwargs", "tools",
    "tool_choice", "response_format",       "functions",    "function_call"};
const std::set<std::string> kCompletionOnly = {"prompt", "echo", "suffix", "best_of"};

void check_known(const ojson& body, Endpoint ep) {
  for (auto it = body.begin(); it != body.end(); ++it) {
    const std::string& k = it.key();
    if (kIgnored.count(k) || kCommon.count(k)) continue;
    if ((ep == Endpoint::chat ? kChatOnly : kCompletionOnly).count(k)) continue;
    throw bad(k, "Unrecognized request argument supplied: " + k, "unknown_parameter");
  }
}

ApiError not_yet(const std::string& param, const std::string& what) {
  return bad(param, "'" + param + "': " + what + " is not supported yet by lmtune server", "unsupported_parameter");
}

// Fields whose feature this slice does not have: refused unless they ask for the default.
void check_unsupported(const ojson& body, Endpoint ep) {
  if (integer_in(body, "n", 1, 1000000, 1) != 1) throw not_yet("n", "more than one choice");
  for (const char* k : {"functions", "function_call"})
    if (field(body, k)) throw not_yet(k, std::string("'") + k + "'");
  if (ep == Endpoint::completions) {
    if (boolean(body, "echo", false)) throw not_yet("echo", "echoing the prompt");
    if (field(body, "suffix")) throw not_yet("suffix", "a suffix");
    if (integer_in(body, "best_of", 1, 1000000, 1) != 1) throw not_yet("best_of", "best_of above 1");
  }
}

// content: a string, null, or a list of {"type": "text", "text": ...} parts, joined as mlx-lm does.
ojson flatten_content(const ojson& content, const std::string& param) {
  if (content.is_string() || content.is_null()) return content;
  if (!content.is_array()) throw wrong_type(param, "a string or a list of text parts", content);
  std::string text;
  for (size_t j = 0; j < content.size(); ++j) {
    const std::string pp = param + "[" + std::to_string(j) + "]";
    const ojson& part = content[j];
    if (!part.is_object()) throw wrong_type(pp, "an object", part);
    const ojson* type = field(part, "type");
    if (!type || !type->is_string()) throw bad(pp + ".type", "'" + pp + ".type' must be a string", "invalid_type");
    if (*type != "text")
      throw not_yet(pp + ".type", "content of type " + type->dump() + " (only \"text\" parts are supported)");
    const ojson* t = field(part, "text");
    if (!t || !t->is_string()) throw bad(pp + ".text", "'" + pp + ".text' must be a string", "invalid_type");
    text += t->get<std::string>();
  }
  return text;
}

ojson parse_messages(const ojson& body) {
  const ojson* m = field(body, "messages");
  if (!m) throw bad("messages", "'messages' is required", "missing_required_parameter");
  if (!m->is_array()) throw wrong_type("messages", "an array of messages", *m);
  if (m->empty()) throw bad("messages", "'messages' must hold at least one message");
  ojson out = ojson::array();
  for (size_t i = 0; i < m->size(); ++i) {
    const std::string p = "messages[" + std::to_string(i) + "]";
    const ojson& msg = (*m)[i];
    if (!msg.is_object()) throw wrong_type(p, "an object", msg);
    const ojson* role = field(msg, "role");
    if (!role) throw bad(p + ".role", "'" + p + ".role' is required", "missing_required_parameter");
    if (!role->is_string() || role->get<std::string>().empty())
      throw wrong_type(p + ".role", "a non-empty string", *role);
    ojson copy = msg;
    if (msg.contains("content")) copy["content"] = flatten_content(msg["content"], p + ".content");
    check_message_tools(copy, p);
    out.push_back(std::move(copy));
  }
  return out;
}

void parse_prompt(const ojson& body, int64_t n_vocab, CompletionRequest& r) {
  const ojson* p = field(body, "prompt");
  if (!p) throw bad("prompt", "'prompt' is required", "missing_required_parameter");
  if (p->is_string()) {
    r.prompt = p->get<std::string>();
    return;
  }
  if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) {
    r.prompt = (*p)[0].get<std::string>();
    return;
  }
  if (p->is_array() && !p->empty() &&
      std::all_of(p->begin(), p->end(), [](const ojson& x) { return x.is_number_integer(); })) {
    for (const ojson& x : *p) {
      int64_t id = x.is_number_unsigned() && x.get<uint64_t>() > uint64_t(INT64_MAX) ? -1 : x.get<int64_t>();
      if (id < 0 || id >= n_vocab)
        throw bad("prompt",
                  "'prompt' token " + x.dump() + " is outside the vocabulary [0, " + std::to_string(n_vocab) + ")");
      r.prompt_ids.push_back(int32_t(id));
    }
    return;
  }
  throw wrong_type("prompt", "a string, a list of one string, or a non-empty list of token ids", *p);
}

std::vector<std::string> parse_stop(const ojson& body) {
  const ojson* s = field(body, "stop");
  if (!s) return {};
  std::vector<std::string> out;
  if (s->is_string()) {
    out.push_back(s->get<std::string>());
  } else if (s->is_array()) {
    if (s->size() > kMaxStopStrings)
      throw bad("stop", "'stop' may hold at most " + std::to_string(kMaxStopStrings) + " strings, got " +
                            std::to_string(s->size()));
    for (size_t i = 0; i < s->size(); ++i) {
      if (!(*s)[i].is_string()) throw wrong_type("stop[" + std::to_string(i) + "]", "a string", (*s)[i]);
      out.push_back((*s)[i].get<std::string>());
    }
  } else {
    throw wrong_type("stop", "a string or a list of strings", *s);
  }
  for (const std::string& x : out) {
    if (x.empty()) throw bad("stop", "'stop' strings must not be empty");
    if (x.size() > kMaxStopBytes)
      throw bad("stop", "'stop' strings must be at most " + std::to_string(kMaxStopBytes) + " bytes, got " +
                            std::to_string(x.size()));
  }
  return out;
}

std::vector<std::pair<int32_t, float>> parse_logit_bias(const ojson& body, int64_t n_vocab) {
  const ojson* b = field(body, "logit_bias");
  if (!b) return {};
  if (!b->is_object()) throw wrong_type("logit_bias", "an object of token id -> bias", *b);
  std::vector<std::pair<int32_t, float>> out;
  for (auto it = b->begin(); it != b->end(); ++it) {
    const std::string& k = it.key();
    const bool digits =
        !k.empty() && k.size() < 10 && std::all_of(k.begin(), k.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!digits || std::stoll(k) >= n_vocab)
      throw bad("logit_bias", "'logit_bias' key '" + k + "' is not a token id in [0, " + std::to_string(n_vocab) + ")");
    if (!it->is_number()) throw wrong_type("logit_bias." + k, "a number", *it);
    double v = it->get<double>();
    if (!std::isfinite(v) || v < -100 || v > 100)
      throw bad("logit_bias", "'logit_bias' values must be in [-100, 100], got " + it->dump());
    out.emplace_back(int32_t(std::stoll(k)), float(v));
  }
  return out;
}

void parse_sampler(const ojson& body, SamplerOptions& s) {
  s.temp = float(number_in(body, "temperature", 0, 100, s.temp));
  s.top_p = float(number_in(body, "top_p", 0, 1, s.top_p));
  int64_t k = integer_in(body, "top_k", -1, INT32_MAX, s.top_k);
  s.top_k = k < 0 ? 0 : int(k);  // -1 = off, as vLLM and others spell it
  s.min_p = float(number_in(body, "min_p", 0, 1, s.min_p));
  s.min_tokens_to_keep = int(integer_in(body, "min_tokens_to_keep", 1, INT32_MAX, s.min_tokens_to_keep));
  s.repetition_penalty = float(number_in(body, "repetition_penalty", 0, 100, s.repetition_penalty));
  s.repetition_context_size = int(integer_in(body, "repetition_context_size", 1, 1 << 20, s.repetition_context_size));
  s.presence_penalty = float(number_in(body, "presence_penalty", -2, 2, s.presence_penalty));
  s.presence_context_size = int(integer_in(body, "presence_context_size", 1, 1 << 20, s.presence_context_size));
  s.frequency_penalty = float(number_in(body, "frequency_penalty", -2, 2, s.frequency_penalty));
  s.frequency_context_size = int(integer_in(body, "frequency_context_size", 1, 1 << 20, s.frequency_context_size));
  s.xtc_probability = float(number_in(body, "xtc_probability", 0, 1, s.xtc_probability));
  s.xtc_threshold = float(number_in(body, "xtc_threshold", 0, 0.5, s.xtc_threshold));
}

void parse_model(const ojson& body, const RequestDefaults& d, CompletionRequest& r) {
  const ojson* m = field(body, "model");
  if (!m) return;
  if (!m->is_string()) throw wrong_type("model", "a string", *m);
  r.model = m->get<std::string>();
  if (r.model == "default_model") return;  // mlx-lm's name for the loaded model
  std::error_code ec;  // a local folder or a Hub id: a model to switch to (Session::key_for checks it further)
  if (std::find(d.model_names.begin(), d.model_names.end(), r.model) == d.model_names.end() &&
      !std::filesystem::is_directory(r.model, ec) && !is_hub_model_name(r.model))
    throw ApiError(404,
                   "The model '" + r.model + "' does not exist (this server serves " +
                       (d.model_names.empty() ? std::string("none") : d.model_names[0]) + ")",
                   "model", "model_not_found");
}

}  // namespace

size_t json_depth(std::string_view text, size_t limit) {
  size_t depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) return deepest;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

CompletionRequest parse_request(std::string_view text, Endpoint ep, const RequestDefaults& d) {
  if (json_depth(text, kMaxJsonDepth) > kMaxJsonDepth)
    throw ApiError(400, "the request body nests deeper than " + std::to_string(kMaxJsonDepth) + " levels", "",
                   "invalid_json");
  ojson body;
  try {
    body = ojson::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw ApiError(400, std::string("the request body is not valid JSON (UTF-8): ") + e.what(), "", "invalid_json");
  }
  if (!body.is_object())
    throw ApiError(400, "the request body must be a JSON object, got " + type_name(body), "", "invalid_json");
  check_known(body, ep);
  check_unsupported(body, ep);

  CompletionRequest r;
  r.endpoint = ep;
  parse_model(body, d, r);
  if (const ojson* a = field(body, "adapters"); a && !a->is_null()) {
    if (!a->is_string()) throw wrong_type("adapters", "a string (an adapter folder)", *a);
    r.adapters = a->get<std::string>();
  }
  if (const ojson* m = field(body, "draft_model"); m && !m->is_null()) {
    if (!m->is_string()) throw wrong_type("draft_model", "a string (a model folder or Hub id)", *m);
    r.draft_model = m->get<std::string>();
  }
  if (ep == Endpoint::chat) {
    r.messages = parse_messages(body);
  } else {
    parse_prompt(body, d.n_vocab, r);
  }

  const int64_t limit = d.max_tokens_limit;
  r.max_tokens = integer_in(body, "max_tokens", 1, limit, d.max_tokens);
  if (ep == Endpoint::chat) r.max_tokens = integer_in(body, "max_completion_tokens", 1, limit, r.max_tokens);

  r.sampler = d.sampler;
  parse_sampler(body, r.sampler);
  r.sampler.logit_bias = parse_logit_bias(body, d.n_vocab);
  if (field(body, "num_draft_tokens")) r.num_draft_tokens = integer_in(body, "num_draft_tokens", 0, kMaxDraftTokens, 0);
  if (const ojson* s = field(body, "seed")) {
    if (!s->is_number_integer()) throw wrong_type("seed", "an integer", *s);
    r.seed = s->is_number_unsigned() ? s->get<uint64_t>() : uint64_t(s->get<int64_t>());
  }
  r.stop = parse_stop(body);

  r.stream = boolean(body, "stream", false);
  if (const ojson* so = field(body, "stream_options")) {
    if (!so->is_object()) throw wrong_type("stream_options", "an object", *so);
    if (!r.stream) throw bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
    r.include_usage = boolean(*so, "include_usage", false);
  }

  if (ep == Endpoint::chat) {
    r.logprobs = boolean(body, "logprobs", false);
    const ojson* tl = field(body, "top_logprobs");
    if (tl && tl->is_number_integer() && tl->get<int64_t>() == -1) tl = nullptr;  // mlx-lm's "off"
    if (tl) {
      r.top_logprobs = int(integer_in(body, "top_logprobs", 0, kMaxTopLogprobs, 0));
      if (!r.logprobs) throw bad("top_logprobs", "'top_logprobs' needs 'logprobs' set to true");
    }
    r.template_kwargs = d.chat_template_args;
    if (const ojson* k = field(body, "chat_template_kwargs")) {
      if (!k->is_object()) throw wrong_type("chat_template_kwargs", "an object", *k);
      for (auto it = k->begin(); it != k->end(); ++it) r.template_kwargs[it.key()] = *it;
    }
  } else if (field(body, "logprobs")) {  // completions: the number of top alternatives
    r.top_logprobs = int(integer_in(body, "logprobs", 0, kMaxTopLogprobs, 0));
    r.logprobs = true;
  }
  r.sampler.keep_logprobs = r.logprobs;
  if (ep == Endpoint::chat) {
    parse_tools(body, r);
    parse_response_format(body, r);
  }
  return r;
}

}  // namespace lmtune::server
