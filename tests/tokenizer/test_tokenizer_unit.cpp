// Tokenizer unit tests on small synthetic files: refused inputs (unknown component, malformed
// JSON naming the file, missing file, invalid UTF-8), vocab and merges as the DOM has them,
// tokenizer_config.json, and streaming.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/components.h"
#include "tokenizer/streaming_detokenizer.h"
#include "tokenizer/tokenizer.h"

namespace {

using lmtune::StreamingDetokenizer;
using lmtune::Tokenizer;
using nlohmann::json;
namespace fs = std::filesystem;

// Byte-level BPE over the 256 byte characters plus "ab" and one special token.
json byte_level_json() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[lmtune::tok::byte_to_unicode(static_cast<unsigned char>(b))] = b;
  vocab["ab"] = 256;
  return {{"version", "1.0"},
          {"added_tokens", json::array({{{"id", 257},
                                         {"content", "<|end|>"},
                                         {"special", true},
                                         {"lstrip", false},
                                         {"rstrip", false},
                                         {"normalized", false},
                                         {"single_word", false}}})},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
          {"post_processor", nullptr},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({"a b"})}}}};
}

// SentencePiece-style BPE with byte fallback, Llama 2's normalizer and decoder.
json byte_fallback_json() {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  vocab["\xE2\x96\x81"] = 259;
  vocab["h"] = 260;
  vocab["i"] = 261;
  vocab["hi"] = 262;
  vocab["\xE2\x96\x81hi"] = 263;
  json special = json::array();
  for (auto [id, s] : {std::pair{0, "<unk>"}, {1, "<s>"}, {2, "</s>"}})
    special.push_back({{"id", id},
                       {"content", s},
                       {"special", true},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", false},
                       {"single_word", false}});
  return {
      {"added_tokens", special},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         json::array({{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
                      {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}})}}},
      {"pre_tokenizer", nullptr},
      {"post_processor", nullptr},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders", json::array({{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
                                  {{"type", "ByteFallback"}},
                                  {{"type", "Fuse"}},
                                  {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
      {"model",
       {{"type", "BPE"},
        {"vocab", vocab},
        {"merges", json::array({json::array({"h", "i"}), json::array({"\xE2\x96\x81", "hi"})})},
        {"unk_token", "<unk>"},
        {"fuse_unk", true},
        {"byte_fallback", true}}}};
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const lmtune::Error& e) {
    return e.what();
  }
  return "(no error)";
}

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("lmtune_tok_" + std::to_string(::getpid()) + "_" + std::to_string(reinterpret_cast<uintptr_t>(this)));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  void write(const std::string& name, const std::string& text) const { std::ofstream(path / name) << text; }
};

TEST(TokenizerRefuses, UnsupportedComponentsByName) {
  const std::pair<const char*, json> cases[] = {
      {"normalizer", {{"type", "Precompiled"}, {"precompiled_charsmap", "AAAA"}}},
      {"pre_tokenizer", {{"type", "UnicodeScripts"}}},
      {"decoder", {{"type", "CTC"}}},
      {"post_processor", {{"type", "FancyProcessing"}}},
  };
  for (const auto& [key, value] : cases) {
    json j = byte_level_json();
    j[key] = value;
    std::string msg = error_of([&] { Tokenizer::from_json(j.dump()); });
    EXPECT_NE(msg.find(std::string("unsupported ") + key + " type " + value["type"].get<std::string>()),
              std::string::npos)
        << msg;
  }
  json j = byte_level_json();
  j["model"]["type"] = "WordPiece";
  EXPECT_NE(error_of([&] { Tokenizer::from_json(j.dump()); }).find("unsupported model type WordPiece"),
            std::string::npos);
  j = byte_level_json();
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", json::array({{{"type", "Nope"}}})}};
  EXPECT_NE(error_of([&] { Tokenizer::from_json(j.dump()); }).find("unsupported pre_tokenizer type Nope"),
            std::string::npos);
}

TEST(TokenizerRefuses, BadRegexMergeAndUtf8) {
  json j = byte_level_json();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  EXPECT_NE(error_of([&] { Tokenizer::from_json(j.dump()); }).find("cannot compile regex (unclosed"),
            std::string::npos);
  j = byte_level_json();
  j["model"]["merges"] = json::array({"a zz"});
  EXPECT_NE(error_of([&] { Tokenizer::from_json(j.dump()); }).find("missing from the vocab"), std::string::npos);
  Tokenizer t = Tokenizer::from_json(byte_level_json().dump());
  EXPECT_NE(error_of([&] { t.encode("ok \xC3("); }).find("invalid UTF-8 at byte 3"), std::string::npos);
}

// tokenizer.json's vocab and merges are read into flat tables (tokenizer_json.h), the whole DOM
// being the fallback for anything unusual: either way the result is what json::parse's DOM gives.
TEST(TokenizerLoad, VocabAndMergesReadAsTheDomHasThem) {
  auto bpe = [](const std::string& vocab, const std::string& merges) {
    return "{\"model\": {\"type\": \"BPE\", \"vocab\": " + vocab + ", \"merges\": " + merges + "}}";
  };
  // A repeated token: the last one wins, and the id it had first is left unused.
  Tokenizer t = Tokenizer::from_json(bpe(R"({"a": 0, "b": 1, "ab": 2, "a": 3})", R"(["a b"])"));
  EXPECT_EQ(t.token_to_id("a"), 3);
  EXPECT_EQ(t.id_to_token(0), std::nullopt);
  EXPECT_EQ(t.vocab_size(), 4);
  EXPECT_EQ(t.encode("ab"), (std::vector<int32_t>{2}));
  EXPECT_EQ(t.encode("ba"), (std::vector<int32_t>{1, 3}));
  // Merges as "a b" strings and [a, b] pairs mixed, before the vocab; a repeated "model": the last.
  std::string second =
      R"({"type": "BPE", "merges": [["x", "y"], "xy z"], "vocab": {"x": 0, "y": 1, "z": 2, "xy": 3, "xyz": 4}})";
  t = Tokenizer::from_json(R"({"model": )" + bpe(R"({"q": 0})", "[]") + R"(, "model": )" + second + "}");
  EXPECT_EQ(t.encode("xyz"), (std::vector<int32_t>{4}));
  EXPECT_EQ(t.token_to_id("q"), -1);
  // Unigram's [piece, score] list, integer scores included.
  t = Tokenizer::from_json(R"({"model": {"type": "Unigram", "vocab": [["a", -1.0], ["b", -2], ["ab", -0.5]]}})");
  EXPECT_EQ(t.encode("ab"), (std::vector<int32_t>{2}));
  // Malformed entries keep their messages.
  const std::pair<std::string, std::string> bad[] = {
      {bpe(R"({"a": 1.5})", "[]"), "token id must be an integer, got 1.5"},
      {bpe(R"({"a": 0, "b": 0})", "[]"), "vocab id 0 is given to two tokens, \"a\" and \"b\""},
      {bpe(R"({"a": 16777216})", "[]"), "vocab id 16777216 of token a is out of range"},
      {bpe(R"({"a": 0})", R"(["ab"])"), "BPE merge \"ab\" is not two tokens"},
      {bpe(R"({"a": 0})", R"([["a"]])"), "BPE merge [\"a\"] is not a pair"},
      {bpe(R"({"a": 0})", R"(["a b"])"), "BPE merge \"a b\" uses a token missing from the vocab"},
      {bpe(R"({"a": 0, "b": 1})", R"(["a b"])"), "BPE merge \"a b\" makes ab, missing from the vocab"},
      {bpe(R"([["a", 0.0]])", "[]"), "BPE vocab must be an object"},
  };
  for (const auto& [text, needle] : bad) {
    const std::string& json = text;  // clang before 16 cannot capture a structured binding
    std::string msg = error_of([&] { Tokenizer::from_json(json); });
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_NE(msg.find("(in tokenizer.json)"), std::string::npos) << msg;
  }
}

TEST(TokenizerRefuses, MissingAndMalformedFilesNamed) {
  TempDir d;
  std::string msg = error_of([&] { Tokenizer::load(d.path.string()); });
  EXPECT_NE(msg.find("cannot open " + (d.path / "tokenizer.json").string()), std::string::npos) << msg;
  d.write("tokenizer.json", "{\"model\": [1, 2,");
  msg = error_of([&] { Tokenizer::load(d.path.string()); });
  EXPECT_NE(msg.find("cannot parse " + (d.path / "tokenizer.json").string()), std::string::npos) << msg;
  d.write("tokenizer.json", byte_level_json().dump());
  d.write("tokenizer_config.json", "{\"bos_token\": ");
  msg = error_of([&] { Tokenizer::load(d.path.string()); });
  EXPECT_NE(msg.find("cannot parse " + (d.path / "tokenizer_config.json").string()), std::string::npos) << msg;
}

TEST(TokenizerConfig, SpecialTokensFlagsAndTemplates) {
  TempDir d;
  d.write("tokenizer.json", byte_fallback_json().dump());
  json cfg = {{"bos_token", {{"__type", "AddedToken"}, {"content", "<s>"}}},
              {"eos_token", "</s>"},
              {"pad_token", nullptr},
              {"add_bos_token", true},
              {"add_eos_token", true},
              {"chat_template", json::array({{{"name", "default"}, {"template", "{{ x }}"}},
                                             {{"name", "tool_use"}, {"template", "{{ y }}"}}})}};
  d.write("tokenizer_config.json", cfg.dump());
  Tokenizer t = Tokenizer::load(d.path.string());
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.pad_id(), -1);
  EXPECT_EQ(t.chat_template(), "{{ x }}");
  EXPECT_EQ(t.chat_templates().at("tool_use"), "{{ y }}");
  // No post-processor in tokenizer.json: the config's add_bos / add_eos apply.
  EXPECT_EQ(t.encode("hi hi", true), (std::vector<int32_t>{1, 263, 263, 2}));
  EXPECT_EQ(t.encode("hi hi", false), (std::vector<int32_t>{263, 263}));
  EXPECT_EQ(t.decode({1, 263, 263, 2}, true), "hi hi");
  EXPECT_EQ(t.vocab_size(), 264);
  EXPECT_EQ(t.id_to_token(263), "\xE2\x96\x81hi");
  EXPECT_EQ(t.token_to_id("<0x41>"), 3 + 0x41);
  d.write("chat_template.jinja", "{{ from_file }}");
  EXPECT_EQ(Tokenizer::load(d.path.string()).chat_template(), "{{ from_file }}");
}

std::vector<std::string> stream(const Tokenizer& t, const std::vector<int32_t>& ids) {
  StreamingDetokenizer s(t);
  std::vector<std::string> out;
  for (int32_t id : ids) out.push_back(s.push(id));
  out.push_back(s.finish());
  return out;
}

TEST(StreamingDetokenizer, ByteLevelHoldsIncompleteCharacters) {
  Tokenizer t = Tokenizer::from_json(byte_level_json().dump());
  // "a€" as single-byte tokens: the euro sign's three bytes come out together.
  std::vector<int32_t> ids = {'a', 0xE2, 0x82, 0xAC, 257};
  EXPECT_EQ(stream(t, ids), (std::vector<std::string>{"a", "", "", "\xE2\x82\xAC", "<|end|>", ""}));
  // A broken sequence followed by text: one U+FFFD, as decode gives.
  ids = {0xE2, 0x82, 'x'};
  auto chunks = stream(t, ids);
  std::string all;
  for (const auto& c : chunks) all += c;
  EXPECT_EQ(all, t.decode(ids));
  EXPECT_EQ(all, "\xEF\xBF\xBDx");
  // A trailing incomplete character is flushed by finish().
  EXPECT_EQ(stream(t, {'a', 0xE2}), (std::vector<std::string>{"a", "", "\xEF\xBF\xBD"}));
}

TEST(StreamingDetokenizer, ByteFallbackRunsAndLeadingSpace) {
  Tokenizer t = Tokenizer::from_json(byte_fallback_json().dump());
  // "▁hi" "▁hi" then a euro sign as byte tokens: the leading space is stripped once, at the start.
  std::vector<int32_t> ids = {263, 263, 3 + 0xE2, 3 + 0x82, 3 + 0xAC, 263};
  EXPECT_EQ(stream(t, ids), (std::vector<std::string>{"hi", " hi", "", "", "", "\xE2\x82\xAC hi", ""}));
  // A run that turns invalid: each of its bytes becomes U+FFFD, the valid 'A' included.
  ids = {3 + 'A', 3 + 0xE2, 260};
  std::string all;
  for (const auto& c : stream(t, ids)) all += c;
  EXPECT_EQ(all, t.decode(ids));
  EXPECT_EQ(all, "\xEF\xBF\xBD\xEF\xBF\xBDh");
  // A lone space token first is stripped; the next one's space is kept.
  ids = {259, 263};
  all.clear();
  for (const auto& c : stream(t, ids)) all += c;
  EXPECT_EQ(all, t.decode(ids));
  EXPECT_EQ(all, " hi");
}

}  // namespace
