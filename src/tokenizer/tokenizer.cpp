// Loading a tokenizer folder and running the encode / decode pipeline:
// added tokens -> normalizer -> pre-tokenizer -> model -> post-processor, and back through the decoder.
#include "tokenizer/tokenizer.h"

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/added_vocabulary.h"
#include "tokenizer/components.h"
#include "tokenizer/model.h"
#include "tokenizer/tokenizer_json.h"
#include "tokenizer/unicode.h"

namespace lmtune {
namespace tok {

struct SpecialToken {
  std::string text;
  int32_t id = -1;
};

struct TokenizerImpl {
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<Model> model;
  std::unique_ptr<PostProcessor> post_processor;
  std::unique_ptr<Decoder> decoder;
  AddedVocabulary added;
  SpecialToken bos, eos, pad, unk;
  bool add_bos = false, add_eos = false;
  std::map<std::string, std::string> templates;
  std::vector<char> byte_token;  // id -> is <0xXX>

  int32_t token_to_id(std::string_view t) const {
    int32_t id = added.token_to_id(t);
    return id >= 0 ? id : model->token_to_id(t);
  }
  const std::string* id_to_token(int32_t id) const {
    if (const AddedToken* a = added.by_id(id)) return &a->content;
    return model->id_to_token(id);
  }
};

namespace {

std::string read_file(const std::string& path, bool required, bool* found) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    LMT_CHECK(!required, "[tokenizer] cannot open ", path);
    *found = false;
    return "";
  }
  *found = true;
  // Reserved, then read in blocks: ~7 ms for 33 MB, where a stringstream's growth and copy took ~40 ms.
  std::string text;
  std::error_code ec;
  uintmax_t size = std::filesystem::file_size(path, ec);
  if (!ec) text.reserve(size);
  std::vector<char> block(1 << 16);
  while (f.read(block.data(), block.size()) || f.gcount() > 0) text.append(block.data(), f.gcount());
  return text;
}

nlohmann::json parse_json(const std::string& text, const std::string& source) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("[tokenizer] cannot parse ", source, ": ", e.what());
  }
}

// A config token is a string, null, or an AddedToken object {"content": ...}.
std::string config_token(const nlohmann::json& cfg, const char* key) {
  if (!cfg.contains(key)) return "";
  const auto& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

void apply_config(TokenizerImpl& t, const nlohmann::json& cfg, const std::string& source) {
  LMT_CHECK(cfg.is_object(), "[tokenizer] ", source, " is not a JSON object");
  auto special = [&](const char* key, SpecialToken& out) {
    out.text = config_token(cfg, key);
    out.id = out.text.empty() ? -1 : t.token_to_id(out.text);
  };
  special("bos_token", t.bos);
  special("eos_token", t.eos);
  special("pad_token", t.pad);
  special("unk_token", t.unk);
  auto flag = [&](const char* key) { return cfg.contains(key) && cfg[key].is_boolean() && cfg[key].get<bool>(); };
  t.add_bos = flag("add_bos_token");
  t.add_eos = flag("add_eos_token");
  if (cfg.contains("chat_template")) {
    const auto& ct = cfg["chat_template"];
    if (ct.is_string()) {
      t.templates["default"] = ct.get<std::string>();
    } else if (ct.is_array()) {
      for (const auto& e : ct) {
        LMT_CHECK(e.is_object() && e.contains("name") && e.contains("template"), "[tokenizer] ", source,
                  ": chat_template list entries need name and template");
        t.templates[e["name"].get<std::string>()] = e["template"].get<std::string>();
      }
    } else if (!ct.is_null()) {
      fail("[tokenizer] ", source, ": chat_template must be a string or a list, got ", ct.type_name());
    }
  }
}

// tables: the model's vocab and merges when read apart from j (tokenizer_json.h), else nullptr.
std::shared_ptr<TokenizerImpl> build_from(const nlohmann::json& j, const ModelTables* tables,
                                          const std::string& source) {
  LMT_CHECK(j.is_object(), "[tokenizer] ", source, " is not a JSON object");
  auto t = std::make_shared<TokenizerImpl>();
  try {
    // By reference: the model section of a large vocabulary is most of the file, and a copy of it cost ~0.2 s.
    static const nlohmann::json kAbsent;
    auto get = [&](const char* k) -> const nlohmann::json& {
      auto it = j.find(k);
      return it == j.end() ? kAbsent : *it;
    };
    t->normalizer = make_normalizer(get("normalizer"));
    t->pre_tokenizer = make_pre_tokenizer(get("pre_tokenizer"));
    t->model = make_model(get("model"), tables);
    t->post_processor = make_post_processor(get("post_processor"));
    t->decoder = make_decoder(get("decoder"));
    t->added.load(get("added_tokens"), t->normalizer.get(),
                  [&](const std::string& c) { return t->model->token_to_id(c); });
  } catch (const nlohmann::json::exception& e) {
    fail("[tokenizer] ", source, ": malformed component: ", e.what());
  } catch (const Error& e) {
    fail(e.what(), " (in ", source, ")");
  }
  int32_t n = std::max(t->model->vocab_size(), 0);
  for (const AddedToken& a : t->added.tokens()) n = std::max(n, a.id + 1);
  t->byte_token.assign(n, 0);
  for (int32_t id = 0; id < n; ++id) {
    const std::string* s = t->id_to_token(id);
    t->byte_token[id] = s && s->size() == 6 && s->compare(0, 3, "<0x") == 0 && (*s)[5] == '>';
  }
  return t;
}

// The fast path reads the vocab and merges into flat tables, which a DOM of a 262k-token vocabulary
// made several times slower (a node and a std::map entry per token, then their destruction).
// Anything it does not expect, an error included, reruns the whole load on nlohmann's DOM: the
// result or the error is then exactly the DOM path's.
std::shared_ptr<TokenizerImpl> build(const std::string& json_text, const std::string& source) {
  try {
    TokenizerJson fast;
    if (read_tokenizer_json(json_text, fast)) return build_from(fast.dom, &fast.tables, source);
  } catch (const std::exception&) {
    // the DOM path below gives the error (or the tokenizer, where the fast path is stricter)
  }
  return build_from(parse_json(json_text, source), nullptr, source);
}

}  // namespace
}  // namespace tok

Tokenizer Tokenizer::from_json(const std::string& tokenizer_json, const std::string& config_json,
                               const std::string& source) {
  auto impl = tok::build(tokenizer_json, source);
  if (!config_json.empty())
    tok::apply_config(*impl, tok::parse_json(config_json, "tokenizer_config.json"), "tokenizer_config.json");
  Tokenizer t;
  t.impl_ = std::move(impl);
  return t;
}

Tokenizer Tokenizer::load(const std::string& dir) {
  bool found = false;
  std::string tj_path = dir + "/tokenizer.json";
  std::string tj = tok::read_file(tj_path, true, &found);
  auto impl = tok::build(tj, tj_path);
  std::string cfg_path = dir + "/tokenizer_config.json";
  std::string cfg = tok::read_file(cfg_path, false, &found);
  if (found) tok::apply_config(*impl, tok::parse_json(cfg, cfg_path), cfg_path);
  std::string jinja = tok::read_file(dir + "/chat_template.jinja", false, &found);
  if (found) impl->templates["default"] = jinja;
  Tokenizer t;
  t.impl_ = std::move(impl);
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const tok::TokenizerImpl& t = *impl_;
  size_t bad = tok::find_invalid_utf8(text);
  LMT_CHECK(bad == std::string_view::npos, "[tokenizer] encode: invalid UTF-8 at byte ", bad);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<tok::Piece> pieces;
  auto run_model = [&](std::vector<tok::Piece>& ps) {
    if (t.pre_tokenizer) t.pre_tokenizer->pre_tokenize(ps);
    for (const tok::Piece& p : ps) t.model->tokenize(p.text, ids);
    ps.clear();
  };
  for (const tok::Segment& seg : t.added.split(text, false)) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
      continue;
    }
    std::string normalized(text.substr(seg.begin, seg.end - seg.begin));
    if (t.normalizer) normalized = t.normalizer->normalize(std::move(normalized));
    for (const tok::Segment& sub : t.added.split(normalized, true)) {
      if (sub.id >= 0) {
        ids.push_back(sub.id);
        continue;
      }
      pieces.push_back({normalized.substr(sub.begin, sub.end - sub.begin), seg.begin == 0 && sub.begin == 0});
      run_model(pieces);
    }
  }
  if (t.post_processor) {
    t.post_processor->process(ids, add_special_tokens);
  } else if (add_special_tokens) {
    if (t.add_bos && t.bos.id >= 0) ids.insert(ids.begin(), t.bos.id);
    if (t.add_eos && t.eos.id >= 0) ids.push_back(t.eos.id);
  }
  return ids;
}

std::string Tokenizer::decode(const int32_t* ids, size_t n, bool skip_special_tokens) const {
  const tok::TokenizerImpl& t = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(n);
  for (size_t k = 0; k < n; ++k) {
    const std::string* s = t.id_to_token(ids[k]);
    if (!s) continue;
    if (skip_special_tokens) {
      const tok::AddedToken* a = t.added.by_id(t.added.token_to_id(*s));
      if (a && a->special) continue;
    }
    tokens.push_back(*s);
  }
  if (!t.decoder) {
    std::string out;
    for (size_t k = 0; k < tokens.size(); ++k) out += (k ? " " : "") + tokens[k];
    return out;
  }
  t.decoder->decode_chain(tokens);
  std::string out;
  for (const auto& s : tokens) out += s;
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  return decode(ids.data(), ids.size(), skip_special_tokens);
}

int32_t Tokenizer::token_to_id(std::string_view token) const { return impl_->token_to_id(token); }

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  const std::string* s = impl_->id_to_token(id);
  return s ? std::optional<std::string>(*s) : std::nullopt;
}

bool Tokenizer::is_special(int32_t id) const {
  const tok::AddedToken* a = impl_->added.by_id(id);
  return a && a->special;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->byte_token.size()); }

const std::string& Tokenizer::bos_token() const { return impl_->bos.text; }
const std::string& Tokenizer::eos_token() const { return impl_->eos.text; }
const std::string& Tokenizer::pad_token() const { return impl_->pad.text; }
const std::string& Tokenizer::unk_token() const { return impl_->unk.text; }
int32_t Tokenizer::bos_id() const { return impl_->bos.id; }
int32_t Tokenizer::eos_id() const { return impl_->eos.id; }
int32_t Tokenizer::pad_id() const { return impl_->pad.id; }
int32_t Tokenizer::unk_id() const { return impl_->unk.id; }
bool Tokenizer::add_bos_token() const { return impl_->add_bos; }
bool Tokenizer::add_eos_token() const { return impl_->add_eos; }

const std::string& Tokenizer::chat_template() const {
  static const std::string kNone;
  auto it = impl_->templates.find("default");
  return it == impl_->templates.end() ? kNone : it->second;
}

const std::map<std::string, std::string>& Tokenizer::chat_templates() const { return impl_->templates; }

bool Tokenizer::decoder_uses_byte_fallback() const { return impl_->decoder && impl_->decoder->uses_byte_fallback(); }

bool Tokenizer::is_byte_token(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->byte_token.size() && impl_->byte_token[id];
}

}  // namespace lmtune
