// ChatTemplate: Hugging Face's tokenizer.apply_chat_template over a Tokenizer and its
// tokenizer_config.json (template selection, the special tokens HF passes, continue_final_message),
// returning the rendered text or its ids; parsed templates are cached per object.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"

namespace lmtune {

// The arguments of HF's apply_chat_template besides the conversation.
struct ChatTemplateOptions {
  nlohmann::ordered_json tools = nullptr;      // a list of JSON schemas, or null (HF's None)
  nlohmann::ordered_json documents = nullptr;  // a list of objects ({"title", "text"}), or null
  bool add_generation_prompt = false;
  // "" = off; "content" = HF's continue_final_message=True; another name continues that field
  // (e.g. "reasoning_content"). The render is cut right after the final message's text.
  std::string continue_final_message;
  // "" = the tokenizer's template ("tool_use" when tools are given and it exists, else "default");
  // the name of one of the tokenizer's templates; or else a template source.
  std::string chat_template;
  // Extra template variables (enable_thinking, ...); they override the special tokens.
  nlohmann::ordered_json kwargs = nlohmann::ordered_json::object();
};

class ChatTemplate {
 public:
  // Loads dir's tokenizer (Tokenizer::load) and reads its tokenizer_config.json for special tokens.
  static ChatTemplate load(const std::string& dir);
  // config_json: tokenizer_config.json text ("" = none); source names the folder in errors.
  explicit ChatTemplate(Tokenizer tokenizer, const std::string& config_json = "",
                        const std::string& source = "tokenizer");

  // HF apply_chat_template(conversation, ..., tokenize=False). conversation: a non-empty list of
  // message objects; keys whose value is null are dropped, as HF does.
  std::string render(const nlohmann::ordered_json& conversation, const ChatTemplateOptions& options = {}) const;
  // HF apply_chat_template(..., tokenize=True): the rendered text encoded without special tokens.
  std::vector<int32_t> encode(const nlohmann::ordered_json& conversation,
                              const ChatTemplateOptions& options = {}) const;

  const Tokenizer& tokenizer() const { return tokenizer_; }
  // The named special tokens HF passes to the template (bos_token, eos_token, ...), in HF's order.
  const nlohmann::ordered_json& special_tokens() const { return special_tokens_; }
  // The template source apply_chat_template would use for these options (throws like HF when none).
  const std::string& select_template(const ChatTemplateOptions& options) const;

 private:
  struct Cache;
  Tokenizer tokenizer_;
  std::string source_;
  nlohmann::ordered_json special_tokens_ = nlohmann::ordered_json::object();
  std::shared_ptr<Cache> cache_;  // parsed templates by source; shared by copies, guarded by a mutex
};

}  // namespace lmtune
