// Builds the statement tree from lexer tokens with jinja2's grammar and operator precedence;
// syntax errors and unknown filters or tests fail with "[jinja] line L, column C: ...".
#pragma once
#include <vector>

#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/lexer.h"

namespace lmtune::jinja {

Body parse_tokens(const std::vector<Token>& tokens, const SourceMap& map);

}  // namespace lmtune::jinja
