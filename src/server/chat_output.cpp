// Tools given: the template's format, hermes when the template names none. A constrained answer
// (response_format or a forced call) starts as the grammar says, so it is never read as thinking.
#include "server/chat_output.h"

#include <cctype>
#include <stdexcept>

#include "server/api_error.h"

namespace lmtune::server {

OutputSplit prepare_chat_output(CompletionRequest& r, const std::string& src, const std::string& tail) {
  OutputSplit s;
  if (r.endpoint != Endpoint::chat) return s;
  if (!r.tools.is_null() && r.tool_choice != "none") {
    s.tools = detect_tool_format(src);
    if (s.tools == ToolFormat::none) s.tools = ToolFormat::hermes;
  }
  if (r.tool_choice == "required" || r.tool_choice == "function") {
    try {
      r.grammar = forced_call_grammar(s.tools, r.tools, r.tool_choice == "function" ? r.tool_name : "");
    } catch (const SchemaError& e) {
      throw ApiError(400, e.what(), e.path);
    } catch (const std::invalid_argument& e) {
      throw ApiError(400, std::string("'tool_choice': ") + e.what(), "tool_choice", "unsupported_parameter");
    }
  }
  std::string t = tail;
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
  const bool opened = t.size() >= 7 && t.compare(t.size() - 7, 7, "<think>") == 0;
  s.thinking =
      !r.grammar && (opened || (src.find("<think>") != std::string::npos && src.find("</think>") != std::string::npos));
  s.start_in_reasoning = s.thinking && opened;
  return s;
}

}  // namespace lmtune::server
