// Shared vocab storage of the models, the WordLevel model, and the model factory.
#include "tokenizer/model.h"

#include <algorithm>
#include <functional>

#include "core/error.h"
#include "tokenizer/components.h"

namespace lmtune::tok {

void StrIdMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;
  if (cap > slots_.size()) rehash(cap);
}

void StrIdMap::rehash(size_t cap) {
  std::vector<Slot> old(cap);
  old.swap(slots_);
  for (const Slot& s : old)
    if (s.begin != kEmpty) slots_[probe(key(s), std::hash<std::string_view>{}(key(s)))] = s;
}

size_t StrIdMap::probe(std::string_view k, size_t hash) const {
  size_t mask = slots_.size() - 1;
  uint32_t tag = static_cast<uint32_t>(hash >> 32);
  size_t i = hash & mask;
  while (slots_[i].begin != kEmpty && (slots_[i].tag != tag || key(slots_[i]) != k)) i = (i + 1) & mask;
  return i;
}

bool StrIdMap::insert(std::string_view k, int32_t id) {
  if ((size_ + 1) * 2 > slots_.size()) rehash(std::max<size_t>(16, slots_.size() * 2));
  size_t h = std::hash<std::string_view>{}(k);
  Slot& slot = slots_[probe(k, h)];
  if (slot.begin != kEmpty) {
    slot.id = id;
    return false;
  }
  LMT_CHECK(chars_.size() + k.size() < kEmpty, "[tokenizer] the vocab's tokens pass 4 GB");
  slot = {static_cast<uint32_t>(h >> 32), id, static_cast<uint32_t>(chars_.size()), static_cast<uint32_t>(k.size())};
  chars_.append(k);
  ++size_;
  return true;
}

int32_t StrIdMap::find(std::string_view k) const {
  if (slots_.empty()) return -1;
  const Slot& slot = slots_[probe(k, std::hash<std::string_view>{}(k))];
  return slot.begin != kEmpty ? slot.id : -1;
}

void StrIdMap::find_many(const std::string_view* keys, size_t n, int32_t* ids) const {
  if (slots_.empty()) {
    std::fill(ids, ids + n, -1);
    return;
  }
  constexpr size_t kBatch = 32;
  size_t hashes[kBatch];
  size_t mask = slots_.size() - 1;
  for (size_t b = 0; b < n; b += kBatch) {
    size_t m = std::min(kBatch, n - b);
    for (size_t k = 0; k < m; ++k) {
      hashes[k] = std::hash<std::string_view>{}(keys[b + k]);
      __builtin_prefetch(&slots_[hashes[k] & mask]);
    }
    for (size_t k = 0; k < m; ++k) {
      const Slot& s = slots_[hashes[k] & mask];
      if (s.begin != kEmpty) __builtin_prefetch(chars_.data() + s.begin);
    }
    for (size_t k = 0; k < m; ++k) {
      const Slot& s = slots_[probe(keys[b + k], hashes[k])];
      ids[b + k] = s.begin != kEmpty ? s.id : -1;
    }
  }
}

int64_t token_id(const nlohmann::json& v) {
  LMT_CHECK(v.is_number_integer(), "[tokenizer] token id must be an integer, got ", v.dump());
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)) return INT64_MAX;
  return v.get<int64_t>();
}

namespace {
std::string shown(const std::string& token) {
  return nlohmann::json(token).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}
}  // namespace

void Model::add_token(const std::string& token, int64_t id) {
  LMT_CHECK(id >= 0 && id < kMaxTokenId, "[tokenizer] vocab id ", id, " of token ", token, " is out of range (0 to ",
            kMaxTokenId - 1, ")");
  // Two tokens with one id: decode could give either, and encode would emit an id that does not
  // round-trip (HF keeps whichever its map saw last).
  LMT_CHECK(static_cast<size_t>(id) >= has_id_.size() || !has_id_[size_t(id)] || id_to_token_[size_t(id)] == token,
            "[tokenizer] vocab id ", id, " is given to two tokens, ", shown(id_to_token_[size_t(id)]), " and ",
            shown(token));
  vocab_.insert(token, id);
  if (static_cast<size_t>(id) >= id_to_token_.size()) {
    id_to_token_.resize(id + 1);
    has_id_.resize(id + 1, 0);
  }
  id_to_token_[id] = token;
  has_id_[id] = 1;
}

void Model::set_vocab(const StringList& tokens, const std::vector<int64_t>& ids) {
  int64_t n = 0;
  for (int64_t id : ids) {
    LMT_CHECK(id >= 0 && id < kMaxTokenId, "[tokenizer] vocab id ", id, " is out of range");
    n = std::max(n, id + 1);
  }
  vocab_.reserve(tokens.size());
  id_to_token_.resize(n);
  has_id_.assign(n, 0);
  for (size_t k = 0; k < tokens.size(); ++k) {
    LMT_CHECK(vocab_.insert(tokens[k], static_cast<int32_t>(ids[k])), "[tokenizer] vocab token ",
              shown(std::string(tokens[k])), " is repeated");
    LMT_CHECK(!has_id_[ids[k]], "[tokenizer] vocab id ", ids[k], " is given to two tokens");
    id_to_token_[ids[k]] = tokens[k];
    has_id_[ids[k]] = 1;
  }
}

namespace {

class WordLevel : public Model {
 public:
  WordLevel(const nlohmann::json& j, const ModelTables* t) {
    if (t) {
      LMT_CHECK(t->vocab == ModelTables::kMap, "[tokenizer] WordLevel vocab must be an object");
      set_vocab(t->tokens, t->ids);
    } else {
      for (const auto& [tok, id] : j.at("vocab").items()) add_token(tok, token_id(id));
    }
    unk_ = j.contains("unk_token") && j["unk_token"].is_string() ? j["unk_token"].get<std::string>() : "";
  }
  void tokenize(std::string_view word, std::vector<int32_t>& out) const override {
    int32_t id = vocab_.find(word);
    if (id < 0) {
      id = vocab_.find(unk_);
      LMT_CHECK(id >= 0, "[tokenizer] WordLevel: ", std::string(word),
                " is not in the vocab and there is no unk_token");
    }
    out.push_back(id);
  }

 private:
  std::string unk_;
};

}  // namespace

std::unique_ptr<Model> make_model(const nlohmann::json& j, const ModelTables* t) {
  LMT_CHECK(j.is_object(), "[tokenizer] tokenizer.json has no \"model\" object");
  std::string type;
  if (j.contains("type")) {
    type = component_type(j, "model");
  } else if (j.contains("merges") || (t && t->has_merges)) {
    type = "BPE";  // older files omit the model type
  } else if ((j.contains("vocab") && j["vocab"].is_array()) || (t && t->vocab == ModelTables::kList)) {
    type = "Unigram";
  } else {
    type = "WordLevel";
  }
  if (type == "BPE") return make_bpe(j, t);
  if (type == "Unigram") return make_unigram(j, t);
  if (type == "WordLevel") return std::make_unique<WordLevel>(j, t);
  fail("[tokenizer] unsupported model type ", type);
}

}  // namespace lmtune::tok
