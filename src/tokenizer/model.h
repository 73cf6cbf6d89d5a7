// Tokenizer models (BPE, Unigram, WordLevel): split one pre-tokenized word into ids.
// Built from tokenizer.json's "model"; an unsupported model type is refused by name.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace lmtune::tok {

// Token ids above this are refused: the largest real vocabularies hold about 262k tokens, and an id
// table of 10^9 entries would take tens of GB before anything could check the file.
inline constexpr int64_t kMaxTokenId = int64_t(1) << 24;
// A token id from tokenizer.json as written (no silent narrowing of 10^12 to 32 bits).
int64_t token_id(const nlohmann::json& v);

// string -> id with open addressing; keys are owned.
class StrIdMap {
 public:
  void reserve(size_t n);
  // A key present already gets the new id (the last duplicate wins, as in HF's maps).
  void insert(std::string key, int32_t id);
  int32_t find(std::string_view key) const;  // -1 when absent
  size_t size() const { return keys_.size(); }

 private:
  void rehash(size_t cap);
  std::vector<std::string> keys_;
  std::vector<int32_t> ids_;
  std::vector<int32_t> slots_;  // index into keys_, -1 empty
};

class Model {
 public:
  virtual ~Model() = default;
  virtual void tokenize(std::string_view word, std::vector<int32_t>& out) const = 0;
  int32_t token_to_id(std::string_view token) const { return vocab_.find(token); }
  // nullptr when the id is outside the vocab.
  const std::string* id_to_token(int32_t id) const {
    return id >= 0 && static_cast<size_t>(id) < id_to_token_.size() && has_id_[id] ? &id_to_token_[id] : nullptr;
  }
  int32_t vocab_size() const { return static_cast<int32_t>(id_to_token_.size()); }

 protected:
  // Fails unless 0 <= id < kMaxTokenId (before growing the id table to id + 1 entries).
  void add_token(const std::string& token, int64_t id);
  StrIdMap vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<char> has_id_;
};

std::unique_ptr<Model> make_model(const nlohmann::json& j);
std::unique_ptr<Model> make_bpe(const nlohmann::json& j);
std::unique_ptr<Model> make_unigram(const nlohmann::json& j);

}  // namespace lmtune::tok
