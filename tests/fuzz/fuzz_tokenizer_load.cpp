// tokenizer.json NUL tokenizer_config.json NUL text (see fuzz_target.h's split): the tokenizer
// loaded from both files (any model, normalizer, pre-tokenizer, decoder and post-processor they
// declare), the text encoded with and without special tokens and decoded back, and the config's
// chat template (if any) rendered on a two-message conversation.
#include "core/error.h"
#include "fuzz_target.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

LMTUNE_FUZZ_TARGET(tokenizer_load) {
  std::vector<std::string> parts = lmtune::fuzz::split(data, size, 3);
  try {
    lmtune::Tokenizer tok = lmtune::Tokenizer::from_json(parts[0], parts[1], "tokenizer.json");
    for (bool special : {false, true}) {
      std::vector<int32_t> ids = tok.encode(parts[2], special);
      volatile size_t sink = tok.decode(ids, !special).size();
      (void)sink;
    }
    volatile int32_t sink = tok.vocab_size() + tok.token_to_id(parts[2]) + tok.bos_id() + tok.eos_id();
    (void)sink;
    if (!parts[1].empty()) {
      lmtune::ChatTemplate chat(tok, parts[1], "tokenizer_config.json");
      if (!tok.chat_template().empty()) {
        nlohmann::ordered_json conv = {{{"role", "user"}, {"content", parts[2]}},
                                       {{"role", "assistant"}, {"content", "ok"}}};
        volatile size_t n = chat.render(conv).size();
        (void)n;
      }
    }
  } catch (const lmtune::Error&) {
  }
  return 0;
}
