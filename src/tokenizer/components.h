// The pipeline stages of a tokenizer.json: normalizer, pre-tokenizer, decoder, post-processor.
// Each factory builds the stage from its JSON and refuses an unsupported "type" by name.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lmtune::tok {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual std::string normalize(std::string s) const = 0;
};

// A piece of text between pre-tokenizer steps; at_start marks the piece that begins at offset 0
// of the original input (Metaspace's prepend_scheme "first" looks at it).
struct Piece {
  std::string text;
  bool at_start = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
};

// Decoders work on the token strings, like the Rust decode_chain.
class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
  virtual bool uses_byte_fallback() const { return false; }
};

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Adds the template's special tokens around one sequence's ids when add_special is true.
  virtual void process(std::vector<int32_t>& ids, bool add_special) const = 0;
};

// Null JSON gives nullptr (no such stage).
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j);
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j);
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j);
std::unique_ptr<PostProcessor> make_post_processor(const nlohmann::json& j);

// GPT-2's byte <-> printable-character table used by the ByteLevel stages.
const std::string& byte_to_unicode(unsigned char b);  // UTF-8 of the mapped char
int unicode_to_byte(uint32_t cp);                     // -1 when cp is not in the table

// The "type" field of a component, with a clear error when missing.
std::string component_type(const nlohmann::json& j, const char* kind);

}  // namespace lmtune::tok
