// Token bytes come from decoding [ref, id] minus decoding [ref] (so decoder prefixes such as a
// metaspace's leading space count), falling back to the byte-level alphabet or <0xXX> tokens for
// ids that are parts of a UTF-8 character (they decode to U+FFFD alone).
#include "runtime/json_constraint.h"

#include <algorithm>
#include <limits>
#include <map>

#include "core/error.h"

namespace lmtune {

namespace {

// GPT-2's byte-level alphabet, inverted: code point -> byte.
const std::map<uint32_t, uint8_t>& byte_level_inverse() {
  static const std::map<uint32_t, uint8_t> inv = [] {
    std::map<uint32_t, uint8_t> m;
    uint32_t extra = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool direct = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      m[direct ? b : 256 + extra++] = uint8_t(b);
    }
    return m;
  }();
  return inv;
}

// The code points of valid UTF-8 text (empty when invalid).
std::vector<uint32_t> code_points(const std::string& s) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < s.size();) {
    const uint8_t c = uint8_t(s[i]);
    const int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + size_t(n) > s.size()) return {};
    uint32_t cp = n == 1 ? c : c & (0x7F >> n);
    for (int k = 1; k < n; ++k) cp = cp << 6 | (uint8_t(s[i + size_t(k)]) & 0x3F);
    out.push_back(cp);
    i += size_t(n);
  }
  return out;
}

// Whole characters that may stand unescaped in a JSON string: their count, or -1.
int plain_char_count(const std::string& b) {
  if (b.empty()) return -1;
  int chars = 0;
  for (size_t i = 0; i < b.size();) {
    const uint8_t c = uint8_t(b[i]);
    if (c == '"' || c == '\\' || c < 0x20) return -1;
    size_t n = c < 0x80                   ? 1
               : (c >= 0xC2 && c <= 0xDF) ? 2
               : (c >= 0xE0 && c <= 0xEF) ? 3
               : (c >= 0xF0 && c <= 0xF4) ? 4
                                          : 0;
    if (n == 0 || i + n > b.size()) return -1;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
    for (size_t k = 1; k < n; ++k) {
      const uint8_t d = uint8_t(b[i + k]);
      if (d < lo || d > hi) return -1;
      lo = 0x80, hi = 0xBF;
    }
    i += n;
    ++chars;
  }
  return chars;
}

}  // namespace

std::shared_ptr<const TokenTable> TokenTable::from_bytes(std::vector<std::string> bytes,
                                                         std::vector<std::pair<int32_t, std::string>> specials) {
  auto t = std::make_shared<TokenTable>();
  t->bytes = std::move(bytes);
  t->specials = std::move(specials);
  for (size_t id = 0; id < t->bytes.size(); ++id) {
    const std::string& b = t->bytes[id];
    if (b.empty()) continue;
    t->by_first[uint8_t(b[0])].push_back(int32_t(id));
    const int chars = plain_char_count(b);
    if (chars > 0) {
      t->plain.push_back(int32_t(id));
      t->plain_chars.push_back(chars);
    } else {
      t->nonplain_by_first[uint8_t(b[0])].push_back(int32_t(id));
    }
  }
  return t;
}

std::shared_ptr<const TokenTable> TokenTable::from_tokenizer(const Tokenizer& tok) {
  const int32_t V = tok.vocab_size();
  std::vector<int32_t> ref_ids = tok.encode("a", false);
  const int32_t ref = ref_ids.empty() ? -1 : ref_ids.back();
  const std::string ref_text = ref >= 0 ? tok.decode(&ref, 1) : "";
  const std::string replacement = "\xEF\xBF\xBD";
  std::vector<std::string> bytes(size_t(std::max(V, 0)));
  std::vector<std::pair<int32_t, std::string>> specials;
  for (int32_t id = 0; id < V; ++id) {
    if (!tok.id_to_token(id)) continue;
    if (tok.is_special(id)) {
      if (!tok.id_to_token(id)->empty()) specials.push_back({id, *tok.id_to_token(id)});
      continue;
    }
    std::string s;
    if (ref >= 0) {
      const int32_t pair[2] = {ref, id};
      s = tok.decode(pair, 2);
      s = s.compare(0, ref_text.size(), ref_text) == 0 ? s.substr(ref_text.size()) : tok.decode(&id, 1);
    } else {
      s = tok.decode(&id, 1);
    }
    if (s.find(replacement) != std::string::npos) {
      const std::string piece = *tok.id_to_token(id);
      s.clear();
      if (tok.is_byte_token(id) && piece.size() == 6) {
        s = std::string(1, char(std::stoi(piece.substr(3, 2), nullptr, 16)));
      } else {
        const auto& inv = byte_level_inverse();
        for (uint32_t cp : code_points(piece)) {
          auto it = inv.find(cp);
          if (it == inv.end()) {
            s.clear();  // neither: this id is never produced under a constraint
            break;
          }
          s += char(it->second);
        }
      }
    }
    bytes[size_t(id)] = std::move(s);
  }
  return from_bytes(std::move(bytes), std::move(specials));
}

const std::string& TokenTable::text_of(int32_t id) const {
  static const std::string none;
  if (id >= 0 && size_t(id) < bytes.size() && !bytes[size_t(id)].empty()) return bytes[size_t(id)];
  for (const auto& [sid, text] : specials)
    if (sid == id) return text;
  return none;
}

JsonConstraint::JsonConstraint(std::shared_ptr<const JsonGrammar> grammar, std::shared_ptr<const TokenTable> table,
                               std::vector<int32_t> eos_ids)
    : grammar_(std::move(grammar)), table_(std::move(table)), eos_(std::move(eos_ids)), machine_(*grammar_) {}

std::vector<uint8_t> JsonConstraint::allowed(size_t n_vocab) const {
  std::vector<uint8_t> ok(n_vocab, 0);
  const TokenTable& t = *table_;
  if (!machine_.done()) {
    int64_t room = -1;
    const bool plain = machine_.in_plain_string(&room);
    if (plain)
      for (size_t k = 0; k < t.plain.size(); ++k)
        if ((room < 0 || t.plain_chars[k] <= room) && size_t(t.plain[k]) < n_vocab) ok[size_t(t.plain[k])] = 1;
    for (int b = 0; b < 256; ++b) {
      const std::vector<int32_t>& bucket = plain ? t.nonplain_by_first[size_t(b)] : t.by_first[size_t(b)];
      if (bucket.empty()) continue;
      JsonMachine after_first(machine_);
      if (!after_first.feed(uint8_t(b))) continue;
      for (int32_t id : bucket) {
        if (size_t(id) >= n_vocab) continue;
        const std::string& bytes = t.bytes[size_t(id)];
        if (bytes.size() == 1) {
          ok[size_t(id)] = 1;
          continue;
        }
        JsonMachine m(after_first);
        size_t i = 1;
        while (i < bytes.size() && m.feed(uint8_t(bytes[i]))) ++i;
        ok[size_t(id)] = i == bytes.size();
      }
    }
  }
  if (machine_.in_forced_literal())
    for (const auto& [id, text] : t.specials) {
      if (size_t(id) >= n_vocab || std::find(eos_.begin(), eos_.end(), id) != eos_.end()) continue;
      JsonMachine m(machine_);
      ok[size_t(id)] = m.feed(text);
    }
  if (machine_.can_end())
    for (int32_t e : eos_)
      if (e >= 0 && size_t(e) < n_vocab) ok[size_t(e)] = 1;
  return ok;
}

void JsonConstraint::mask(std::vector<float>& logits) {
  const std::vector<uint8_t> ok = allowed(logits.size());
  bool any = false;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (ok[i]) {
      any = true;
    } else {
      logits[i] = -std::numeric_limits<float>::infinity();
    }
  }
  LMT_CHECK(any, "[json constraint] no token of the vocabulary can continue the constrained output");
}

void JsonConstraint::accept(int32_t token) {
  for (int32_t e : eos_)
    if (e == token) return;
  const std::string& text = table_->text_of(token);
  LMT_CHECK(!text.empty() && machine_.feed(text), "[json constraint] token ", token,
            " was not allowed by the constraint");
}

}  // namespace lmtune
