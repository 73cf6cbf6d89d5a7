// Incremental detokenization by decoding a small window twice and emitting the difference
// (the approach of text-generation-inference), holding back incomplete characters and byte runs.
#include "tokenizer/streaming_detokenizer.h"

namespace lmtune {
namespace {

bool ends_with_replacement(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

}  // namespace

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tok_(&tokenizer), skip_(skip_special_tokens) {}

void StreamingDetokenizer::reset() {
  ids_.clear();
  read_ = 0;
}

std::string StreamingDetokenizer::push(int32_t id) {
  ids_.push_back(id);
  // A byte-fallback run may still turn invalid (then every byte of it becomes U+FFFD): wait for its end.
  if (tok_->decoder_uses_byte_fallback() && tok_->is_byte_token(id)) return "";
  std::string prefix = tok_->decode(ids_.data(), read_, skip_);
  std::string full = tok_->decode(ids_.data(), ids_.size(), skip_);
  if (full.size() <= prefix.size() || ends_with_replacement(full) || full.compare(0, prefix.size(), prefix) != 0)
    return "";
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<long>(read_));
  read_ = ids_.size();
  return full.substr(prefix.size());
}

std::string StreamingDetokenizer::finish() {
  std::string prefix = tok_->decode(ids_.data(), read_, skip_);
  std::string full = tok_->decode(ids_.data(), ids_.size(), skip_);
  reset();
  size_t common = 0;
  while (common < prefix.size() && common < full.size() && prefix[common] == full[common]) ++common;
  return full.substr(common);
}

}  // namespace lmtune
