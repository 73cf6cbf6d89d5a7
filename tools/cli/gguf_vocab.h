// The tokenizer of a Hugging Face folder as llama.cpp's GGUF metadata (tokenizer.ggml.*): model
// gpt2 (byte-level BPE: tokens, types, merges, the pre-tokenizer llama.cpp knows by name) or llama
// (SentencePiece-style BPE with byte fallback: tokens, scores, types), special ids, add_bos/add_eos
// and the chat template. A tokenizer llama.cpp would tokenize differently is refused by name.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/gguf.h"

namespace lmtune::cli::gguf_export {

struct VocabMeta {
  std::string model;  // "gpt2" | "llama"
  std::string pre;    // "gpt-2" | "llama-bpe" | "qwen2" | "default"
  std::vector<std::string> tokens;
  std::vector<int32_t>
      types;  // llama.cpp's token types: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte
  std::vector<float> scores;        // llama model only
  std::vector<std::string> merges;  // gpt2 model only, "left right"
  int32_t bos = -1, eos = -1, unk = -1, pad = -1;
  bool add_bos = false, add_eos = false, add_space_prefix = false;
  std::string chat_template;
};

// Reads dir/tokenizer.json, tokenizer_config.json and config.json; n_vocab is the embedding's row
// count (the token list is padded to it with "[PAD<id>]" tokens of type unused, as llama.cpp's
// converter does). Throws naming the file and the field that cannot be exported.
VocabMeta read_vocab(const std::string& dir, int64_t n_vocab);

void add_vocab(gguf::Writer& w, const VocabMeta& v);

}  // namespace lmtune::cli::gguf_export
