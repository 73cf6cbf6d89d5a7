// StreamingDetokenizer: ids in one at a time, text out in chunks that never split a UTF-8
// character and whose concatenation equals Tokenizer::decode of all the ids.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace lmtune {

class StreamingDetokenizer {
 public:
  // The tokenizer must outlive the detokenizer.
  explicit StreamingDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens = false);
  // Text made final by this id (often empty while a character or byte run is incomplete).
  std::string push(int32_t id);
  // The held-back rest; the stream starts afresh afterwards.
  std::string finish();
  void reset();

 private:
  const Tokenizer* tok_;
  bool skip_;
  // ids from the window start; [0, read_) were emitted already, decoded together with what
  // follows so that decoder effects at the window start (strip, metaspace) cancel in the diff.
  std::vector<int32_t> ids_;
  size_t read_ = 0;
};

}  // namespace lmtune
