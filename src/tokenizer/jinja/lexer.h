// Splits a Jinja template into text and tag tokens, applying whitespace control ({%- -%},
// {{- -}}, {%+) and Hugging Face's trim_blocks=True, lstrip_blocks=True the way jinja2 does.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace lmtune::jinja {

enum class Tok : uint8_t { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Token {
  Tok type;
  std::string text;  // Text data, name, decoded string literal or operator
  int64_t i = 0;
  double f = 0;
  int pos = 0;  // byte offset in the normalized source
};

struct LexOptions {
  bool trim_blocks = true;
  bool lstrip_blocks = true;
};

// Source positions as "line L, column C" (1-based) for error messages.
class SourceMap {
 public:
  explicit SourceMap(const std::string& source);
  std::string where(int pos) const;

 private:
  std::vector<int> line_starts_;
  const std::string* source_;
};

// Normalizes newlines (\r\n, \r -> \n) and drops one trailing newline, as jinja2 does.
std::string normalize_source(const std::string& source);

// Tokenizes normalized source; a malformed tag fails with "[jinja] line L, column C: ...".
std::vector<Token> tokenize(const std::string& source, const LexOptions& opt = {});

}  // namespace lmtune::jinja
