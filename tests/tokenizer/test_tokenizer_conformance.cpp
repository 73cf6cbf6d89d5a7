// Conformance against Hugging Face tokenizers: ids (with and without special tokens) and decodes
// on the hard-case corpus, the ~1 MB document and invalid-UTF-8 / random id lists, plus streaming.
// References come from tests/ref/tokenizer_ref.py (CTest fixture); LMTUNE_TOKENIZER_CASE picks one.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "tokenizer/streaming_detokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace {

using lmtune::StreamingDetokenizer;
using lmtune::Tokenizer;
using Ids = std::vector<int32_t>;

std::string env(const char* k) {
  const char* v = std::getenv(k);
  return v ? v : "";
}

std::string read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << "cannot open " << path;
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct Fixture {
  nlohmann::json ref;
  std::string doc;
  Tokenizer tok;
};

const Fixture& fixture() {
  static const Fixture* f = [] {
    auto* x = new Fixture;
    std::string dir = env("LMTUNE_TOKENIZER_REF_DIR"), name = env("LMTUNE_TOKENIZER_CASE");
    x->ref = nlohmann::json::parse(read(dir + "/" + name + ".ref.json"));
    x->doc = read(dir + "/doc.txt");
    auto t0 = std::chrono::steady_clock::now();
    x->tok = Tokenizer::load(x->ref["dir"].get<std::string>());
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("loaded %s in %.2f s\n", name.c_str(), s);
    return x;
  }();
  return *f;
}

// Index of the first difference, for readable failures.
::testing::AssertionResult same_ids(const Ids& got, const Ids& want) {
  if (got == want) return ::testing::AssertionSuccess();
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  auto show = [&](const Ids& v) {
    std::string s;
    for (size_t k = i; k < v.size() && k < i + 8; ++k) s += std::to_string(v[k]) + " ";
    return s;
  };
  return ::testing::AssertionFailure() << "first difference at " << i << " (sizes " << got.size() << " vs "
                                       << want.size() << "): got [" << show(got) << "] want [" << show(want) << "]";
}

TEST(TokenizerConformance, CorpusEncode) {
  const Fixture& f = fixture();
  for (const auto& c : f.ref["cases"]) {
    std::string text = c["text"].get<std::string>();
    EXPECT_TRUE(same_ids(f.tok.encode(text, true), c["ids"].get<Ids>())) << "case " << c["name"];
    EXPECT_TRUE(same_ids(f.tok.encode(text, false), c["ids_plain"].get<Ids>())) << "case " << c["name"];
  }
}

TEST(TokenizerConformance, CorpusDecode) {
  const Fixture& f = fixture();
  for (const auto& c : f.ref["cases"]) {
    Ids ids = c["ids"].get<Ids>();
    EXPECT_EQ(f.tok.decode(ids, false), c["decoded"].get<std::string>()) << "case " << c["name"];
    EXPECT_EQ(f.tok.decode(ids, true), c["decoded_skip"].get<std::string>()) << "case " << c["name"];
  }
}

TEST(TokenizerConformance, DocumentOneMegabyte) {
  const Fixture& f = fixture();
  auto t0 = std::chrono::steady_clock::now();
  Ids got = f.tok.encode(f.doc, true);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("encoded %.2f MB in %.3f s (%.1f MB/s, cold cache)\n", f.doc.size() / 1e6, s, f.doc.size() / 1e6 / s);
  EXPECT_TRUE(same_ids(got, f.ref["doc"]["ids"].get<Ids>()));
  EXPECT_TRUE(same_ids(f.tok.encode(f.doc, false), f.ref["doc"]["ids_plain"].get<Ids>()));
  EXPECT_EQ(f.tok.decode(f.ref["doc"]["ids"].get<Ids>(), false), f.ref["doc"]["decoded"].get<std::string>());
}

TEST(TokenizerConformance, DecodeInvalidUtf8AndRandomIds) {
  const Fixture& f = fixture();
  for (const auto& c : f.ref["decode_cases"]) {
    Ids ids = c["ids"].get<Ids>();
    EXPECT_EQ(f.tok.decode(ids, false), c["text"].get<std::string>()) << "ids " << c["ids"].dump();
    EXPECT_EQ(f.tok.decode(ids, true), c["text_skip"].get<std::string>()) << "ids " << c["ids"].dump();
  }
}

// Streams ids one by one: no chunk splits a character and the chunks add up to decode(ids).
void check_stream(const Tokenizer& tok, const Ids& ids, bool skip, const std::string& what) {
  StreamingDetokenizer s(tok, skip);
  std::string all;
  for (int32_t id : ids) {
    std::string chunk = s.push(id);
    ASSERT_EQ(lmtune::tok::find_invalid_utf8(chunk), std::string::npos) << what << ": chunk splits a character";
    all += chunk;
  }
  all += s.finish();
  ASSERT_EQ(all, tok.decode(ids, skip)) << what;
}

TEST(TokenizerConformance, StreamingMatchesDecode) {
  const Fixture& f = fixture();
  for (const auto& c : f.ref["cases"]) {
    check_stream(f.tok, c["ids"].get<Ids>(), false, c["name"].get<std::string>());
    check_stream(f.tok, c["ids"].get<Ids>(), true, c["name"].get<std::string>() + " (skip special)");
  }
  for (const auto& c : f.ref["decode_cases"]) check_stream(f.tok, c["ids"].get<Ids>(), false, c["ids"].dump());
  Ids doc = f.ref["doc"]["ids"].get<Ids>();
  doc.resize(std::min<size_t>(doc.size(), 100000));
  check_stream(f.tok, doc, false, "document");
}

}  // namespace
