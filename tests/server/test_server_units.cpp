// src/server's pieces without HTTP: request validation (each refusal's status, param and code),
// stop strings over streamed pieces, JSON depth, response shapes and the metrics text.
#include <gtest/gtest.h>

#include <string>

#include "server/api_error.h"
#include "server/metrics.h"
#include "server/prompt_segments.h"
#include "server/request.h"
#include "server/responses.h"
#include "server/stop_matcher.h"
#include "tokenizer/tokenizer.h"

using namespace lmtune;
using namespace lmtune::server;

namespace {

RequestDefaults defaults() {
  RequestDefaults d;
  d.max_tokens = 50;
  d.max_tokens_limit = 1000;
  d.n_vocab = 100;
  d.model_names = {"models/default", "/abs/models/default"};
  d.chat_template_args = {{"enable_thinking", false}};
  return d;
}

struct Refusal {
  int status;
  std::string param, code;
};

Refusal refusal(const std::string& body, Endpoint ep = Endpoint::chat) {
  try {
    (void)parse_request(body, ep, defaults());
  } catch (const ApiError& e) {
    return {e.status, e.param, e.code};
  }
  return {0, "", "accepted"};
}

const char kMsgs[] = R"("messages": [{"role": "user", "content": "hi"}])";
std::string chat(const std::string& extra) {
  return std::string("{") + kMsgs + (extra.empty() ? "" : ", " + extra) + "}";
}

}  // namespace

// mlx-lm's segments of a chat prompt (server.py's _tokenize: the system head's first difference from the
// prompt, a thinking tail that starts in the final 11 tokens); the prompt's own end is never a point.
TEST(PromptSegments, SystemUserAndThinkingTail) {
  const std::vector<int32_t> ids = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 99, 16, 17};
  const std::vector<int32_t> head = {1, 2, 3, 4, 5, 50, 51};  // differs from ids at 5
  EXPECT_EQ(segment_ends(ids, head, {99}), (std::vector<int64_t>{5, 15}));
  EXPECT_EQ(segment_ends(ids, head, {}), (std::vector<int64_t>{5}));       // no thinking: no tail
  EXPECT_EQ(segment_ends(ids, {}, {99}), (std::vector<int64_t>{15}));      // no system message
  EXPECT_EQ(segment_ends(ids, {}, {99, 16}), (std::vector<int64_t>{15}));  // a start of several tokens
  EXPECT_EQ(segment_ends(ids, {}, {99, 17}), (std::vector<int64_t>{}));    // not there
  EXPECT_EQ(segment_ends(ids, {7}, {99}), (std::vector<int64_t>{15}));     // differs at 0: no system segment
  EXPECT_EQ(segment_ends(ids, ids, {}), (std::vector<int64_t>{}));         // the whole prompt: its end
  EXPECT_EQ(segment_ends(ids, {1, 2}, {}), (std::vector<int64_t>{2}));     // a head that is all a prefix
  std::vector<int32_t> late = ids;  // the think token 12 from the end: too early for a tail
  late[size_t(late.size()) - 12] = 99, late[15] = 15;
  EXPECT_EQ(segment_ends(late, head, {99}), (std::vector<int64_t>{5}));
  late[size_t(late.size()) - 11] = 99;  // 11 from the end: the tail
  EXPECT_EQ(segment_ends(late, head, {99}), (std::vector<int64_t>{5, int64_t(late.size()) - 11}));
  const std::vector<int32_t> last = {1, 2, 3, 4, 5, 6, 99};  // a tail of the think token alone
  EXPECT_EQ(segment_ends(last, {1, 2, 9}, {99}), (std::vector<int64_t>{2, 6}));
}

TEST(PromptSegments, ThinkStartFromTheVocabulary) {
  auto tokenizer = [](const std::string& added) {
    return Tokenizer::from_json(
        R"({"version": "1.0", "added_tokens": [)" + added +
            R"(], "model": {"type": "WordLevel", "unk_token": "a", "vocab": {"a": 0, "b": 1}}})",
        "", "/m/tokenizer.json");
  };
  auto special = [](const char* content, int id) {
    return std::string(R"({"id": )") + std::to_string(id) + R"(, "content": ")" + content +
           R"(", "special": true, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false})";
  };
  EXPECT_EQ(think_start_ids(tokenizer(special("<think>", 2) + "," + special("</think>", 3))),
            (std::vector<int32_t>{2}));
  EXPECT_TRUE(think_start_ids(tokenizer(special("<think>", 2))).empty());  // a pair, or none
  EXPECT_EQ(think_start_ids(tokenizer(special("<|think:start|>", 4) + "," + special("<|think:end|>", 5))),
            (std::vector<int32_t>{4}));
  EXPECT_TRUE(think_start_ids(tokenizer("")).empty());
}

TEST(Request, ChatFieldsAreRead) {
  CompletionRequest r =
      parse_request(chat(R"("model": "models/default", "max_completion_tokens": 7, "max_tokens": 9, "temperature": 0.5,
              "top_p": 0.9, "top_k": 4, "min_p": 0.1, "repetition_penalty": 1.1, "presence_penalty": 0.5,
              "frequency_penalty": -0.5, "logit_bias": {"5": 10, "7": -100}, "seed": 42, "stop": ["a", "bc"],
              "stream": true, "stream_options": {"include_usage": true}, "logprobs": true, "top_logprobs": 3,
              "chat_template_kwargs": {"x": 1}, "user": "u", "n": 1)"),
                    Endpoint::chat, defaults());
  EXPECT_EQ(r.max_tokens, 7);  // max_completion_tokens wins
  EXPECT_FLOAT_EQ(r.sampler.temp, 0.5f);
  EXPECT_EQ(r.sampler.top_k, 4);
  EXPECT_EQ(r.sampler.logit_bias.size(), 2u);
  EXPECT_EQ(*r.seed, 42u);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"a", "bc"}));
  EXPECT_TRUE(r.stream && r.include_usage && r.logprobs && r.sampler.keep_logprobs);
  EXPECT_EQ(r.top_logprobs, 3);
  EXPECT_EQ(r.template_kwargs.dump(), R"({"enable_thinking":false,"x":1})");
  EXPECT_EQ(r.messages[0]["content"], "hi");
}

TEST(Request, DefaultsAndTextParts) {
  CompletionRequest r = parse_request(
      R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
          "stop": "x", "top_logprobs": -1})",
      Endpoint::chat, defaults());
  EXPECT_EQ(r.max_tokens, 50);
  EXPECT_EQ(r.messages[0]["content"], "ab");
  EXPECT_EQ(r.stop, (std::vector<std::string>{"x"}));
  EXPECT_FALSE(r.seed.has_value());
  CompletionRequest c = parse_request(R"({"prompt": [1, 2, 3], "logprobs": 2})", Endpoint::completions, defaults());
  EXPECT_EQ(c.prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_TRUE(c.logprobs);
  EXPECT_EQ(c.top_logprobs, 2);
}

TEST(Request, EachRefusalNamesItsField) {
  struct Case {
    std::string body;
    int status;
    std::string param, code;
    Endpoint ep = Endpoint::chat;
  };
  const std::string stops = [] {
    std::string s = "[";
    for (int i = 0; i < 10000; ++i) s += (i ? ",\"s" : "\"s") + std::to_string(i) + "\"";
    return s + "]";
  }();
  const std::vector<Case> cases = {
      {"{", 400, "", "invalid_json"},
      {"[1, 2]", 400, "", "invalid_json"},
      {std::string(100, '[') + std::string(100, ']'), 400, "", "invalid_json"},
      {"{\"messages\": \"\xff\xfe\"}", 400, "", "invalid_json"},  // invalid UTF-8
      {R"({"messages": "\udc00"})", 400, "", "invalid_json"},     // a lone surrogate
      {"{}", 400, "messages", "missing_required_parameter"},
      {R"({"messages": []})", 400, "messages", "invalid_value"},
      {R"({"messages": "hi"})", 400, "messages", "invalid_type"},
      {R"({"messages": [{"content": "x"}]})", 400, "messages[0].role", "missing_required_parameter"},
      {R"({"messages": [{"role": 3, "content": "x"}]})", 400, "messages[0].role", "invalid_type"},
      {R"({"messages": [{"role": "user", "content": 5}]})", 400, "messages[0].content", "invalid_type"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", 400, "messages[0].content[0].type",
       "unsupported_parameter"},
      {chat(R"("max_tokens": -1)"), 400, "max_tokens", "invalid_value"},
      {chat(R"("max_tokens": 0)"), 400, "max_tokens", "invalid_value"},
      {chat(R"("max_tokens": 1001)"), 400, "max_tokens", "invalid_value"},
      {chat(R"("max_tokens": 99999999999999999999999)"), 400, "max_tokens", "invalid_type"},
      {chat(R"("max_tokens": 18446744073709551615)"), 400, "max_tokens", "invalid_value"},
      {chat(R"("max_tokens": "5")"), 400, "max_tokens", "invalid_type"},
      {chat(R"("max_tokens": 5.5)"), 400, "max_tokens", "invalid_type"},
      {chat(R"("max_completion_tokens": -3)"), 400, "max_completion_tokens", "invalid_value"},
      {chat(R"("temperature": "hot")"), 400, "temperature", "invalid_type"},
      {chat(R"("temperature": -1)"), 400, "temperature", "invalid_value"},
      {chat(R"("top_p": 1.5)"), 400, "top_p", "invalid_value"},
      {chat(R"("presence_penalty": 3)"), 400, "presence_penalty", "invalid_value"},
      {chat(R"("logit_bias": {"abc": 1})"), 400, "logit_bias", "invalid_value"},
      {chat(R"("logit_bias": {"100": 1})"), 400, "logit_bias", "invalid_value"},
      {chat(R"("logit_bias": {"5": 101})"), 400, "logit_bias", "invalid_value"},
      {chat(R"("seed": 1.5)"), 400, "seed", "invalid_type"},
      {chat(R"("stop": 5)"), 400, "stop", "invalid_type"},
      {chat(R"("stop": [""])"), 400, "stop", "invalid_value"},
      {chat("\"stop\": " + stops), 400, "stop", "invalid_value"},
      {chat(R"("stop": ["a", 1])"), 400, "stop[1]", "invalid_type"},
      {chat(R"("stream": "yes")"), 400, "stream", "invalid_type"},
      {chat(R"("stream_options": {"include_usage": true})"), 400, "stream_options", "invalid_value"},
      {chat(R"("top_logprobs": 3)"), 400, "top_logprobs", "invalid_value"},
      {chat(R"("logprobs": true, "top_logprobs": 21)"), 400, "top_logprobs", "invalid_value"},
      {chat(R"("chat_template_kwargs": [1])"), 400, "chat_template_kwargs", "invalid_type"},
      {chat(R"("model": "gpt-4")"), 404, "model", "model_not_found"},
      {chat(R"("model": 4)"), 400, "model", "invalid_type"},
      {chat(R"("frobnicate": 1)"), 400, "frobnicate", "unknown_parameter"},
      {chat(R"("n": 2)"), 400, "n", "unsupported_parameter"},
      {chat(R"("tools": [{"type": "function"}])"), 400, "tools[0].function", "invalid_type"},
      {chat(
           R"("response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "string", "pattern": "a"}}})"),
       400, "response_format.json_schema.schema.pattern", "invalid_value"},
      {chat(R"("adapters": 3)"), 400, "adapters", "invalid_type"},
      {chat(R"("draft_model": 3)"), 400, "draft_model", "invalid_type"},
      {chat(R"("num_draft_tokens": 65)"), 400, "num_draft_tokens", "invalid_value"},
      {chat(R"("num_draft_tokens": "3")"), 400, "num_draft_tokens", "invalid_type"},
      {R"({"prompt": "x", "messages": []})", 400, "messages", "unknown_parameter", Endpoint::completions},
      {R"({"max_tokens": 3})", 400, "prompt", "missing_required_parameter", Endpoint::completions},
      {R"({"prompt": {"a": 1}})", 400, "prompt", "invalid_type", Endpoint::completions},
      {R"({"prompt": [1, 100]})", 400, "prompt", "invalid_value", Endpoint::completions},
      {R"({"prompt": "x", "logprobs": true})", 400, "logprobs", "invalid_type", Endpoint::completions},
      {R"({"prompt": "x", "echo": true})", 400, "echo", "unsupported_parameter", Endpoint::completions},
  };
  for (const Case& c : cases) {
    Refusal r = refusal(c.body, c.ep);
    EXPECT_EQ(r.status, c.status) << c.body.substr(0, 200);
    EXPECT_EQ(r.param, c.param) << c.body.substr(0, 200);
    EXPECT_EQ(r.code, c.code) << c.body.substr(0, 200);
  }
  // Known-but-harmless fields and nulls are accepted.
  EXPECT_EQ(refusal(chat(R"("user": "x", "metadata": {}, "temperature": null, "tools": [], "tool_choice": "none",
                           "response_format": {"type": "text"}, "parallel_tool_calls": false)"))
                .code,
            "accepted");
}

TEST(Request, JsonDepthSkipsStrings) {
  EXPECT_EQ(json_depth(R"({"a": [[1]], "b": "[[[[{{{"})", 100), 3u);
  EXPECT_EQ(json_depth(R"({"a": "\"[[["})", 100), 1u);
  EXPECT_EQ(json_depth(std::string(1000, '['), 64), 65u);  // stops early past the limit
}

TEST(StopMatcher, HoldsBackPossibleStartsAndCutsAtTheEarliestStop) {
  StopMatcher m({"END", "xyz"});
  std::string out;
  out += m.push("hello E");
  EXPECT_EQ(out, "hello ");  // "E" may start END
  out += m.push("N");
  EXPECT_EQ(out, "hello ");
  out += m.push("Dless");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(out, "hello ");
  EXPECT_EQ(m.push("more"), "");
  EXPECT_EQ(m.finish(), "");

  StopMatcher n({"ab"});
  EXPECT_EQ(n.push("xa"), "x");
  EXPECT_EQ(n.push("c"), "ac");  // not a stop after all: released
  EXPECT_EQ(n.push("a"), "");
  EXPECT_EQ(n.finish(), "a");  // the end came first
  EXPECT_FALSE(n.stopped());

  StopMatcher e({"bc", "abcd"});
  EXPECT_EQ(e.push("zabcd"), "z");  // the stop that starts first wins
  EXPECT_TRUE(e.stopped());

  StopMatcher u({"\xc3\xa9!"});             // é!
  EXPECT_EQ(u.push("caf\xc3\xa9"), "caf");  // é held whole, never split
  EXPECT_EQ(u.push("?"), "\xc3\xa9?");
}

TEST(Responses, ShapesFollowOpenAi) {
  CompletionRequest r;
  r.endpoint = Endpoint::chat;
  r.include_usage = true;
  ResponseHead h{"chatcmpl-x", 5, "m", Endpoint::chat};
  auto c = chunk_json(h, r, Delta{"hi", {}}, true);
  EXPECT_EQ(
      c.dump(),
      R"({"id":"chatcmpl-x","object":"chat.completion.chunk","created":5,"model":"m","choices":[{"index":0,"delta":{"content":"hi","role":"assistant"},"logprobs":null,"finish_reason":null}],"usage":null})");
  EXPECT_EQ(
      usage_chunk_json(h, r, 3, 4, 2).dump(),
      R"({"id":"chatcmpl-x","object":"chat.completion.chunk","created":5,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":2}}})");
  GenerationResult g;
  g.text = "ok";
  g.finish_reason = "length";
  g.prompt_tokens = 2;
  g.completion_tokens = 1;
  r.logprobs = true;
  g.logprobs = {{7, "ok", -0.5f, {{7, "ok", -0.5f}, {8, "no", -1.5f}}}};
  auto full = completion_json(h, r, g);
  EXPECT_EQ(full["object"], "chat.completion");
  EXPECT_EQ(full["choices"][0]["message"]["content"], "ok");
  EXPECT_EQ(full["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(full["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1]["token"], "no");
  EXPECT_EQ(full["usage"]["total_tokens"], 3);
  r.endpoint = Endpoint::completions;
  h.endpoint = Endpoint::completions;
  auto t = completion_json(h, r, g);
  EXPECT_EQ(t["object"], "text_completion");
  EXPECT_EQ(t["choices"][0]["text"], "ok");
  EXPECT_EQ(t["choices"][0]["logprobs"]["tokens"][0], "ok");
  EXPECT_EQ(new_response_id(Endpoint::chat).size(), std::string("chatcmpl-").size() + 24);
  EXPECT_EQ(sse({{"a", 1}}), "data: {\"a\":1}\n\n");
}

TEST(Metrics, PrometheusText) {
  Metrics m;
  m.request_started();
  m.request_finished("/v1/completions", 200, 0.3);
  m.generation_finished(10, 5, 0.02, false, false);
  const std::string t = m.render();
  EXPECT_NE(t.find("lmtune_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 1\n"), std::string::npos);
  EXPECT_NE(t.find("lmtune_prompt_tokens_total 10\n"), std::string::npos);
  EXPECT_NE(t.find("lmtune_completion_tokens_total 5\n"), std::string::npos);
  EXPECT_NE(t.find("lmtune_request_duration_seconds_bucket{le=\"0.25\"} 0\n"), std::string::npos);
  EXPECT_NE(t.find("lmtune_request_duration_seconds_bucket{le=\"0.5\"} 1\n"), std::string::npos);
  EXPECT_NE(t.find("lmtune_request_duration_seconds_bucket{le=\"+Inf\"} 1\n"), std::string::npos);
  EXPECT_NE(t.find("lmtune_time_to_first_token_seconds_count 1\n"), std::string::npos);
  EXPECT_NE(t.find("lmtune_requests_in_flight 0\n"), std::string::npos);
}

TEST(Metrics, BatchGaugesAndSizes) {
  Metrics m;
  BatchStats b;
  b.decoding = 3, b.prefilling = 1, b.waiting = 2;
  b.steps = 5, b.step_rows = 40, b.graph_steps = 1;
  b.batch_counts[0] = 2, b.batch_counts[2] = 3;  // two steps of one sequence, three of 3 or 4
  b.batch_sum = 2 + 3 + 4 + 4;
  b.cache_lookups = 6, b.cache_hits = 4, b.cache_tokens = 120, b.cache_evictions = 2;
  b.cache_entries = 3, b.cache_bytes = 4096;
  const std::string t = m.render(b);
  EXPECT_NE(t.find("lmtune_requests_in_flight 0\n"), std::string::npos) << "the plain metrics come first";
  for (const char* line : {"lmtune_sequences_running 3\n",
                           "lmtune_sequences_prefilling 1\n",
                           "lmtune_sequences_waiting 2\n",
                           "# TYPE lmtune_sequences_waiting gauge\n",
                           "lmtune_batch_steps_total 5\n",
                           "lmtune_batch_tokens_total 40\n",
                           "lmtune_batch_graph_steps_total 1\n",
                           "lmtune_batch_size_bucket{le=\"1\"} 2\n",
                           "lmtune_batch_size_bucket{le=\"2\"} 2\n",
                           "lmtune_batch_size_bucket{le=\"4\"} 5\n",
                           "lmtune_batch_size_bucket{le=\"128\"} 5\n",
                           "lmtune_batch_size_bucket{le=\"+Inf\"} 5\n",
                           "lmtune_batch_size_sum 13\n",
                           "lmtune_batch_size_count 5\n",
                           "lmtune_prompt_cache_lookups_total 6\n",
                           "lmtune_prompt_cache_hits_total 4\n",
                           "lmtune_prompt_cache_tokens_total 120\n",
                           "lmtune_prompt_cache_evictions_total 2\n",
                           "# TYPE lmtune_prompt_cache_entries gauge\n",
                           "lmtune_prompt_cache_entries 3\n",
                           "lmtune_prompt_cache_bytes 4096\n"})
    EXPECT_NE(t.find(line), std::string::npos) << line << t;
}
