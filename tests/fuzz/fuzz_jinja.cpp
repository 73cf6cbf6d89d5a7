// template NUL context NUL: a chat template of arbitrary text parsed (lexer, parser) and rendered
// against a context built from the second part when it is a JSON object (messages, tools, any
// variable), else against a fixed two-message conversation with the usual special tokens.
#include "core/error.h"
#include "fuzz_target.h"
#include "tokenizer/jinja/jinja.h"

LMTUNE_FUZZ_TARGET(jinja) {
  std::vector<std::string> parts = lmtune::fuzz::split(data, size, 2);
  nlohmann::ordered_json context = nlohmann::ordered_json::parse(parts[1], nullptr, /*allow_exceptions=*/false);
  if (!context.is_object()) {
    context = {{"messages",
                {{{"role", "system"}, {"content", "Be brief."}},
                 {{"role", "user"}, {"content", parts[1]}},
                 {{"role", "assistant"}, {"content", "Sure."}}}},
               {"bos_token", "<s>"},
               {"eos_token", "</s>"},
               {"add_generation_prompt", true}};
  }
  try {
    lmtune::jinja::Template t = lmtune::jinja::Template::parse(parts[0]);
    volatile size_t sink = t.render(context).size();
    (void)sink;
  } catch (const lmtune::Error&) {
  }
  return 0;
}
