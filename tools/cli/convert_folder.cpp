// The output folder of `lmtune convert` and `lmtune fuse` (mlx-lm's utils.save): the planned
// tensors streamed into shards, the index, config.json, the tokenizer files, generation_config.json,
// *.py and the model card, all staged under a temporary name and renamed into place.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <set>
#include <string>

#include "convert_plan.h"
#include "core/error.h"

namespace fs = std::filesystem;

namespace lmtune::cli::convert {

namespace {

// The tokenizer and the small files save() leaves beside the weights: tokenizer.save_pretrained's
// files (copied as they are, not re-serialized by transformers), generation_config.json and *.py.
bool copied_beside_weights(const std::string& name) {
  static const std::set<std::string> kNames = {"tokenizer.json",
                                               "tokenizer_config.json",
                                               "special_tokens_map.json",
                                               "added_tokens.json",
                                               "chat_template.jinja",
                                               "chat_template.json",
                                               "tokenizer.model",
                                               "tiktoken.model",
                                               "vocab.json",
                                               "merges.txt",
                                               "vocab.txt",
                                               "generation_config.json"};
  auto ends_with = [&](const char* s) {
    std::string suf = s;
    return name.size() > suf.size() && name.compare(name.size() - suf.size(), suf.size(), suf) == 0;
  };
  return kNames.count(name) || ends_with(".tiktoken") || ends_with(".py");
}

// create_model_card: huggingface_hub's template card with mlx-lm's fields (base_model for a Hub id).
std::string model_card(const std::optional<std::string>& base_model) {
  std::string s = "---\nlanguage: en\n";
  if (base_model) s += "base_model: " + *base_model + "\n";
  return s + "library_name: mlx\npipeline_tag: text-generation\ntags:\n- mlx\n---\n";
}

}  // namespace

void write_folder(const Plan& plan, const std::string& source, const std::string& out_path,
                  const std::optional<std::string>& base_model) {
  StagedFolder folder(out_path);
  std::vector<std::vector<size_t>> shards = plan.shards();
  std::vector<size_t> shard_of(plan.tensors().size());
  for (size_t s = 0; s < shards.size(); ++s)
    for (size_t i : shards[s]) shard_of[i] = s;

  Progress progress(plan.total_size());
  std::unique_ptr<ShardWriter> writer;
  size_t current = shards.size();
  for (const Leaf& leaf : plan.leaves()) {
    std::vector<std::pair<std::string, Tensor>> made = plan.produce(leaf);
    LMT_CHECK(made.size() == leaf.n_tensors, "[convert] ", leaf.path, ": made ", made.size(), " tensors, planned ",
              leaf.n_tensors);
    for (size_t k = 0; k < made.size(); ++k) {
      size_t i = leaf.first_tensor + k;
      LMT_CHECK(made[k].first == plan.tensors()[i].name, "[convert] made ", made[k].first, ", planned ",
                plan.tensors()[i].name);
      if (shard_of[i] != current) {  // the shards hold consecutive tensors of mlx-lm's order
        if (writer) writer->commit();
        current = shard_of[i];
        std::vector<TensorEntry> entries;
        for (size_t j : shards[current]) entries.push_back(plan.tensors()[j]);
        writer =
            std::make_unique<ShardWriter>(folder.file(Plan::shard_name(current, shards.size())), std::move(entries),
                                          std::map<std::string, std::string>{{"format", "mlx"}});
      }
      progress.add(writer->put(made[k].first, made[k].second), leaf.path);
    }
  }
  if (writer) writer->commit();
  progress.done();

  write_file_atomic(folder.file("model.safetensors.index.json"), plan.index_text(shards));
  write_file_atomic(folder.file("config.json"), plan.config_text());
  bool tokenizer = false;
  for (const fs::directory_entry& e : fs::directory_iterator(source)) {
    std::string name = e.path().filename().string();
    if (!e.is_regular_file() || !copied_beside_weights(name)) continue;
    copy_file(e.path().string(), folder.file(name));
    tokenizer |= name == "tokenizer.json" || name == "tokenizer.model" || name == "vocab.json" ||
                 name == "tiktoken.model" || name.find(".tiktoken") != std::string::npos;
  }
  if (!tokenizer)
    std::fprintf(stderr, "[WARN] %s has no tokenizer files; %s has none either (mlx-lm needs them to load it)\n",
                 source.c_str(), out_path.c_str());
  write_file_atomic(folder.file("README.md"), model_card(base_model));
  folder.commit();
}

}  // namespace lmtune::cli::convert
