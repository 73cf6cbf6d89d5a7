// Chat-template interpreter: parses a Hugging Face chat template (Jinja, with trim_blocks and
// lstrip_blocks on, as apply_chat_template sets them) once and renders it against JSON contexts.
#pragma once
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

namespace lmtune::jinja {

struct Program;

class Template {
 public:
  // Parses the template; a syntax error, unknown filter or unknown test throws lmtune::Error
  // "[jinja] line L, column C: ...".
  static Template parse(const std::string& source);

  // Renders with the context's keys as variables (messages, tools, documents,
  // add_generation_prompt, bos_token, eos_token, enable_thinking, ...), keeping key order.
  // raise_exception(msg) and runtime errors throw lmtune::Error carrying the message.
  std::string render(const nlohmann::ordered_json& context) const;

 private:
  std::shared_ptr<const Program> program_;
};

}  // namespace lmtune::jinja
