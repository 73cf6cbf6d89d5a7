// `lmtune inspect --model DIR`: the parsed configuration and the tensors the family expects.
#include <cstdio>
#include <string>

#include "cli_commands.h"
#include "io/hub.h"
#include "models/model.h"
#include "options.h"
#include "runtime_setup.h"

namespace lmtune::cli {

namespace {

int inspect(const std::string& model) {
  ModelConfig c = ModelConfig::load(model);
  std::printf(
      "model_type %s\nn_vocab %lld\nn_embd %lld\nn_ff %lld\nn_layer %lld\nn_head %lld\nn_kv_head %lld\n"
      "head_dim %lld\nrope %s theta %g factor %g\ntie_word_embeddings %s\n",
      c.model_type.c_str(), (long long)c.n_vocab, (long long)c.n_embd, (long long)c.n_ff, (long long)c.n_layer,
      (long long)c.n_head, (long long)c.n_kv_head, (long long)c.head_dim, c.rope.type.c_str(), c.rope.theta,
      c.rope.factor, c.tie_word_embeddings ? "true" : "false");
  auto m = create_model(c);
  int64_t total = 0;
  for (const TensorSpec& s : m->tensor_specs()) {
    std::printf("  %-50s %s\n", s.name.c_str(), shape_str(s.shape).c_str());
    total += numel_of(s.shape);
  }
  std::printf("parameters %lld\n", (long long)total);
  return 0;
}

}  // namespace

int run_inspect(int argc, char** argv) {
  std::string model;
  Options t("inspect", "lmtune inspect --model MODEL",
            "Print the model's parsed config.json and the tensors its family reads.");
  t.add("--model", &model, "MODEL", kModelHelp);
  return run_with_options(t, argc, argv, [&] {
    if (model.empty()) throw UsageError("--model is required");
    return inspect(resolve_model(model));  // a folder, or org/name[@revision] through the Hub cache
  });
}

}  // namespace lmtune::cli
