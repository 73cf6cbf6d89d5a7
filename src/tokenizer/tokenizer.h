// Tokenizer: a Hugging Face tokenizer folder (tokenizer.json + tokenizer_config.json
// [+ chat_template.jinja]) loaded once; encode / decode give the ids and text HF's tokenizers give.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lmtune {

namespace tok {
struct TokenizerImpl;
}

class Tokenizer {
 public:
  // Reads dir/tokenizer.json (required), dir/tokenizer_config.json and dir/chat_template.jinja (optional).
  static Tokenizer load(const std::string& dir);
  // From tokenizer.json text and optional tokenizer_config.json text; `source` names them in errors.
  static Tokenizer from_json(const std::string& tokenizer_json, const std::string& config_json = "",
                             const std::string& source = "tokenizer.json");

  // text must be valid UTF-8. add_special_tokens applies the post-processor's template (or the
  // config's add_bos_token / add_eos_token when tokenizer.json has no post-processor).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // Ids outside the vocab are skipped, as in HF; invalid UTF-8 becomes U+FFFD.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;
  std::string decode(const int32_t* ids, size_t n, bool skip_special_tokens = false) const;

  int32_t token_to_id(std::string_view token) const;         // -1 when absent
  std::optional<std::string> id_to_token(int32_t id) const;  // nullopt when absent
  bool is_special(int32_t id) const;                         // an added token flagged special
  int32_t vocab_size() const;                                // highest id + 1, added tokens included

  // Special tokens named by tokenizer_config.json; "" / -1 when unset.
  const std::string& bos_token() const;
  const std::string& eos_token() const;
  const std::string& pad_token() const;
  const std::string& unk_token() const;
  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t pad_id() const;
  int32_t unk_id() const;
  bool add_bos_token() const;
  bool add_eos_token() const;

  // The "default" chat template (chat_template.jinja beside the config wins), "" when none.
  const std::string& chat_template() const;
  // All named templates; a plain string template is named "default".
  const std::map<std::string, std::string>& chat_templates() const;

  // For streaming: whether the decoder merges <0xXX> byte tokens, and whether id is such a token.
  bool decoder_uses_byte_fallback() const;
  bool is_byte_token(int32_t id) const;

 private:
  std::shared_ptr<const tok::TokenizerImpl> impl_;
};

}  // namespace lmtune
