// Added tokens of a tokenizer.json and how they are cut out of the text before the normalizer
// and pre-tokenizer run (leftmost-longest match, with lstrip / rstrip / single_word).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/components.h"

namespace lmtune::tok {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false, lstrip = false, rstrip = false, normalized = false, single_word = false;
};

// One cut of the text: a token id, or (id < 0) the text between tokens.
struct Segment {
  size_t begin, end;
  int32_t id;
};

class AddedVocabulary {
 public:
  // model_id(content) gives the model's id for a content, or -1; as in HF, that id wins over the file's.
  void load(const nlohmann::json& added_tokens, const Normalizer* normalizer,
            const std::function<int32_t(const std::string&)>& model_id);
  // Cuts text by the non-normalized tokens (normalized == false) or by the normalized ones.
  std::vector<Segment> split(std::string_view text, bool normalized_tokens) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }
  int32_t token_to_id(std::string_view content) const;  // -1 when absent
  const AddedToken* by_id(int32_t id) const;

 private:
  // A byte trie over token contents for leftmost-longest matching.
  struct Trie {
    struct Node {
      std::vector<std::pair<unsigned char, int32_t>> kids;  // sorted by byte
      int32_t token = -1;                                   // index into tokens_
    };
    std::vector<Node> nodes{Node{}};
    bool first_byte[256] = {};
    void insert(std::string_view s, int32_t token);
    int32_t child(int32_t n, unsigned char c) const;
  };
  std::vector<AddedToken> tokens_;
  std::unordered_map<std::string, int32_t> by_content_;
  std::vector<int32_t> by_id_;  // id -> index into tokens_, -1 none
  Trie plain_, normalized_;
};

}  // namespace lmtune::tok
