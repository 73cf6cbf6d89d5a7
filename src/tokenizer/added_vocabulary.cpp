// Added-token matching, following AddedVocabulary::find_matches of Hugging Face tokenizers.
#include "tokenizer/added_vocabulary.h"

#include <algorithm>

#include "core/error.h"
#include "tokenizer/model.h"
#include "tokenizer/unicode.h"

namespace lmtune::tok {

void AddedVocabulary::Trie::insert(std::string_view s, int32_t token) {
  int32_t n = 0;
  for (unsigned char c : s) {
    int32_t k = child(n, c);
    if (k < 0) {
      nodes.push_back(Node{});
      k = static_cast<int32_t>(nodes.size() - 1);
      auto& kids = nodes[n].kids;
      kids.insert(std::lower_bound(kids.begin(), kids.end(), std::make_pair(c, int32_t{-1})), {c, k});
    }
    n = k;
  }
  if (!s.empty()) first_byte[static_cast<unsigned char>(s[0])] = true;
  if (nodes[n].token < 0) nodes[n].token = token;
}

int32_t AddedVocabulary::Trie::child(int32_t n, unsigned char c) const {
  const auto& kids = nodes[n].kids;
  auto it = std::lower_bound(kids.begin(), kids.end(), std::make_pair(c, int32_t{-1}));
  return it != kids.end() && it->first == c ? it->second : -1;
}

void AddedVocabulary::load(const nlohmann::json& added, const Normalizer* normalizer,
                           const std::function<int32_t(const std::string&)>& model_id) {
  if (added.is_null()) return;
  LMT_CHECK(added.is_array(), "[tokenizer] added_tokens must be a list");
  for (const auto& a : added) {
    AddedToken t;
    t.content = a.at("content").get<std::string>();
    const int64_t id = token_id(a.at("id"));
    t.special = a.value("special", false);
    t.lstrip = a.value("lstrip", false);
    t.rstrip = a.value("rstrip", false);
    t.normalized = a.value("normalized", !t.special);
    t.single_word = a.value("single_word", false);
    LMT_CHECK(id >= 0 && id < kMaxTokenId, "[tokenizer] added token ", t.content, " has id ", id,
              ", out of range (0 to ", kMaxTokenId - 1, ")");
    t.id = int32_t(id);
    if (t.content.empty() || by_content_.count(t.content)) continue;
    if (int32_t mid = model_id(t.content); mid >= 0) t.id = mid;
    int32_t index = static_cast<int32_t>(tokens_.size());
    if (static_cast<size_t>(t.id) >= by_id_.size()) by_id_.resize(t.id + 1, -1);
    by_id_[t.id] = index;
    if (t.normalized && normalizer)
      normalized_.insert(normalizer->normalize(t.content), index);
    else if (t.normalized)
      normalized_.insert(t.content, index);
    else
      plain_.insert(t.content, index);
    by_content_.emplace(t.content, t.id);
    tokens_.push_back(std::move(t));
  }
}

int32_t AddedVocabulary::token_to_id(std::string_view content) const {
  auto it = by_content_.find(std::string(content));
  return it == by_content_.end() ? -1 : it->second;
}

const AddedToken* AddedVocabulary::by_id(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= by_id_.size() || by_id_[id] < 0) return nullptr;
  return &tokens_[by_id_[id]];
}

namespace {

uint32_t last_code_point(std::string_view s) {
  size_t k = s.size() - 1;
  while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
  return next_code_point(s, k);
}

}  // namespace

std::vector<Segment> AddedVocabulary::split(std::string_view s, bool normalized_tokens) const {
  const Trie& trie = normalized_tokens ? normalized_ : plain_;
  std::vector<Segment> out;
  size_t start_offset = 0;
  size_t i = 0;
  while (i < s.size()) {
    if (!trie.first_byte[static_cast<unsigned char>(s[i])]) {
      ++i;
      continue;
    }
    int32_t n = 0, best = -1;
    size_t best_end = 0;
    for (size_t k = i; k < s.size(); ++k) {
      n = trie.child(n, static_cast<unsigned char>(s[k]));
      if (n < 0) break;
      if (trie.nodes[n].token >= 0) {
        best = trie.nodes[n].token;
        best_end = k + 1;
      }
    }
    if (best < 0) {
      ++i;
      continue;
    }
    const AddedToken& t = tokens_[best];
    size_t start = i, stop = best_end;
    i = best_end;  // matches never overlap, accepted or not
    if (t.single_word) {
      bool start_space = start == 0 || !is_alphanumeric(last_code_point(s.substr(0, start)));
      size_t k = stop;
      bool stop_space = stop == s.size() || !is_alphanumeric(next_code_point(s, k));
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) {
      size_t b = start;
      while (b > 0) {
        size_t k = b - 1;
        while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
        size_t j = k;
        if (!is_whitespace(next_code_point(s, j))) break;
        b = k;
      }
      start = std::max(b, start_offset);
    }
    if (t.rstrip) {
      size_t e = stop;
      while (e < s.size()) {
        size_t j = e;
        if (!is_whitespace(next_code_point(s, j))) break;
        e = j;
      }
      stop = e;
    }
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, t.id});
    start_offset = stop;
    i = std::max(i, stop);
  }
  if (start_offset < s.size()) out.push_back({start_offset, s.size(), -1});
  return out;
}

}  // namespace lmtune::tok
