// `lmtune inspect --model DIR`: the parsed configuration and the tensors the family expects.
#include <cstdio>
#include <map>
#include <string>

#include "cli_commands.h"
#include "core/error.h"
#include "io/hub.h"
#include "io/safetensors.h"
#include "models/checkpoint_layout.h"
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
  // The weights are opened and checked as load_model would (headers, every tensor's shape and
  // dtype, nothing unused), so a broken file is an error here too, not a clean-looking listing.
  SafetensorsModel files(model);
  read_checkpoint_layout(c, files);
  const std::vector<TensorSpec> specs = m->tensor_specs();
  const std::map<std::string, LayerQuant> quantized = check_checkpoint(model, c, specs, files);
  int64_t total = 0;
  for (const TensorSpec& s : specs) {
    const std::string layer = s.name.size() > 7 ? s.name.substr(0, s.name.size() - 7) : "";
    auto q = quantized.find(layer);
    std::string how = q == quantized.end() ? files.info(s.name).file_dtype
                                           : str_cat(quant_mode_name(q->second.mode), " ", q->second.bits, "-bit");
    std::printf("  %-50s %-16s %s\n", s.name.c_str(), shape_str(s.shape).c_str(), how.c_str());
    total += numel_of(s.shape);
  }
  std::printf("parameters %lld\nweights %zu tensors in %zu file(s), checked against the config\n", (long long)total,
              files.names().size(), files.files().size());
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
