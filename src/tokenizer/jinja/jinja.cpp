// Template API: normalize, tokenize and parse once into a shared program; render per context.
#include "tokenizer/jinja/jinja.h"

#include "core/error.h"
#include "tokenizer/jinja/cycles.h"
#include "tokenizer/jinja/evaluator.h"
#include "tokenizer/jinja/lexer.h"
#include "tokenizer/jinja/parser.h"

namespace lmtune::jinja {

struct Program {
  std::string source;  // normalized; SourceMap points into it
  std::unique_ptr<SourceMap> map;
  Body body;
};

Template Template::parse(const std::string& source) {
  auto program = std::make_shared<Program>();
  program->source = normalize_source(source);
  program->map = std::make_unique<SourceMap>(program->source);
  std::vector<Token> tokens = tokenize(program->source);
  program->body = parse_tokens(tokens, *program->map);
  Template t;
  t.program_ = std::move(program);
  return t;
}

std::string Template::render(const nlohmann::ordered_json& context) const {
  LMT_CHECK(program_ != nullptr, "[jinja] render called on a template that was never parsed");
  LMT_CHECK(context.is_object() || context.is_null(), "[jinja] render context must be a JSON object, got ",
            context.type_name());
  CycleCollector cycles;  // declared first: it collects after the evaluator and context are gone
  Value ctx = context.is_null() ? Value::dict() : Value::from_json(context);
  Evaluator ev(*program_->map, std::move(ctx));
  std::string out;
  ev.render(program_->body, out);
  return out;
}

}  // namespace lmtune::jinja
