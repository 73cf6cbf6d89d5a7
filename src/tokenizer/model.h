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

// Strings back to back in one buffer: a vocabulary's worth of tokens without an allocation each.
class StringList {
 public:
  void push_back(std::string_view s) {
    chars_.append(s);
    ends_.push_back(chars_.size());
  }
  size_t size() const { return ends_.size(); }
  std::string_view operator[](size_t k) const {
    size_t begin = k ? ends_[k - 1] : 0;
    return {chars_.data() + begin, ends_[k] - begin};
  }

 private:
  std::string chars_;
  std::vector<size_t> ends_;
};

// string -> id with open addressing; keys are owned, back to back in one buffer. A slot holds the
// id and where its key lies, so a lookup touches the slot and the key's bytes only: building a
// 262k-token BPE model makes 1.5M lookups, each mostly waiting on memory.
class StrIdMap {
 public:
  void reserve(size_t n);
  // A key present already gets the new id (the last duplicate wins, as in HF's maps); false then.
  bool insert(std::string_view key, int32_t id);
  int32_t find(std::string_view key) const;  // -1 when absent
  // find() of keys[k] into ids[k] for k < n, the memory reads of many lookups overlapped (two
  // cache misses each, otherwise waited for one after another).
  void find_many(const std::string_view* keys, size_t n, int32_t* ids) const;
  size_t size() const { return size_; }

 private:
  static constexpr uint32_t kEmpty = UINT32_MAX;
  struct Slot {
    uint32_t tag = 0;  // high hash bits, compared before the key
    int32_t id = -1;
    uint32_t begin = kEmpty, size = 0;  // the key in chars_; begin kEmpty: a free slot
  };
  void rehash(size_t cap);
  // The slot holding key, or the free slot where it would go.
  size_t probe(std::string_view key, size_t hash) const;
  std::string_view key(const Slot& s) const { return {chars_.data() + s.begin, s.size}; }
  std::string chars_;
  std::vector<Slot> slots_;
  size_t size_ = 0;
};

// tokenizer.json's model.vocab and model.merges as read straight from the text (tokenizer_json.h),
// in file order, when they have their usual shapes.
struct ModelTables {
  enum Vocab { kNoVocab, kMap, kList } vocab = kNoVocab;  // {"token": id, ...} or [[piece, score], ...]
  StringList tokens;                                      // kMap: the keys; kList: the pieces
  std::vector<int64_t> ids;    // kMap, an unsigned id past INT64_MAX stored as INT64_MAX (as token_id reads it)
  std::vector<double> scores;  // kList
  bool has_merges = false;
  StringList merges;  // two strings a merge, left then right ("a b" strings split at the first space)
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
  // The vocab from ModelTables' kMap: refuses what add_token refuses and, stricter, a repeated token.
  // Its errors only send the loader back to the DOM path (tokenizer.cpp build), whose messages users see.
  void set_vocab(const StringList& tokens, const std::vector<int64_t>& ids);
  StrIdMap vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<char> has_id_;
};

// tables: the vocab and merges read apart from the model's JSON j, or nullptr when j holds them.
std::unique_ptr<Model> make_model(const nlohmann::json& j, const ModelTables* tables);
std::unique_ptr<Model> make_bpe(const nlohmann::json& j, const ModelTables* tables);
std::unique_ptr<Model> make_unigram(const nlohmann::json& j, const ModelTables* tables);

}  // namespace lmtune::tok
