// `lmtune inspect --model DIR`: the parsed configuration and the tensors the family expects.
#include <cstdio>
#include <cstring>
#include <string>

#include "cli_commands.h"
#include "core/error.h"
#include "io/hub.h"
#include "models/model.h"

namespace lmtune::cli {

int run_inspect(int argc, char** argv) {
  std::string model;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "-h") || !std::strcmp(argv[i], "--help")) {
      std::printf("usage: lmtune inspect --model DIR|ORG/NAME[@REV]\n\nPrint the model's parsed config.json and the tensors "
                  "its family reads.\n");
      return 0;
    }
    if (!std::strcmp(argv[i], "--model") && i + 1 < argc) {
      model = resolve_model(argv[++i]);  // a folder, or org/name[@revision] from the Hub cache
    } else {
      fail("unknown or incomplete argument '", argv[i], "' (see lmtune inspect --help)");
    }
  }
  LMT_CHECK(!model.empty(), "--model is required");
  ModelConfig c = ModelConfig::load(model);
  std::printf("model_type %s\nn_vocab %lld\nn_embd %lld\nn_ff %lld\nn_layer %lld\nn_head %lld\nn_kv_head %lld\n"
              "head_dim %lld\nrope %s theta %g factor %g\ntie_word_embeddings %s\n",
              c.model_type.c_str(), (long long)c.n_vocab, (long long)c.n_embd, (long long)c.n_ff,
              (long long)c.n_layer, (long long)c.n_head, (long long)c.n_kv_head, (long long)c.head_dim,
              c.rope.type.c_str(), c.rope.theta, c.rope.factor, c.tie_word_embeddings ? "true" : "false");
  auto m = create_model(c);
  int64_t total = 0;
  for (const TensorSpec& s : m->tensor_specs()) {
    std::printf("  %-50s %s\n", s.name.c_str(), shape_str(s.shape).c_str());
    total += numel_of(s.shape);
  }
  std::printf("parameters %lld\n", (long long)total);
  return 0;
}

}  // namespace lmtune::cli
