// Shared vocab storage of the models, the WordLevel model, and the model factory.
#include "tokenizer/model.h"

#include <algorithm>
#include <functional>

#include "core/error.h"
#include "tokenizer/components.h"

namespace lmtune::tok {

void StrIdMap::reserve(size_t n) {
  keys_.reserve(n);
  ids_.reserve(n);
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;
  if (cap > slots_.size()) rehash(cap);
}

void StrIdMap::rehash(size_t cap) {
  slots_.assign(cap, -1);
  for (size_t k = 0; k < keys_.size(); ++k) {
    size_t h = std::hash<std::string_view>{}(keys_[k]) & (cap - 1);
    while (slots_[h] >= 0) h = (h + 1) & (cap - 1);
    slots_[h] = static_cast<int32_t>(k);
  }
}

void StrIdMap::insert(std::string key, int32_t id) {
  if ((keys_.size() + 1) * 2 > slots_.size()) rehash(std::max<size_t>(16, slots_.size() * 2));
  size_t mask = slots_.size() - 1;
  size_t h = std::hash<std::string_view>{}(key)&mask;
  while (slots_[h] >= 0) {
    if (keys_[slots_[h]] == key) {
      ids_[slots_[h]] = id;
      return;
    }
    h = (h + 1) & mask;
  }
  slots_[h] = static_cast<int32_t>(keys_.size());
  keys_.push_back(std::move(key));
  ids_.push_back(id);
}

int32_t StrIdMap::find(std::string_view key) const {
  if (slots_.empty()) return -1;
  size_t mask = slots_.size() - 1;
  size_t h = std::hash<std::string_view>{}(key)&mask;
  while (slots_[h] >= 0) {
    if (keys_[slots_[h]] == key) return ids_[slots_[h]];
    h = (h + 1) & mask;
  }
  return -1;
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

namespace {

class WordLevel : public Model {
 public:
  explicit WordLevel(const nlohmann::json& j) {
    for (const auto& [tok, id] : j.at("vocab").items()) add_token(tok, token_id(id));
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

std::unique_ptr<Model> make_model(const nlohmann::json& j) {
  LMT_CHECK(j.is_object(), "[tokenizer] tokenizer.json has no \"model\" object");
  std::string type;
  if (j.contains("type")) {
    type = component_type(j, "model");
  } else if (j.contains("merges")) {
    type = "BPE";  // older files omit the model type
  } else if (j.contains("vocab") && j["vocab"].is_array()) {
    type = "Unigram";
  } else {
    type = "WordLevel";
  }
  if (type == "BPE") return make_bpe(j);
  if (type == "Unigram") return make_unigram(j);
  if (type == "WordLevel") return std::make_unique<WordLevel>(j);
  fail("[tokenizer] unsupported model type ", type);
}

}  // namespace lmtune::tok
