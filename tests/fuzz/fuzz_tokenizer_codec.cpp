// Arbitrary bytes through the repository's default model tokenizer (models/default, byte-level
// BPE): the first byte picks the flags; the rest is encoded as text (with or without special
// tokens) and, read as little-endian int32 ids, decoded (skipping special tokens or not), and fed
// to the streaming detokenizer id by id.
#include <cstring>

#include "core/error.h"
#include "fuzz_target.h"
#include "tokenizer/streaming_detokenizer.h"
#include "tokenizer/tokenizer.h"

LMTUNE_FUZZ_TARGET(tokenizer_codec) {
  static const lmtune::Tokenizer tok = lmtune::Tokenizer::load(lmtune::fuzz::default_model_dir());
  if (size == 0) return 0;
  const uint8_t flags = data[0];
  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    std::vector<int32_t> ids = tok.encode(rest, flags & 1);
    volatile size_t sink = tok.decode(ids).size();
    (void)sink;
  } catch (const lmtune::Error&) {
  }
  std::vector<int32_t> raw(rest.size() / 4);
  if (!raw.empty()) std::memcpy(raw.data(), rest.data(), raw.size() * 4);
  if (flags & 4)  // mostly ids inside the vocabulary, as a model would produce
    for (int32_t& id : raw) id = int32_t(uint32_t(id) % uint32_t(tok.vocab_size() + 2));
  try {
    volatile size_t sink = tok.decode(raw, flags & 2).size();
    (void)sink;
  } catch (const lmtune::Error&) {
  }
  try {
    lmtune::StreamingDetokenizer stream(tok, flags & 2);
    size_t n = 0;
    for (int32_t id : raw) n += stream.push(id).size();
    volatile size_t sink = n + stream.finish().size();
    (void)sink;
  } catch (const lmtune::Error&) {
  }
  return 0;
}
