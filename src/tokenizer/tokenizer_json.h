// Reads tokenizer.json in one pass of nlohmann's SAX parser: model.vocab and model.merges (most of a
// large file) go straight into flat ModelTables, everything else into an ordinary JSON DOM.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "tokenizer/model.h"

namespace lmtune::tok {

struct TokenizerJson {
  nlohmann::json dom;  // the file without model.vocab and model.merges when those went to tables
  ModelTables tables;
};

// False when the vocab or merges have an unusual shape (a non-integer id, a merge that is not
// "a b" or [a, b], a repeated key, ...): the caller then parses the whole file as a DOM.
// Syntax errors throw nlohmann's parse_error, as nlohmann::json::parse does.
bool read_tokenizer_json(const std::string& text, TokenizerJson& out);

}  // namespace lmtune::tok
