// Constrained decoding to a JSON grammar: each vocabulary token's bytes decoded once per tokenizer
// (TokenTable), then at every step the tokens whose bytes the automaton accepts from its state.
// Cost per step: one automaton step per vocabulary token whose first byte is allowed, except inside
// a string, where tokens of plain characters are allowed by a length check alone.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/json_schema.h"
#include "runtime/logits_constraint.h"
#include "tokenizer/tokenizer.h"

namespace lmtune {

struct TokenTable {
  std::vector<std::string> bytes;  // per id; "" = never allowed (special tokens, undecodable ids)
  // Ids whose bytes are whole UTF-8 characters other than '"', '\\' and controls, and how many.
  std::vector<int32_t> plain;
  std::vector<int32_t> plain_chars;
  std::array<std::vector<int32_t>, 256> by_first;           // every usable id, by first byte
  std::array<std::vector<int32_t>, 256> nonplain_by_first;  // the usable ids not in `plain`
  // Special tokens and their text: allowed only inside a forced literal (e.g. Mistral's [TOOL_CALLS]
  // control token), never inside a JSON value.
  std::vector<std::pair<int32_t, std::string>> specials;

  static std::shared_ptr<const TokenTable> from_bytes(std::vector<std::string> bytes,
                                                      std::vector<std::pair<int32_t, std::string>> specials = {});
  const std::string& text_of(int32_t id) const;  // bytes, or a special token's text; "" when neither
  // The bytes each id adds to the text in the middle of a stream (decoder prefixes and byte-level
  // or <0xXX> byte tokens included); special tokens get "".
  static std::shared_ptr<const TokenTable> from_tokenizer(const Tokenizer& tok);
};

class JsonConstraint : public LogitsConstraint {
 public:
  JsonConstraint(std::shared_ptr<const JsonGrammar> grammar, std::shared_ptr<const TokenTable> table,
                 std::vector<int32_t> eos_ids);
  void mask(std::vector<float>& logits) override;
  void accept(int32_t token) override;
  bool complete() const override { return machine_.done(); }

  // 1 for each id of n_vocab allowed now (the EOS ids when the text may end).
  std::vector<uint8_t> allowed(size_t n_vocab) const;
  const JsonMachine& machine() const { return machine_; }

 private:
  std::shared_ptr<const JsonGrammar> grammar_;
  std::shared_ptr<const TokenTable> table_;
  std::vector<int32_t> eos_;
  JsonMachine machine_;
};

}  // namespace lmtune
