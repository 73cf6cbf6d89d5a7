// Tool calls and the reasoning split on hand-written text: each format's parser (good and
// malformed calls), the streaming parser fed one byte at a time against the whole-text split,
// the forced-call grammars, and the request fields' refusals.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <random>

#include "runtime/json_constraint.h"
#include "runtime/json_schema.h"
#include "server/api_error.h"
#include "server/chat_output.h"
#include "server/output_parser.h"
#include "server/request.h"
#include "server/tool_calls.h"
#include "tokenizer/chat_template.h"

using namespace lmtune;
using namespace lmtune::server;
using ojson = nlohmann::ordered_json;

namespace {

SplitOutput streamed(const OutputSplit& s, const std::string& text) {
  OutputParser p(s);
  std::vector<OutputPiece> all;
  for (char c : text)
    for (OutputPiece& x : p.push(std::string(1, c))) all.push_back(std::move(x));
  for (OutputPiece& x : p.finish()) all.push_back(std::move(x));
  SplitOutput out;
  for (const OutputPiece& x : all) {
    if (x.kind == OutputPiece::Kind::content) out.content += x.text;
    if (x.kind == OutputPiece::Kind::reasoning) out.reasoning += x.text;
    if (x.kind == OutputPiece::Kind::tool_call) out.calls.push_back(x.call);
  }
  return out;
}

// The whole-text split, checked to equal the byte-by-byte streamed one.
SplitOutput split(ToolFormat f, const std::string& text, bool thinking = false, bool in_reasoning = false) {
  OutputSplit s{f, thinking, in_reasoning};
  SplitOutput whole = split_output(s, text), byte = streamed(s, text);
  EXPECT_EQ(whole.content, byte.content) << text;
  EXPECT_EQ(whole.reasoning, byte.reasoning) << text;
  EXPECT_EQ(whole.calls.size(), byte.calls.size()) << text;
  for (size_t i = 0; i < std::min(whole.calls.size(), byte.calls.size()); ++i) {
    EXPECT_EQ(whole.calls[i].name, byte.calls[i].name);
    EXPECT_EQ(whole.calls[i].arguments, byte.calls[i].arguments);
  }
  return whole;
}

ojson tools_json() {
  return ojson::parse(R"([
    {"type": "function", "function": {"name": "get_weather", "description": "d",
      "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time"}}])");
}

CompletionRequest parse(const ojson& body) {
  RequestDefaults d;
  d.n_vocab = 100;
  d.model_names = {"m"};
  return parse_request(body.dump(), Endpoint::chat, d);
}

std::string refused_param(const ojson& body) {
  try {
    (void)parse(body);
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    return e.param;
  }
  return "(accepted)";
}

}  // namespace

TEST(ToolFormat, DetectedFromTheTemplate) {
  EXPECT_EQ(detect_tool_format("{% if tools %}<tools>{{ tools }}</tools> <tool_call>...</tool_call>"),
            ToolFormat::hermes);
  EXPECT_EQ(detect_tool_format("{{ '[AVAILABLE_TOOLS]' }}{{ '[TOOL_CALLS]' }}"), ToolFormat::mistral);
  EXPECT_EQ(detect_tool_format("[func_name1(params_name1=params_value1)] <|python_tag|>"), ToolFormat::pythonic);
  EXPECT_EQ(detect_tool_format("<|start_header_id|>ipython<|end_header_id|>"), ToolFormat::llama_json);
  EXPECT_EQ(detect_tool_format("{% for t in tools %}{% endfor %}"), ToolFormat::hermes);
  EXPECT_EQ(detect_tool_format("{{ messages }}"), ToolFormat::none);
}

TEST(ToolCalls, HermesBodies) {
  auto c = parse_hermes_call(R"( {"name": "get_weather", "arguments": {"city": "Paris"}} )");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->name, "get_weather");
  EXPECT_EQ(c->arguments, R"({"city":"Paris"})");
  EXPECT_EQ(c->id.rfind("call_", 0), 0u);
  EXPECT_EQ(c->id.size(), 29u);
  c = parse_hermes_call(R"({"name": "f", "arguments": "{\"a\": 1}"})");  // arguments as JSON text
  ASSERT_TRUE(c);
  EXPECT_EQ(c->arguments, R"({"a":1})");
  c = parse_hermes_call(R"({"name": "f", "parameters": {"a": [1, 2]}})");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->arguments, R"({"a":[1,2]})");
  ASSERT_TRUE(parse_hermes_call(R"({"name": "f"})"));  // no arguments: {}
  for (const char* bad : {R"({"name": "f", "arguments": {"a": 1})", R"({"arguments": {}})", R"({"name": 3})",
                          R"({"name": "f", "arguments": [1]})", R"({"name": "f", "arguments": "{oops"})", "", "[1, 2]",
                          R"({"name": ""})"})
    EXPECT_FALSE(parse_hermes_call(bad)) << bad;
}

TEST(ToolCalls, MistralBothForms) {
  auto calls = parse_mistral_calls(R"([{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}])");
  ASSERT_TRUE(calls);
  ASSERT_EQ(calls->size(), 2u);
  EXPECT_EQ((*calls)[1].name, "b");
  calls = parse_mistral_calls(R"(get_weather[ARGS]{"city": "Oslo"}[TOOL_CALLS]get_time[ARGS]{})");
  ASSERT_TRUE(calls);
  ASSERT_EQ(calls->size(), 2u);
  EXPECT_EQ((*calls)[0].arguments, R"({"city":"Oslo"})");
  EXPECT_EQ((*calls)[1].name, "get_time");
  for (const char* bad : {"", "[]", R"([{"name": "a", "arguments": {"x": 1}})", R"(get_weather{"city": 1})",
                          R"([ARGS]{"a": 1})", R"(f[ARGS]{"a": )", "just text"})
    EXPECT_FALSE(parse_mistral_calls(bad)) << bad;
}

TEST(ToolCalls, PythonicCalls) {
  auto calls = parse_pythonic_calls(
      R"( [get_weather(city="Paris", days=3), search(q='it\'s', opts={"deep": True, "n": None}, ids=[1, 2.5, -3]), noop()] )");
  ASSERT_TRUE(calls);
  ASSERT_EQ(calls->size(), 3u);
  EXPECT_EQ((*calls)[0].arguments, R"({"city":"Paris","days":3})");
  EXPECT_EQ((*calls)[2].name, "noop");
  EXPECT_EQ((*calls)[2].arguments, "{}");
  calls = parse_pythonic_calls(R"(<|tool_call_start|>[f(s="a\"b\n")]<|tool_call_end|>)");
  ASSERT_TRUE(calls);
  EXPECT_EQ((*calls)[0].arguments, R"({"s":"a\"b\n"})");
  for (const char* bad : {"[get_weather(city=\"Paris\"]", "[1, 2]", "[]", "[f(x)]", "[f(a=1) trailing",
                          "[f(a=1)] and more", "get_weather(city=\"Paris\")", "[f(a=\"open)]", "[f(a=undefined_name)]"})
    EXPECT_FALSE(parse_pythonic_calls(bad)) << bad;
}

TEST(ToolCalls, LlamaJson) {
  auto calls = parse_llama_json_calls(R"(<|python_tag|>{"name": "f", "parameters": {"a": 1}})");
  ASSERT_TRUE(calls);
  EXPECT_EQ((*calls)[0].arguments, R"({"a":1})");
  calls = parse_llama_json_calls(R"({"name": "f", "parameters": {}}; {"name": "g", "parameters": {"b": "x"}})");
  ASSERT_TRUE(calls);
  EXPECT_EQ(calls->size(), 2u);
  for (const char* bad : {R"({"name": "f", "parameters": })", R"({"function": "f"})", "hello", "{}"})
    EXPECT_FALSE(parse_llama_json_calls(bad)) << bad;
}

TEST(OutputParser, HermesCallsAmidText) {
  auto s = split(ToolFormat::hermes,
                 "Let me check. <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n"
                 "</tool_call><tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call>");
  EXPECT_EQ(s.content, "Let me check. ");
  ASSERT_EQ(s.calls.size(), 2u);
  EXPECT_EQ(s.calls[0].arguments, R"({"city":"Rome"})");
  EXPECT_EQ(s.calls[1].name, "get_time");
  // A malformed call stays content, markers included; so does an unclosed one that does not parse.
  s = split(ToolFormat::hermes, "a <tool_call>{\"name\": oops}</tool_call> b");
  EXPECT_EQ(s.content, "a <tool_call>{\"name\": oops}</tool_call> b");
  EXPECT_TRUE(s.calls.empty());
  s = split(ToolFormat::hermes, "x <tool_call>{\"name\": \"f\", \"argu");
  EXPECT_EQ(s.content, "x <tool_call>{\"name\": \"f\", \"argu");
  s = split(ToolFormat::hermes, "x <tool_call>{\"name\": \"f\"}");  // cut before the closing tag, but whole
  ASSERT_EQ(s.calls.size(), 1u);
  s = split(ToolFormat::hermes, "ends with a partial marker <tool_ca");
  EXPECT_EQ(s.content, "ends with a partial marker <tool_ca");
  s = split(ToolFormat::none, "<tool_call>{\"name\": \"f\"}</tool_call>");  // tools off: text
  EXPECT_TRUE(s.calls.empty());
}

TEST(OutputParser, MistralPythonicAndLlamaJson) {
  auto s = split(ToolFormat::mistral, "Sure.[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"a\": 1}}]");
  EXPECT_EQ(s.content, "Sure.");
  ASSERT_EQ(s.calls.size(), 1u);
  s = split(ToolFormat::mistral, "[TOOL_CALLS]f[ARGS]{\"a\": [1]}");
  ASSERT_EQ(s.calls.size(), 1u);
  EXPECT_EQ(s.calls[0].arguments, R"({"a":[1]})");
  s = split(ToolFormat::mistral, "[TOOL_CALLS]not a call");
  EXPECT_EQ(s.content, "[TOOL_CALLS]not a call");
  s = split(ToolFormat::pythonic, "  [get_weather(city=\"Paris\")]");
  ASSERT_EQ(s.calls.size(), 1u);
  EXPECT_EQ(s.content, "");
  s = split(ToolFormat::pythonic, "[citation needed] is a phrase");
  EXPECT_EQ(s.content, "[citation needed] is a phrase");
  s = split(ToolFormat::pythonic, "The call [f(a=1)] inside text is text");
  EXPECT_TRUE(s.calls.empty());
  s = split(ToolFormat::llama_json, "<|python_tag|>{\"name\": \"f\", \"parameters\": {\"q\": \"x\"}}");
  ASSERT_EQ(s.calls.size(), 1u);
  s = split(ToolFormat::llama_json, "{\"not\": \"a call\"}");
  EXPECT_EQ(s.content, "{\"not\": \"a call\"}");
}

// Every prefix of each format's calls, and random byte changes to them, split without an exception;
// a text whose call does not parse keeps every byte (content + reasoning + markers).
TEST(OutputParser, CutAndMangledCallsNeverThrow) {
  const std::vector<std::pair<ToolFormat, std::string>> texts = {
      {ToolFormat::hermes,
       "Hi <tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": [1, {\"b\": \"x\"}]}}\n</tool_call>"},
      {ToolFormat::mistral, "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"a\": 1}}]"},
      {ToolFormat::mistral, "[TOOL_CALLS]f[ARGS]{\"a\": \"b\"}"},
      {ToolFormat::pythonic, "[f(a=1, b='x', c=[1, {'d': None}]), g()]"},
      {ToolFormat::llama_json, "<|python_tag|>{\"name\": \"f\", \"parameters\": {\"a\": 1}}"}};
  std::mt19937 rng(1);
  for (const auto& [f, text] : texts) {
    for (size_t n = 0; n <= text.size(); ++n) {
      std::string t = text.substr(0, n);
      for (bool think : {false, true}) {
        SplitOutput s;
        ASSERT_NO_THROW(s = split(f, t, think)) << t;
        if (s.calls.empty() && !think) {
          EXPECT_EQ(s.content, t);
        }
      }
    }
    for (int k = 0; k < 300; ++k) {
      std::string t = text;
      for (int m = 0; m < 3; ++m) t[rng() % t.size()] = char(rng() % 256);
      ASSERT_NO_THROW((void)split(f, t, true)) << t;
    }
  }
}

TEST(OutputParser, ReasoningSplit) {
  auto s = split(ToolFormat::none, "<think>Let me think.\nOK</think>\n\nThe answer is 4.", true);
  EXPECT_EQ(s.reasoning, "Let me think.\nOK");
  EXPECT_EQ(s.content, "The answer is 4.");
  s = split(ToolFormat::none, "still thinking</think>done", true, true);  // the prompt opened <think>
  EXPECT_EQ(s.reasoning, "still thinking");
  EXPECT_EQ(s.content, "done");
  s = split(ToolFormat::none, "never closed </thin", true, true);
  EXPECT_EQ(s.reasoning, "never closed </thin");
  EXPECT_EQ(s.content, "");
  s = split(ToolFormat::hermes, "<think>call f</think><tool_call>{\"name\": \"f\"}</tool_call>", true);
  EXPECT_EQ(s.reasoning, "call f");
  ASSERT_EQ(s.calls.size(), 1u);
  EXPECT_EQ(s.content, "");
}

TEST(ForcedCalls, GrammarsMatchTheParsers) {
  const ojson tools = tools_json();
  auto g = forced_call_grammar(ToolFormat::hermes, tools, "");
  JsonMachine m(*g);
  const std::string text = "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Rome\"}}\n</tool_call>";
  ASSERT_TRUE(m.feed(text));
  EXPECT_TRUE(m.done());
  auto s = split_output({ToolFormat::hermes, false, false}, text);
  ASSERT_EQ(s.calls.size(), 1u);
  EXPECT_EQ(s.calls[0].arguments, R"({"city":"Rome"})");
  EXPECT_FALSE(JsonMachine(*g).feed("<tool_call>\n{\"name\":\"get_weathe\","));
  EXPECT_FALSE(JsonMachine(*g).feed("<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{}}"));  // city required
  ojson many = ojson::array();  // more tools than a forced choice takes
  for (int i = 0; i < 65; ++i) {
    char name[16];
    std::snprintf(name, sizeof name, "t%d", i);
    many.push_back({{"type", "function"}, {"function", {{"name", name}}}});
  }
  try {
    (void)forced_call_grammar(ToolFormat::hermes, many, "");
    FAIL() << "65 forced alternatives were accepted";
  } catch (const SchemaError& e) {
    EXPECT_EQ(e.path, "tools");
  }
  auto only = forced_call_grammar(ToolFormat::hermes, tools, "get_time");
  EXPECT_FALSE(JsonMachine(*only).feed("<tool_call>\n{\"name\":\"get_weather\""));
  EXPECT_TRUE(JsonMachine(*only).feed("<tool_call>\n{\"name\":\"get_time\",\"arguments\":{}}\n</tool_call>"));

  auto mg = forced_call_grammar(ToolFormat::mistral, tools, "get_time");
  const std::string mt = "[TOOL_CALLS][{\"name\":\"get_time\",\"arguments\":{}}]";
  ASSERT_TRUE(JsonMachine(*mg).feed(mt));
  EXPECT_EQ(split_output({ToolFormat::mistral, false, false}, mt).calls.size(), 1u);
  auto lg = forced_call_grammar(ToolFormat::llama_json, tools, "get_time");
  const std::string lt = "{\"name\":\"get_time\",\"parameters\":{}}";
  ASSERT_TRUE(JsonMachine(*lg).feed(lt));
  EXPECT_EQ(split_output({ToolFormat::llama_json, false, false}, lt).calls.size(), 1u);

  EXPECT_THROW(forced_call_grammar(ToolFormat::none, tools, ""), std::invalid_argument);
  ojson bad = tools;
  bad[1]["function"]["parameters"] = ojson::parse(R"({"type": "object", "properties": {"x": {"pattern": "a"}}})");
  try {
    (void)forced_call_grammar(ToolFormat::hermes, bad, "");
    FAIL() << "an unsupported keyword was accepted";
  } catch (const SchemaError& e) {
    EXPECT_EQ(e.path, "tools[1].function.parameters.properties.x.pattern");
    EXPECT_NE(std::string(e.what()).find("tools[1].function.parameters.properties.x.pattern"), std::string::npos);
  }
}

// Forced pythonic calls: Python keyword arguments and literals, read back by the pythonic parser on
// every finished random walk over a small vocabulary.
TEST(ForcedCalls, PythonicWalksParse) {
  const ojson tools = ojson::parse(R"([
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
      "city": {"type": "string", "maxLength": 6}, "days": {"type": "integer"}, "metric": {"type": "boolean"},
      "extra": {"type": ["null", "array"], "items": {"enum": ["a", true, null]}, "maxItems": 2},
      "opts": {"type": "object", "properties": {"deep": {"type": "boolean"}}}},
      "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time"}}])");
  auto g = forced_call_grammar(ToolFormat::pythonic, tools, "");
  EXPECT_TRUE(JsonMachine(*g).feed("[get_time()]"));
  EXPECT_TRUE(JsonMachine(*g).feed("[get_weather(city=\"Rome\",metric=True,extra=None)]"));
  EXPECT_FALSE(JsonMachine(*g).feed("[get_weather()"));                       // city is required
  EXPECT_FALSE(JsonMachine(*g).feed("[get_weather(city=\"R\",metric=true"));  // Python literals
  EXPECT_FALSE(JsonMachine(*g).feed("[get_weather(city=\"\\/"));              // Python keeps the backslash of \/
  std::vector<std::string> vocab = {""};
  for (int b = 1; b < 128; ++b) vocab.push_back(std::string(1, char(b)));
  for (const char* p : {"get_", "weather(", "city=\"", "True", "False", "None", "\")]", "opts={", "\"deep\":"})
    vocab.push_back(p);
  auto table = TokenTable::from_bytes(vocab);
  std::mt19937 rng(5);
  int parsed = 0;
  for (int walk = 0; walk < 200; ++walk) {
    JsonConstraint c(g, table, {0});
    std::string text;
    for (int step = 0; step < 300; ++step) {
      std::vector<uint8_t> ok = c.allowed(vocab.size());
      std::vector<int32_t> ids;
      for (size_t i = 0; i < ok.size(); ++i)
        if (ok[i]) ids.push_back(int32_t(i));
      ASSERT_FALSE(ids.empty()) << text;
      const int32_t id = ok[0] ? 0 : ids[rng() % ids.size()];
      c.accept(id);
      if (id == 0) break;
      text += vocab[size_t(id)];
    }
    if (!c.complete()) continue;
    auto calls = parse_pythonic_calls(text);
    ASSERT_TRUE(calls) << text;
    ASSERT_EQ(calls->size(), 1u);
    const ojson args = ojson::parse((*calls)[0].arguments);
    if ((*calls)[0].name == "get_weather") {
      EXPECT_TRUE(args.contains("city") && args["city"].is_string()) << text;
      if (args.contains("metric")) {
        EXPECT_TRUE(args["metric"].is_boolean()) << text;
      }
    } else {
      EXPECT_EQ((*calls)[0].name, "get_time");
      EXPECT_TRUE(args.empty());
    }
    ++parsed;
  }
  EXPECT_GT(parsed, 150);
}

TEST(ToolRequests, FieldsCheckedByName) {
  const ojson msgs = ojson::parse(R"([{"role": "user", "content": "hi"}])");
  ojson ok = {{"messages", msgs}, {"tools", tools_json()}, {"tool_choice", "required"}};
  CompletionRequest r = parse(ok);
  EXPECT_EQ(r.tool_choice, "required");
  EXPECT_EQ(r.tools.size(), 2u);
  r = parse({{"messages", msgs},
             {"tools", tools_json()},
             {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_time"}}}}}});
  EXPECT_EQ(r.tool_name, "get_time");
  auto with = [&](const char* key, const ojson& v) {
    ojson b = {{"messages", msgs}, {"tools", tools_json()}};
    b[key] = v;
    return b;
  };
  EXPECT_EQ(refused_param(with("tools", 3)), "tools");
  EXPECT_EQ(refused_param(with("tools", ojson::parse(R"([{"type": "retrieval"}])"))), "tools[0].type");
  EXPECT_EQ(refused_param(with("tools", ojson::parse(R"([{"type": "function", "function": {"name": "a b"}}])"))),
            "tools[0].function.name");
  EXPECT_EQ(refused_param(
                with("tools", ojson::parse(R"([{"type": "function", "function": {"name": "a", "parameters": 1}}])"))),
            "tools[0].function.parameters");
  ojson twice = tools_json();
  twice.push_back(twice[0]);
  EXPECT_EQ(refused_param(with("tools", twice)), "tools[2].function.name");
  EXPECT_EQ(refused_param(with("tool_choice", "sometimes")), "tool_choice");
  EXPECT_EQ(refused_param(with("tool_choice", {{"type", "function"}, {"function", {{"name", "nope"}}}})),
            "tool_choice.function.name");
  EXPECT_EQ(refused_param({{"messages", msgs}, {"tool_choice", "required"}}), "tool_choice");
  EXPECT_EQ(refused_param({{"messages", msgs}, {"response_format", {{"type", "xml"}}}}), "response_format.type");
  EXPECT_EQ(
      refused_param({{"messages", msgs},
                     {"response_format",
                      {{"type", "json_schema"}, {"json_schema", {{"name", "x"}, {"schema", {{"$ref", "#/a"}}}}}}}}),
      "response_format.json_schema.schema.$ref");
  EXPECT_EQ(refused_param({{"messages", msgs}, {"response_format", {{"type", "json_schema"}}}}),
            "response_format.json_schema");
  // Schemas past the automaton's bounds are refused by place, not built.
  ojson big_enum = ojson::array();
  for (int i = 0; i < 65; ++i) big_enum.push_back(i);
  auto schema_param = [&](const ojson& schema) {
    return refused_param(
        {{"messages", msgs}, {"response_format", {{"type", "json_schema"}, {"json_schema", {{"schema", schema}}}}}});
  };
  EXPECT_EQ(schema_param({{"enum", big_enum}}), "response_format.json_schema.schema.enum");
  ojson deep = {{"type", "string"}};
  for (int i = 0; i < 40; ++i) deep = {{"type", "array"}, {"items", deep}};
  EXPECT_NE(schema_param(deep).find("response_format.json_schema.schema.items.items"), std::string::npos);
  EXPECT_EQ(schema_param({{"type", "string"}, {"maxLength", -1}}), "response_format.json_schema.schema.maxLength");
  EXPECT_EQ(schema_param(false), "response_format.json_schema.schema");
  EXPECT_EQ(schema_param({{"anyOf", {{{"type", "string"}}, {{"enum", {"x"}}}}}}),
            "response_format.json_schema.schema.anyOf");  // both start with '"'
  EXPECT_EQ(schema_param(ojson::parse(R"({"type": "object", "properties": {"a": {}}, "required": ["b"]})")),
            "response_format.json_schema.schema.required");
  // History: a tool message needs its tool_call_id; an assistant's call arguments must be JSON.
  EXPECT_EQ(refused_param({{"messages", ojson::parse(R"([{"role": "tool", "content": "20C"}])")}}),
            "messages[0].tool_call_id");
  EXPECT_EQ(refused_param({{"messages", ojson::parse(R"([{"role": "assistant", "content": null, "tool_calls":
      [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}])")}}),
            "messages[0].tool_calls[0].function.arguments");
  r = parse({{"messages", ojson::parse(R"([{"role": "user", "content": "w?"}, {"role": "assistant", "content": null,
      "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
      {"role": "tool", "tool_call_id": "c1", "content": "20C"}])")}});
  EXPECT_EQ(r.messages[1]["tool_calls"][0]["function"]["arguments"], ojson::parse(R"({"a": 1})"));
  r = parse({{"messages", msgs}, {"response_format", {{"type", "json_object"}}}});
  EXPECT_TRUE(r.grammar);
}

TEST(ToolRequests, PrepareChooseFormatAndForce) {
  CompletionRequest r;
  r.tools = tools_json();
  r.tool_choice = "function";
  r.tool_name = "get_time";
  OutputSplit s = prepare_chat_output(r, "[TOOL_CALLS] {{ tools }}", "");
  EXPECT_EQ(s.tools, ToolFormat::mistral);
  ASSERT_TRUE(r.grammar);
  EXPECT_FALSE(s.thinking);  // a forced answer is never read as thinking
  CompletionRequest p;
  p.tools = tools_json();
  p.tool_choice = "required";
  s = prepare_chat_output(p, "func_name1(", "");
  EXPECT_EQ(s.tools, ToolFormat::pythonic);
  EXPECT_TRUE(p.grammar);
  CompletionRequest q;  // a pythonic call's argument names must be identifiers
  q.tools = ojson::parse(R"([{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
      "properties": {"a-b": {"type": "string"}}}}}])");
  q.tool_choice = "required";
  try {
    (void)prepare_chat_output(q, "func_name1(", "");
    FAIL() << "a non-identifier argument name was accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.param, "tools[0].function.parameters.properties.a-b");
  }
  CompletionRequest t;
  s = prepare_chat_output(t, "<think></think>", "<|im_start|>assistant\n<think>\n");
  EXPECT_TRUE(s.thinking);
  EXPECT_TRUE(s.start_in_reasoning);
  EXPECT_EQ(s.tools, ToolFormat::none);
}

// Qwen3's real template (the tokenizer tests' npm fixture): hermes calls, thinking, and a history with
// a call (arguments sent as JSON text) and its result rendered as the model was trained to read them.
TEST(RealTemplates, Qwen3ToolsAndThinking) {
  const char* dir = std::getenv("LMTUNE_QWEN3_TOKENIZER");
  if (!dir || !*dir) GTEST_SKIP() << "LMTUNE_QWEN3_TOKENIZER is not set";
  ChatTemplate chat = ChatTemplate::load(dir);
  CompletionRequest r =
      parse({{"tools", tools_json()}, {"messages", ojson::parse(R"([{"role": "user", "content": "Weather in Rome?"},
      {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
       "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
      {"role": "tool", "tool_call_id": "call_1", "content": "20C"}])")}});
  ChatTemplateOptions o;
  o.tools = r.tools;
  o.add_generation_prompt = true;
  const std::string src = chat.select_template(o);
  const std::string text = chat.render(r.messages, o);
  EXPECT_NE(text.find("\"name\": \"get_weather\""), std::string::npos) << text;  // the tools listed
  EXPECT_NE(text.find("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call>"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("<tool_response>\n20C\n</tool_response>"), std::string::npos) << text;
  CompletionRequest plain;
  OutputSplit s = prepare_chat_output(r, src, text.substr(text.size() - 30));
  EXPECT_EQ(s.tools, ToolFormat::hermes);
  EXPECT_TRUE(s.thinking);
  EXPECT_FALSE(s.start_in_reasoning);
  // enable_thinking false: the prompt closes an empty think block; the answer is content.
  o.kwargs = {{"enable_thinking", false}};
  const std::string closed = chat.render(ojson::parse(R"([{"role": "user", "content": "hi"}])"), o);
  s = prepare_chat_output(plain, src, closed.substr(closed.size() - 30));
  EXPECT_TRUE(s.thinking);
  EXPECT_FALSE(s.start_in_reasoning);
  // A call as Qwen3 writes it, spaces and newlines included, parses.
  auto out = split_output({ToolFormat::hermes, true, false},
                          "<think>\nweather\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
                          "{\"city\": \"Rome\"}}\n</tool_call>");
  EXPECT_EQ(out.reasoning, "\nweather\n");
  ASSERT_EQ(out.calls.size(), 1u);
  EXPECT_EQ(out.calls[0].arguments, R"({"city":"Rome"})");
}
