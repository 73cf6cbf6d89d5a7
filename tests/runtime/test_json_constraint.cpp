// JSON-schema constrained decoding: the byte automaton on hand-written texts, the compiler's
// refusals, random walks over a synthetic vocabulary whose every finished text must parse and
// validate, and the cost of one mask over a 150k vocabulary (synthetic, and Qwen3's real one when
// LMTUNE_QWEN3_TOKENIZER names its folder).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <random>

#include "runtime/json_constraint.h"
#include "runtime/sampler.h"

using namespace lmtune;
using ojson = nlohmann::ordered_json;

namespace {

std::shared_ptr<const JsonGrammar> grammar(const char* schema) {
  return JsonGrammar::from_schema(ojson::parse(schema));
}

// Whether the automaton takes the whole text as a complete value.
bool accepts(const JsonGrammar& g, const std::string& text) {
  JsonMachine m(g);
  return m.feed(text) && m.can_end();
}

size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// The supported subset of JSON Schema, as an independent check of the automaton's output.
bool valid(const ojson& v, const ojson& s) {
  if (s.contains("const")) return v == s["const"];
  if (s.contains("enum")) {
    for (const auto& e : s["enum"])
      if (e == v) return true;
    return false;
  }
  if (s.contains("anyOf")) {
    for (const auto& b : s["anyOf"])
      if (valid(v, b)) return true;
    return false;
  }
  if (s.contains("type") && s["type"].is_array()) {
    for (const auto& t : s["type"]) {
      ojson one = s;
      one["type"] = t;
      if (valid(v, one)) return true;
    }
    return false;
  }
  const std::string t = s.value("type", "");
  if (t == "object") {
    if (!v.is_object()) return false;
    for (const auto& r : s.value("required", ojson::array()))
      if (!v.contains(r.get<std::string>())) return false;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (!s["properties"].contains(it.key())) return false;
      if (!valid(*it, s["properties"][it.key()])) return false;
    }
    return true;
  }
  if (t == "array") {
    if (!v.is_array()) return false;
    if (int64_t(v.size()) < s.value("minItems", int64_t(0))) return false;
    if (s.contains("maxItems") && int64_t(v.size()) > s["maxItems"].get<int64_t>()) return false;
    for (const auto& x : v)
      if (s.contains("items") && !valid(x, s["items"])) return false;
    return true;
  }
  if (t == "string") {
    if (!v.is_string()) return false;
    const size_t n = code_points(v.get<std::string>());
    if (int64_t(n) < s.value("minLength", int64_t(0))) return false;
    return !s.contains("maxLength") || int64_t(n) <= s["maxLength"].get<int64_t>();
  }
  if (t == "integer") return v.is_number_integer();
  if (t == "number") return v.is_number();
  if (t == "boolean") return v.is_boolean();
  if (t == "null") return v.is_null();
  return true;
}

// Every byte alone, some JSON-looking pieces, and multi-byte UTF-8 and partial characters.
std::vector<std::string> small_vocab() {
  std::vector<std::string> v = {""};  // id 0: EOS, a special token (no bytes)
  for (int b = 1; b < 256; ++b) v.push_back(std::string(1, char(b)));
  for (const char* p : {"{\"",  "\":",      "\",\"",     "\"}",  "true", "false", "null",    "name",
                        "age",  "tags",     "\"name\":", "12",   "3.5",  "e+",    "-0",      "é",
                        "日本", "\xE6\x97", "\\n",       "\\\"", "\"]",  "],",    "},",      ":[",
                        "ok\"", "a b",      " ",         "\"\"", "[]",   "{}",    "\\u00e9", "\xF0\x9F\x98\x80"})
    v.push_back(p);
  return v;
}

const char* kPerson = R"({"type": "object",
  "properties": {"name": {"type": "string", "maxLength": 6}, "age": {"type": "integer"},
                 "tags": {"type": "array", "items": {"enum": ["a", "b", 3]}, "maxItems": 3},
                 "ok": {"type": ["boolean", "null"]}, "kind": {"const": "person"},
                 "score": {"type": "number"}},
  "required": ["name", "age"]})";

}  // namespace

TEST(JsonMachine, AcceptsAndRefusesTexts) {
  auto g = grammar(kPerson);
  EXPECT_TRUE(accepts(*g, R"({"name":"Bo","age":3})"));
  EXPECT_TRUE(accepts(*g, R"({"name":"","age":-10,"tags":["a",3],"ok":null,"kind":"person","score":1.5e-3})"));
  EXPECT_TRUE(accepts(*g, R"({"name":"日本\n","age":0,"ok":true})"));
  EXPECT_FALSE(accepts(*g, R"({"age":3,"name":"Bo"})"));                           // schema order
  EXPECT_FALSE(accepts(*g, R"({"name":"Bo"})"));                                   // age is required
  EXPECT_FALSE(accepts(*g, R"({"name":"Bo","age":3.5})"));                         // an integer
  EXPECT_FALSE(accepts(*g, R"({"name":"Bo","age":03})"));                          // no leading zero
  EXPECT_FALSE(accepts(*g, R"({"name":"Bobby12","age":3})"));                      // maxLength 6
  EXPECT_FALSE(accepts(*g, R"({"name":"Bo","age":3,"tags":["c"]})"));              // enum
  EXPECT_FALSE(accepts(*g, R"({"name":"Bo","age":3,"tags":["a","a","a","a"]})"));  // maxItems
  EXPECT_FALSE(accepts(*g, R"({"name":"Bo","age":3,"extra":1})"));
  EXPECT_FALSE(accepts(*g, R"({"name": "Bo","age":3})"));              // compact: no whitespace
  EXPECT_FALSE(accepts(*g, "{\"name\":\"a\x01\",\"age\":3}"));         // a control character
  EXPECT_FALSE(accepts(*g, "{\"name\":\"\xC3\",\"age\":3}"));          // a cut UTF-8 character
  EXPECT_FALSE(accepts(*g, "{\"name\":\"\xED\xA0\x80\",\"age\":3}"));  // a surrogate
  EXPECT_FALSE(accepts(*g, R"({"name":"Bo","age":3})"
                           "x"));  // nothing after the value
  JsonMachine open(*g);
  ASSERT_TRUE(open.feed(R"({"name":"Bo","age":12)"));
  EXPECT_FALSE(open.can_end());
  EXPECT_FALSE(open.done());

  auto num = grammar(R"({"type": "number"})");  // a bare number may end or grow
  JsonMachine m(*num);
  ASSERT_TRUE(m.feed("-1.5"));
  EXPECT_TRUE(m.can_end());
  EXPECT_TRUE(m.feed("e3"));
  EXPECT_FALSE(accepts(*num, "1."));
  EXPECT_FALSE(accepts(*num, std::string(30, '1')));  // numbers are capped at 24 bytes

  auto any = JsonGrammar::any_object();
  EXPECT_TRUE(accepts(*any, R"({"a":[1,{"b":null},"x",true],"c":{}})"));
  EXPECT_FALSE(accepts(*any, R"([1])"));
  EXPECT_FALSE(accepts(*any, R"({"a":tru})"));

  auto lits = grammar(R"({"enum": [1, 12, "x"]})");  // a literal that is a prefix of another
  EXPECT_TRUE(accepts(*lits, "1"));
  EXPECT_TRUE(accepts(*lits, "12"));
  EXPECT_FALSE(accepts(*lits, "123"));
}

TEST(JsonMachine, CompilerRefusesUnsupportedKeywordsByPath) {
  auto path_of = [](const char* schema) {
    try {
      (void)JsonGrammar::from_schema(ojson::parse(schema));
    } catch (const SchemaError& e) {
      return e.path;
    }
    return std::string("(accepted)");
  };
  EXPECT_EQ(path_of(R"({"$ref": "#/x"})"), "$ref");
  EXPECT_EQ(path_of(R"({"type": "object", "properties": {"a": {"type": "string", "pattern": "x+"}}})"),
            "properties.a.pattern");
  EXPECT_EQ(path_of(R"({"type": "integer", "minimum": 0})"), "minimum");
  EXPECT_EQ(path_of(R"({"type": "object", "properties": {}, "required": ["a"]})"), "required");
  EXPECT_EQ(path_of(R"({"type": "array", "items": [{"type": "string"}]})"), "items");
  EXPECT_EQ(path_of(R"({"type": "date"})"), "type");
  EXPECT_EQ(path_of(R"({"anyOf": [{"type": "object"}, {"type": "object", "properties": {}}]})"), "anyOf");
  EXPECT_EQ(path_of(R"({"type": "string", "minLength": 3, "maxLength": 2})"), "maxLength");
  EXPECT_EQ(path_of(R"({"type": "string", "description": "annotations are fine", "title": "t"})"), "(accepted)");
}

TEST(JsonConstraint, RandomWalksAlwaysParseAndValidate) {
  const ojson schema = ojson::parse(kPerson);
  auto g = JsonGrammar::from_schema(schema);
  auto table = TokenTable::from_bytes(small_vocab());
  std::mt19937 rng(7);
  int finished = 0;
  for (int walk = 0; walk < 300; ++walk) {
    JsonConstraint c(g, table, {0});
    std::string text;
    bool ended = false;
    for (int step = 0; step < 400 && !ended; ++step) {
      std::vector<uint8_t> ok = c.allowed(table->bytes.size());
      std::vector<int32_t> ids;
      for (size_t i = 0; i < ok.size(); ++i)
        if (ok[i]) ids.push_back(int32_t(i));
      ASSERT_FALSE(ids.empty()) << "no token allowed after: " << text;
      // Prefer ending when allowed, so most walks finish.
      int32_t id = ok[0] && rng() % 3 == 0 ? 0 : ids[rng() % ids.size()];
      if (c.complete()) {
        ASSERT_EQ(ids, std::vector<int32_t>{0}) << "only EOS after a closed value";
      }
      c.accept(id);
      if (id == 0) {
        ended = true;
      } else {
        text += table->bytes[size_t(id)];
      }
    }
    if (!ended) continue;
    ++finished;
    ojson v;
    ASSERT_NO_THROW(v = ojson::parse(text)) << text;
    EXPECT_TRUE(valid(v, schema)) << text;
  }
  EXPECT_GT(finished, 200);
}

TEST(JsonConstraint, SamplerMasksBeforeChoosing) {
  auto table = TokenTable::from_bytes(small_vocab());
  Sampler s(SamplerOptions{}, 0);
  s.set_constraint(
      std::make_shared<JsonConstraint>(grammar(R"({"enum": ["yes", "no"]})"), table, std::vector<int32_t>{0}));
  std::string text;
  std::vector<int32_t> history;
  for (int step = 0; step < 10; ++step) {
    std::vector<float> logits(table->bytes.size(), 0.f);
    logits['x'] = 50.f;  // greedy would pick 'x' every time without the constraint
    const int32_t id = s.sample(logits, history);
    if (id == 0) break;
    text += table->bytes[size_t(id)];
  }
  EXPECT_TRUE(text == "\"yes\"" || text == "\"no\"") << text;
  EXPECT_TRUE(s.constraint()->complete());
}

// Times one mask at typical states; prints the figures (the test bounds them loosely).
static void time_masks(const std::shared_ptr<const TokenTable>& table, const std::string& what) {
  auto g = grammar(R"({"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
      "tags": {"type": "array", "items": {"type": "string"}}, "meta": {}}, "required": ["city"]})");
  const std::vector<std::pair<const char*, std::string>> states = {
      {"object start", ""},
      {"in a key", "{\"ci"},
      {"in a string", "{\"city\":\"Par"},
      {"in a number", "{\"city\":\"P\",\"days\":1"},
      {"in any value", "{\"city\":\"P\",\"meta\":{\"x\":"}};
  for (const auto& [name, prefix] : states) {
    JsonConstraint c(g, table, {0});
    JsonMachine probe(*g);
    ASSERT_TRUE(probe.feed(prefix)) << prefix;
    for (char ch : prefix) {  // walk the prefix with single-byte tokens where the vocabulary has them
      int32_t id = -1;
      for (int32_t cand : table->by_first[uint8_t(ch)])
        if (table->bytes[size_t(cand)].size() == 1) id = cand;
      ASSERT_GE(id, 0);
      c.accept(id);
    }
    std::vector<float> logits(table->bytes.size(), 0.f);
    const auto t0 = std::chrono::steady_clock::now();
    const int reps = 5;
    for (int r = 0; r < reps; ++r) {
      std::vector<float> l = logits;
      c.mask(l);
    }
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
    size_t allowed = 0;
    for (uint8_t x : c.allowed(table->bytes.size())) allowed += x;
    std::printf("[ mask    ] %s vocab %zu, %-14s %7.2f ms, %zu allowed\n", what.c_str(), table->bytes.size(), name, ms,
                allowed);
    EXPECT_LT(ms, 500.0) << name;
  }
}

TEST(JsonConstraint, MaskCostOnA150kVocabulary) {
  std::mt19937 rng(3);
  const std::string alphabet = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;\"{}[]-_'()!?\n";
  std::vector<std::string> vocab = {""};
  for (int b = 1; b < 256; ++b) vocab.push_back(std::string(1, char(b)));
  while (vocab.size() < 150000) {
    std::string t;
    for (size_t n = 2 + rng() % 7; n > 0; --n) t += alphabet[rng() % alphabet.size()];
    vocab.push_back(t);
  }
  time_masks(TokenTable::from_bytes(std::move(vocab)), "synthetic");
}

TEST(JsonConstraint, MaskCostOnQwen3Vocabulary) {
  const char* dir = std::getenv("LMTUNE_QWEN3_TOKENIZER");
  if (!dir || !*dir) GTEST_SKIP() << "LMTUNE_QWEN3_TOKENIZER is not set";
  Tokenizer tok = Tokenizer::load(dir);
  const auto t0 = std::chrono::steady_clock::now();
  auto table = TokenTable::from_tokenizer(tok);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ table   ] qwen3 vocab %zu: token bytes in %.0f ms\n", table->bytes.size(), ms);
  // Byte-level tokens that are parts of a character come out as raw bytes.
  size_t usable = 0;
  for (const auto& b : table->bytes) usable += !b.empty();
  EXPECT_GT(usable, 150000u);
  EXPECT_EQ(table->bytes[size_t(tok.encode("{\"", false).at(0))], "{\"");
  time_masks(table, "qwen3");
}

// A special token may spell a forced literal (Mistral's [TOOL_CALLS] control token), never JSON text.
TEST(JsonConstraint, SpecialTokensOnlyInForcedLiterals) {
  std::vector<std::string> bytes = small_vocab();
  const int32_t marker = int32_t(bytes.size()), im_end = marker + 1;
  bytes.push_back("");  // [TOOL_CALLS], special
  bytes.push_back("");  // <|im_end|>, special
  auto table = TokenTable::from_bytes(bytes, {{marker, "[TOOL_CALLS]"}, {im_end, "<|im_end|>"}});
  auto g = JsonGrammar::wrapped_choice(
      "[TOOL_CALLS][", {{"{\"name\":\"f\",\"arguments\":", ojson::parse(R"({"type": "object", "properties":
      {"s": {"type": "string"}}, "required": ["s"]})")}},
      "}]");
  JsonConstraint c(g, table, {0});
  std::vector<uint8_t> ok = c.allowed(bytes.size());
  EXPECT_TRUE(ok[size_t(marker)]);
  EXPECT_TRUE(ok['[']);  // or spelled in pieces
  EXPECT_FALSE(ok[size_t(im_end)]);
  c.accept(marker);
  for (char ch : std::string("[{\"name\":\"f\",\"arguments\":{\"s\":\"")) c.accept(uint8_t(ch));
  ok = c.allowed(bytes.size());
  EXPECT_FALSE(ok[size_t(marker)]) << "a special token inside a JSON string";
  EXPECT_FALSE(ok[size_t(im_end)]);
  EXPECT_TRUE(ok['x']);
  for (char ch : std::string("x\"}}]")) c.accept(uint8_t(ch));
  EXPECT_TRUE(c.complete());
  ok = c.allowed(bytes.size());
  EXPECT_EQ(std::count(ok.begin(), ok.end(), 1), 1);
  EXPECT_TRUE(ok[0]);
}
