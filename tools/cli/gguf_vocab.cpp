// tokenizer.json -> tokenizer.ggml.* (see gguf_vocab.h). The pre-tokenizer is matched by its regex
// against the ones llama.cpp implements (llama-vocab.cpp): GPT-2's (ByteLevel with use_regex),
// Llama 3's ("llama-bpe", \p{N}{1,3}) and Qwen2's ("qwen2", single \p{N}); anything else is refused
// rather than written under a name that would tokenize differently.
#include "gguf_vocab.h"

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace lmtune::cli::gguf_export {

namespace {

using nlohmann::json;

const char* kLlama3Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";
const char* kQwen2Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";

json read_json(const std::string& path, bool required) {
  std::ifstream in(path);
  if (!in) {
    LMT_CHECK(!required, "[gguf] cannot read ", path);
    return json::object();
  }
  try {
    return json::parse(in);
  } catch (const std::exception& e) {
    fail("[gguf] ", path, ": ", e.what());
  }
}

// The byte-level pre-tokenizer's name in llama.cpp, or "" when it is none of those it knows.
std::string byte_level_pre(const json& pre) {
  if (!pre.is_object()) return "";
  const std::string type = pre.value("type", "");
  if (type == "ByteLevel") return pre.value("use_regex", true) && !pre.value("add_prefix_space", false) ? "gpt-2" : "";
  if (type != "Sequence" || !pre.contains("pretokenizers") || pre["pretokenizers"].size() != 2) return "";
  const json& split = pre["pretokenizers"][0];
  const json& bl = pre["pretokenizers"][1];
  if (split.value("type", "") != "Split" || bl.value("type", "") != "ByteLevel") return "";
  if (bl.value("use_regex", true) || bl.value("add_prefix_space", false)) return "";
  if (split.value("behavior", "") != "Isolated" || split.value("invert", false)) return "";
  if (!split.contains("pattern") || !split["pattern"].contains("Regex")) return "";
  const std::string re = split["pattern"]["Regex"].get<std::string>();
  if (re == kLlama3Regex) return "llama-bpe";
  if (re == kQwen2Regex) return "qwen2";
  return "";
}

std::string describe(const json& j) {
  std::string s = j.dump();
  return s.size() > 300 ? s.substr(0, 300) + "..." : s;
}

// SentencePiece-style normalization: " " -> "▁", with or without a "▁" prepended.
bool metaspace_normalizer(const json& norm, const json& pre, bool& prepend) {
  const std::string kMeta = "\xe2\x96\x81";
  prepend = false;
  bool replace = false;
  if (norm.is_object()) {
    std::vector<json> items;
    if (norm.value("type", "") == "Sequence")
      for (const json& n : norm["normalizers"]) items.push_back(n);
    else
      items.push_back(norm);
    for (const json& n : items) {
      const std::string t = n.value("type", "");
      if (t == "Prepend" && n.value("prepend", "") == kMeta)
        prepend = true;
      else if (t == "Replace" && n.contains("pattern") && n["pattern"].value("String", "") == " " &&
               n.value("content", "") == kMeta)
        replace = true;
      else
        return false;
    }
  }
  // Gemma's: a split at " " after the normalizer replaced every " ": nothing to split.
  if (replace && !prepend && pre.is_object() && pre.value("type", "") == "Split" && pre.contains("pattern") &&
      pre["pattern"].value("String", "") == " " && pre.value("behavior", "") == "MergedWithPrevious" &&
      !pre.value("invert", false))
    return true;
  if (pre.is_object()) {
    if (pre.value("type", "") != "Metaspace" || replace) return false;
    replace = pre.value("replacement", kMeta) == kMeta;
    const std::string scheme = pre.value("prepend_scheme", pre.value("add_prefix_space", true) ? "always" : "never");
    prepend = scheme != "never";
  }
  return replace;
}

int64_t config_id(const json& cfg, const char* key) {
  if (!cfg.contains(key)) return -1;
  const json& v = cfg[key];
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_array() && !v.empty() && v[0].is_number_integer()) return v[0].get<int64_t>();
  return -1;
}

}  // namespace

VocabMeta read_vocab(const std::string& dir, int64_t n_vocab) {
  const std::string tj_path = dir + "/tokenizer.json";
  const json tj = read_json(tj_path, true);
  const json cfg = read_json(dir + "/config.json", true);
  const json& model = tj.at("model");
  const std::string mtype = model.value("type", "");
  LMT_CHECK(
      mtype == "BPE", "[gguf] ", tj_path, ": model.type ", mtype,
      " cannot be exported (llama.cpp's gpt2 and llama tokenizers are BPE; Unigram and WordLevel are not written)");
  const bool byte_fallback = model.value("byte_fallback", false);
  const json pre = tj.contains("pre_tokenizer") ? tj["pre_tokenizer"] : json();
  const json norm = tj.contains("normalizer") ? tj["normalizer"] : json();

  VocabMeta v;
  if (!byte_fallback) {
    v.model = "gpt2";
    v.pre = byte_level_pre(pre);
    LMT_CHECK(
        !v.pre.empty(), "[gguf] ", tj_path, ": pre_tokenizer ", describe(pre),
        " matches none of llama.cpp's byte-level pre-tokenizers that lmtune exports (gpt-2: ByteLevel with its "
        "regex; llama-bpe and qwen2: their Split regex then ByteLevel); llama.cpp would split the text differently");
    const std::string nt = norm.is_object() ? norm.value("type", "") : "";
    LMT_CHECK(norm.is_null() || nt == "NFC", "[gguf] ", tj_path, ": normalizer ", describe(norm),
              " is not one llama.cpp's ", v.pre, " tokenizer applies");
  } else {
    v.model = "llama";
    v.pre = "default";
    LMT_CHECK(metaspace_normalizer(norm, pre, v.add_space_prefix), "[gguf] ", tj_path, ": normalizer ", describe(norm),
              " / pre_tokenizer ", describe(pre),
              " is not SentencePiece's ' ' -> U+2581 (optionally prepended), which llama.cpp's llama tokenizer does");
  }

  // id -> token, from the model's vocab then the added tokens.
  std::map<int64_t, std::string> by_id;
  for (auto it = model.at("vocab").begin(); it != model.at("vocab").end(); ++it)
    by_id[it.value().get<int64_t>()] = it.key();
  std::map<int64_t, bool> added;  // id -> special
  if (tj.contains("added_tokens"))
    for (const json& a : tj["added_tokens"]) {
      const int64_t id = a.at("id").get<int64_t>();
      by_id[id] = a.at("content").get<std::string>();
      added[id] = a.value("special", false);
    }
  LMT_CHECK(!by_id.empty() && by_id.rbegin()->first < n_vocab, "[gguf] ", tj_path, ": token id ",
            by_id.empty() ? -1 : by_id.rbegin()->first, " does not fit the model's ", n_vocab, " embedding rows");

  Tokenizer tok = Tokenizer::load(dir);
  v.tokens.resize(size_t(n_vocab));
  v.types.assign(size_t(n_vocab), 5);
  for (int64_t id = 0; id < n_vocab; ++id) {
    auto it = by_id.find(id);
    if (it == by_id.end()) {
      v.tokens[size_t(id)] = "[PAD" + std::to_string(id) + "]";
      continue;
    }
    v.tokens[size_t(id)] = it->second;
    auto ad = added.find(id);
    int32_t type = 1;
    if (ad != added.end())
      type = ad->second ? 3 : 4;
    else if (byte_fallback && tok.is_byte_token(int32_t(id)))
      type = 6;
    if (id == tok.unk_id() && byte_fallback) type = 2;
    v.types[size_t(id)] = type;
  }

  // merges: "a b" strings or [a, b] pairs (tokenizers >= 0.20).
  std::vector<std::string> merges;
  if (model.contains("merges"))
    for (const json& m : model["merges"]) {
      if (m.is_string())
        merges.push_back(m.get<std::string>());
      else
        merges.push_back(m.at(0).get<std::string>() + " " + m.at(1).get<std::string>());
    }
  if (v.model == "gpt2") {
    v.merges = std::move(merges);
  } else {
    // llama.cpp's SentencePiece tokenizer merges the adjacent pair whose result has the highest
    // score; HF's BPE merges by rank. Scoring each merge's result -rank makes the two agree;
    // tokens no merge makes score below every merge.
    const float low = -float(merges.size()) - 1.f;
    v.scores.assign(size_t(n_vocab), low);
    for (size_t r = 0; r < merges.size(); ++r) {
      const std::string& m = merges[r];
      const size_t sp = m.find(' ', 1);
      LMT_CHECK(sp != std::string::npos, "[gguf] ", tj_path, ": merge '", m, "' has no space");
      const int32_t id = tok.token_to_id(m.substr(0, sp) + m.substr(sp + 1));
      if (id >= 0 && id < n_vocab && v.scores[size_t(id)] == low) v.scores[size_t(id)] = -float(r);
    }
    for (int64_t id = 0; id < n_vocab; ++id)
      if (v.types[size_t(id)] != 1) v.scores[size_t(id)] = 0.f;
  }

  // add_bos / add_eos as transformers applies them: what encode(add_special_tokens) adds.
  const std::vector<int32_t> plain = tok.encode("a", false), special = tok.encode("a", true);
  if (special.size() > plain.size() && special.back() == plain.back()) {
    v.add_bos = true;
    v.bos = special.front();
  }
  if (special.size() > plain.size() && special.front() == plain.front()) {
    v.add_eos = true;
    v.eos = special.back();
  }
  if (v.bos < 0) v.bos = tok.bos_id() >= 0 ? tok.bos_id() : int32_t(config_id(cfg, "bos_token_id"));
  if (v.eos < 0) v.eos = tok.eos_id() >= 0 ? tok.eos_id() : int32_t(config_id(cfg, "eos_token_id"));
  v.unk = tok.unk_id();
  v.pad = tok.pad_id() >= 0 ? tok.pad_id() : int32_t(config_id(cfg, "pad_token_id"));
  for (int32_t* id : {&v.bos, &v.eos, &v.unk, &v.pad})
    if (*id >= n_vocab) *id = -1;
  v.chat_template = tok.chat_template();
  return v;
}

void add_vocab(gguf::Writer& w, const VocabMeta& v) {
  w.set("tokenizer.ggml.model", gguf::Value::str(v.model));
  w.set("tokenizer.ggml.pre", gguf::Value::str(v.pre));
  w.set("tokenizer.ggml.tokens", gguf::Value::strings(v.tokens));
  if (!v.scores.empty()) w.set("tokenizer.ggml.scores", gguf::Value::f32s(v.scores));
  w.set("tokenizer.ggml.token_type", gguf::Value::i32s(v.types));
  if (v.model == "gpt2") w.set("tokenizer.ggml.merges", gguf::Value::strings(v.merges));
  if (v.bos >= 0) w.set("tokenizer.ggml.bos_token_id", gguf::Value::u32(uint32_t(v.bos)));
  if (v.eos >= 0) w.set("tokenizer.ggml.eos_token_id", gguf::Value::u32(uint32_t(v.eos)));
  if (v.unk >= 0) w.set("tokenizer.ggml.unknown_token_id", gguf::Value::u32(uint32_t(v.unk)));
  if (v.pad >= 0) w.set("tokenizer.ggml.padding_token_id", gguf::Value::u32(uint32_t(v.pad)));
  w.set("tokenizer.ggml.add_bos_token", gguf::Value::boolean(v.add_bos));
  w.set("tokenizer.ggml.add_eos_token", gguf::Value::boolean(v.add_eos));
  if (v.model == "llama") w.set("tokenizer.ggml.add_space_prefix", gguf::Value::boolean(v.add_space_prefix));
  if (!v.chat_template.empty()) w.set("tokenizer.chat_template", gguf::Value::str(v.chat_template));
}

}  // namespace lmtune::cli::gguf_export
