// A small state machine over decoded text: content <-> reasoning on the think markers; a hermes
// call buffered to its closing tag; Mistral's marker, or a pythonic / Llama JSON call opening the
// answer, buffers the rest of the answer and parses it at the end.
#include "server/output_parser.h"

#include <algorithm>
#include <cctype>

namespace lmtune::server {

namespace {

const std::string kThinkOpen = "<think>", kThinkClose = "</think>";
const std::string kHermesOpen = "<tool_call>", kHermesClose = "</tool_call>";
const std::string kMistral = "[TOOL_CALLS]";
const std::vector<std::string> kCallOpeners = {"<|python_tag|>", "<|tool_call_start|>", "<|python_start|>"};

size_t first_non_space(const std::string& s) {
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return i;
}

}  // namespace

OutputParser::OutputParser(OutputSplit split)
    : split_(split), state_(split.thinking && split.start_in_reasoning ? State::reasoning : State::content) {}

void OutputParser::emit(OutputPiece::Kind kind, std::string text) {
  if (kind == OutputPiece::Kind::content && strip_ws_) {
    text.erase(0, first_non_space(text));
    if (!text.empty()) strip_ws_ = false;
  }
  if (text.empty()) return;
  if (!out_.empty() && out_.back().kind == kind && kind != OutputPiece::Kind::tool_call) {
    out_.back().text += text;
  } else {
    out_.push_back({kind, std::move(text), {}});
  }
}

size_t OutputParser::held_suffix(const std::vector<std::string>& markers) const {
  size_t held = 0;
  for (const std::string& m : markers)
    for (size_t n = std::min(m.size() - 1, buf_.size()); n > held; --n)
      if (buf_.compare(buf_.size() - n, n, m, 0, n) == 0) {
        held = n;
        break;
      }
  return held;
}

void OutputParser::run() {
  for (;;) {
    if (state_ == State::reasoning) {
      const size_t p = buf_.find(kThinkClose);
      if (p == std::string::npos) {
        const size_t keep = held_suffix({kThinkClose});
        emit(OutputPiece::Kind::reasoning, buf_.substr(0, buf_.size() - keep));
        buf_.erase(0, buf_.size() - keep);
        return;
      }
      emit(OutputPiece::Kind::reasoning, buf_.substr(0, p));
      buf_.erase(0, p + kThinkClose.size());
      state_ = State::content;
      strip_ws_ = true;
      continue;
    }
    if (state_ == State::call) {
      const size_t p = buf_.find(kHermesClose);
      if (p == std::string::npos) return;
      const std::string body = buf_.substr(0, p);
      if (auto c = parse_hermes_call(body)) {
        out_.push_back({OutputPiece::Kind::tool_call, "", std::move(*c)});
      } else {
        emit(OutputPiece::Kind::content, kHermesOpen + body + kHermesClose);
      }
      buf_.erase(0, p + kHermesClose.size());
      state_ = State::content;
      continue;
    }
    if (state_ == State::rest) return;

    // content
    const bool whole_answer = split_.tools == ToolFormat::pythonic || split_.tools == ToolFormat::llama_json;
    if (whole_answer && !content_started_) {
      const size_t i = first_non_space(buf_);
      if (i == buf_.size()) return;  // only whitespace so far
      const std::string head = buf_.substr(i);
      const char opener = split_.tools == ToolFormat::pythonic ? '[' : '{';
      bool maybe_marker = false;
      for (const std::string& m : kCallOpeners) {
        if (head.compare(0, m.size(), m) == 0) {
          state_ = State::rest;
          return;
        }
        if (m.compare(0, head.size(), head) == 0) maybe_marker = true;
      }
      if (head[0] == opener) {
        state_ = State::rest;
        return;
      }
      if (maybe_marker) return;
      content_started_ = true;
    }
    std::vector<std::string> markers;
    if (split_.thinking) markers.push_back(kThinkOpen);
    if (split_.tools == ToolFormat::hermes) markers.push_back(kHermesOpen);
    if (split_.tools == ToolFormat::mistral) markers.push_back(kMistral);
    size_t at = std::string::npos;
    const std::string* hit = nullptr;
    for (const std::string& m : markers)
      if (size_t p = buf_.find(m); p < at) at = p, hit = &m;
    if (!hit) {
      const size_t keep = held_suffix(markers);
      emit(OutputPiece::Kind::content, buf_.substr(0, buf_.size() - keep));
      buf_.erase(0, buf_.size() - keep);
      return;
    }
    emit(OutputPiece::Kind::content, buf_.substr(0, at));
    buf_.erase(0, at + hit->size());
    state_ = *hit == kThinkOpen ? State::reasoning : *hit == kHermesOpen ? State::call : State::rest;
    content_started_ = true;
  }
}

std::vector<OutputPiece> OutputParser::push(const std::string& text) {
  buf_ += text;
  run();
  return std::exchange(out_, {});
}

std::vector<OutputPiece> OutputParser::finish() {
  switch (state_) {
    case State::reasoning: emit(OutputPiece::Kind::reasoning, buf_); break;
    case State::call:
      if (auto c = parse_hermes_call(buf_)) {
        out_.push_back({OutputPiece::Kind::tool_call, "", std::move(*c)});
      } else {
        emit(OutputPiece::Kind::content, kHermesOpen + buf_);
      }
      break;
    case State::rest: {
      std::optional<std::vector<ToolCall>> calls;
      if (split_.tools == ToolFormat::mistral) calls = parse_mistral_calls(buf_);
      if (split_.tools == ToolFormat::pythonic) calls = parse_pythonic_calls(buf_);
      if (split_.tools == ToolFormat::llama_json) calls = parse_llama_json_calls(buf_);
      if (calls) {
        for (ToolCall& c : *calls) out_.push_back({OutputPiece::Kind::tool_call, "", std::move(c)});
      } else {
        emit(OutputPiece::Kind::content, (split_.tools == ToolFormat::mistral ? kMistral : "") + buf_);
      }
      break;
    }
    case State::content: emit(OutputPiece::Kind::content, buf_); break;
  }
  buf_.clear();
  state_ = State::content;
  return std::exchange(out_, {});
}

SplitOutput split_output(const OutputSplit& split, const std::string& text) {
  OutputParser p(split);
  std::vector<OutputPiece> pieces = p.push(text);
  for (OutputPiece& x : p.finish()) pieces.push_back(std::move(x));
  SplitOutput out;
  for (OutputPiece& x : pieces) {
    if (x.kind == OutputPiece::Kind::content) out.content += x.text;
    if (x.kind == OutputPiece::Kind::reasoning) out.reasoning += x.text;
    if (x.kind == OutputPiece::Kind::tool_call) out.calls.push_back(std::move(x.call));
  }
  return out;
}

}  // namespace lmtune::server
