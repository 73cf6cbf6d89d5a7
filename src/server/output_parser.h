// The generated text split as it streams: thinking (<think>...</think>) to `reasoning`, tool calls
// parsed into calls, the rest to `content`. Text that may be the start of a marker is held back
// until it is not; a call that does not parse goes out as content, markers included.
#pragma once
#include <string>
#include <vector>

#include "server/tool_calls.h"

namespace lmtune::server {

struct OutputSplit {
  ToolFormat tools = ToolFormat::none;  // none: tool calls stay text
  bool thinking = false;                // the template knows <think> ... </think>
  bool start_in_reasoning = false;      // the prompt ended with an open <think>
  bool active() const { return tools != ToolFormat::none || thinking; }
};

struct OutputPiece {
  enum class Kind { content, reasoning, tool_call };
  Kind kind = Kind::content;
  std::string text;  // content and reasoning
  ToolCall call;     // tool_call
};

class OutputParser {
 public:
  explicit OutputParser(OutputSplit split);
  // Pieces released by this text (adjacent pieces of one kind merged).
  std::vector<OutputPiece> push(const std::string& text);
  // Everything held back, at the end of generation (an unclosed call is parsed as it stands).
  std::vector<OutputPiece> finish();

 private:
  enum class State { content, reasoning, call, rest };
  void emit(OutputPiece::Kind kind, std::string text);
  void run();
  size_t held_suffix(const std::vector<std::string>& markers) const;

  OutputSplit split_;
  State state_;
  std::string buf_;
  bool content_started_ = false;  // pythonic / llama_json calls must open the answer
  bool strip_ws_ = false;         // the whitespace after </think> is dropped
  std::vector<OutputPiece> out_;
};

// The whole answer at once: content and reasoning joined, calls in order.
struct SplitOutput {
  std::string content, reasoning;
  std::vector<ToolCall> calls;
};
SplitOutput split_output(const OutputSplit& split, const std::string& text);

}  // namespace lmtune::server
