// A training .jsonl of arbitrary bytes, read by the dataset reader with the default model's chat
// template: the first byte sets mask_prompt and renamed feature keys, the rest is the file. The
// file is read with format detection (load_jsonl_dataset), then each line that is a JSON object
// is tokenized in each of the three formats (completions, chat, text), as a file of that format
// would be, and the first examples are batched.
#include <sstream>

#include "core/error.h"
#include "fuzz_target.h"
#include "train/dataset.h"

using lmtune::train::DataFormat;

LMTUNE_FUZZ_TARGET(dataset) {
  static const lmtune::ChatTemplate chat = lmtune::ChatTemplate::load(lmtune::fuzz::default_model_dir());
  static const std::string path = lmtune::fuzz::scratch_dir("dataset") + "/train.jsonl";
  if (size == 0) return 0;
  lmtune::train::DataOptions o;
  o.mask_prompt = data[0] & 1;
  if (data[0] & 2) {
    o.prompt_feature = "input";
    o.completion_feature = "output";
    o.chat_feature = "conversation";
    o.text_feature = "body";
  }
  std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  lmtune::fuzz::write_file(path, text);
  try {
    lmtune::train::Dataset ds = lmtune::train::load_jsonl_dataset(path, chat, o);
    if (!ds.empty()) {
      std::vector<size_t> idx;
      for (size_t i = 0; i < ds.size() && i < 4; ++i) idx.push_back(i);
      volatile int64_t sink = lmtune::train::make_batch(ds, idx, 64, false).inputs.numel();
      (void)sink;
    }
  } catch (const lmtune::Error&) {
  }
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    nlohmann::ordered_json record = nlohmann::ordered_json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!record.is_object()) continue;
    for (DataFormat f : {DataFormat::completions, DataFormat::chat, DataFormat::text}) {
      try {
        volatile size_t sink = lmtune::train::tokenize_record(record, f, chat, o).tokens.size();
        (void)sink;
      } catch (const lmtune::Error&) {
      }
    }
  }
  return 0;
}
