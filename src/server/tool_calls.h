// Tool calls in generated text: the format a chat template teaches its model (read from the
// template's source), parsers for each format's call text, and the grammar that forces a call.
// A call that does not parse is never an error: the caller keeps it as plain content.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/json_schema.h"

namespace lmtune::server {

enum class ToolFormat {
  none,
  hermes,      // Qwen / Hermes: <tool_call>{"name": ..., "arguments": {...}}</tool_call>
  mistral,     // [TOOL_CALLS][{"name": ..., "arguments": {...}}] or [TOOL_CALLS]name[ARGS]{...}
  pythonic,    // Llama 3.2 / 4: [get_weather(city="Paris"), other(n=1)]
  llama_json,  // Llama 3.1: {"name": ..., "parameters": {...}} as the whole answer
};

const char* tool_format_name(ToolFormat f);
// The format the template's source describes; hermes when it mentions tools but no known format.
ToolFormat detect_tool_format(const std::string& template_source);

struct ToolCall {
  std::string id;  // "call_" and 24 random hex digits
  std::string name;
  std::string arguments;  // a JSON object as compact text
};

// The body between <tool_call> and </tool_call>.
std::optional<ToolCall> parse_hermes_call(const std::string& body);
// The text after the first [TOOL_CALLS] (later [TOOL_CALLS] markers included).
std::optional<std::vector<ToolCall>> parse_mistral_calls(const std::string& text);
// A whole answer "[f(a=1, b='x'), g()]" (Python literals: strings, numbers, True/False/None, lists, dicts).
std::optional<std::vector<ToolCall>> parse_pythonic_calls(const std::string& text);
// A whole answer {"name": ..., "parameters"|"arguments": {...}} (after an optional <|python_tag|>),
// or several separated by ';'.
std::optional<std::vector<ToolCall>> parse_llama_json_calls(const std::string& text);

std::string new_call_id();

// A grammar whose every output is one call, in the format's own text, of one of `tools` (OpenAI's
// [{"type": "function", "function": {"name", "parameters"}}]), or of the one named. Throws
// SchemaError with a path under "tools[i].function.parameters" when a schema is unsupported (or, for
// pythonic calls, not an object of identifier-named properties), and std::invalid_argument when the
// format has no forced form (none).
std::shared_ptr<const JsonGrammar> forced_call_grammar(ToolFormat f, const nlohmann::ordered_json& tools,
                                                       const std::string& only_name);

}  // namespace lmtune::server
