// Fine-tuning data against mlx-lm's own tuner/datasets.py (tests/ref/dataset_ref.py on real npm
// tokenizers): tokens and --mask-prompt offsets equal; batches equal iterate_batches' arrays, and
// the loss mask equals default_loss's minus its padding target (our fix of PR #1697). Also the
// fixes and checks mlx-lm lacks: token-length sorting, malformed lines reported by line number.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "train/dataset.h"

using namespace lmtune;
using namespace lmtune::train;
using json = nlohmann::json;

namespace {

std::string ref_dir() {
  const char* d = std::getenv("LMTUNE_DATASET_REF_DIR");
  return d ? d : "";
}

DataOptions options_from(const json& keys) {
  DataOptions o;
  o.mask_prompt = keys.value("mask_prompt", false);
  o.prompt_feature = keys.value("prompt_feature", o.prompt_feature);
  o.completion_feature = keys.value("completion_feature", o.completion_feature);
  o.chat_feature = keys.value("chat_feature", o.chat_feature);
  o.text_feature = keys.value("text_feature", o.text_feature);
  return o;
}

void write(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path) << text;
}

}  // namespace

TEST(Dataset, MatchesMlxLm) {
  std::string root = ref_dir();
  if (root.empty()) GTEST_SKIP() << "LMTUNE_DATASET_REF_DIR not set";
  int cases = 0;
  for (const auto& e : std::filesystem::directory_iterator(root)) {
    if (!std::filesystem::exists(e.path() / "ref.json")) continue;
    ++cases;
    std::string name = e.path().filename().string();
    SCOPED_TRACE(name);
    json ref = json::parse(std::ifstream(e.path() / "ref.json"));
    ChatTemplate chat = ChatTemplate::load((e.path() / "tokenizer").string());
    DataOptions o = options_from(ref["keys"]);
    Dataset ds = load_jsonl_dataset((e.path() / "train.jsonl").string(), chat, o);
    ASSERT_EQ(ds.size(), ref["examples"].size());
    for (size_t i = 0; i < ds.size(); ++i) {
      SCOPED_TRACE("record " + std::to_string(i));
      EXPECT_EQ(ds.examples[i].tokens, ref["examples"][i]["tokens"].get<std::vector<int32_t>>());
      EXPECT_EQ(ds.examples[i].offset, ref["examples"][i]["offset"].get<int64_t>());
      EXPECT_EQ(ds.examples[i].line, int64_t(i + 1));
    }
    int64_t bs = ref["batch_size"], msl = ref["max_seq_length"];
    std::vector<size_t> idx;
    for (int64_t i = 0; i < bs; ++i) idx.push_back(size_t(i));
    Batch b = make_batch(ds, idx, msl, false);
    auto arr = ref["batch"].get<std::vector<std::vector<int32_t>>>();
    auto mask = ref["mask"].get<std::vector<std::vector<int>>>();
    auto lengths = ref["lengths"].get<std::vector<int64_t>>();
    int64_t T = int64_t(arr[0].size()) - 1;
    ASSERT_EQ(b.inputs.shape(), (Shape{bs, T}));
    const int32_t* in = b.inputs.data<int32_t>();
    const int32_t* tg = b.targets.data<int32_t>();
    int64_t n = 0;
    for (int64_t r = 0; r < bs; ++r) {
      EXPECT_EQ(b.lengths[size_t(r)], lengths[size_t(r)]);
      for (int64_t j = 0; j < T; ++j) {
        EXPECT_EQ(in[size_t(r * T + j)], arr[size_t(r)][size_t(j)]) << "row " << r << " col " << j;
        // mlx-lm's mask is steps >= offset & steps <= length (steps = j + 1); the fix drops the
        // one target at steps == length, which is padding (or past the row when truncated).
        bool want = mask[size_t(r)][size_t(j)] && j + 1 < lengths[size_t(r)];
        bool got = tg[size_t(r * T + j)] >= 0;
        EXPECT_EQ(got, want) << "row " << r << " target " << j;
        if (got) {
          EXPECT_EQ(tg[size_t(r * T + j)], arr[size_t(r)][size_t(j + 1)]);
        }
        n += want;
      }
    }
    EXPECT_EQ(b.n_tokens, n);
    // mlx-lm's "length" sort key is the record's key count, a no-op (issue #596); ours is tokens.
    auto groups = length_sorted_batches(ds, 1);
    for (size_t i = 1; i < groups.size(); ++i)
      EXPECT_LE(ds.examples[groups[i - 1][0]].tokens.size(), ds.examples[groups[i][0]].tokens.size());
  }
  EXPECT_GE(cases, 8);
}

class DatasetChecks : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string root = ref_dir();
    if (root.empty()) GTEST_SKIP() << "LMTUNE_DATASET_REF_DIR not set";
    chat_ = std::make_unique<ChatTemplate>(ChatTemplate::load(root + "/chat_llama3/tokenizer"));
    tmp_ = std::filesystem::temp_directory_path() / ("lmtune_ds_" + std::to_string(::getpid()));
  }
  void TearDown() override { std::filesystem::remove_all(tmp_); }
  std::unique_ptr<ChatTemplate> chat_;
  std::filesystem::path tmp_;
};

TEST_F(DatasetChecks, MalformedLinesReportedWithLineNumbers) {
  std::string p = (tmp_ / "train.jsonl").string();
  write(p,
        "{\"text\": \"one\"}\n\n{\"text\": \"two\"\n[1, 2]\n{\"text\": 5}\n{\"prompt\": \"x\"}\n{\"text\": \"ok\"}\n");
  testing::internal::CaptureStderr();
  try {
    load_jsonl_dataset(p, *chat_, {});
    FAIL() << "no error";
  } catch (const std::exception& e) {
    std::string w = e.what();
    EXPECT_NE(w.find("4 malformed lines"), std::string::npos) << w;
    EXPECT_NE(w.find("(2 good)"), std::string::npos) << w;
    for (const char* line : {":3: invalid JSON", ":4: the line is not a JSON object",
                             ":5: 'text' must be a string, got 5", ":6: missing key 'text'"})
      EXPECT_NE(w.find(p + line), std::string::npos) << line << "\n" << w;
  }
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find(p + ":6:"), std::string::npos);
}

TEST_F(DatasetChecks, FormatErrors) {
  std::string p = (tmp_ / "a.jsonl").string();
  write(p, "{\"foo\": 1}\n");
  EXPECT_THROW(load_jsonl_dataset(p, *chat_, {}), std::exception);
  write(p, "{\"text\": \"hi\"}\n");
  DataOptions o;
  o.mask_prompt = true;
  EXPECT_THROW(load_jsonl_dataset(p, *chat_, o), std::exception);
  EXPECT_TRUE(load_jsonl_dataset((tmp_ / "missing.jsonl").string(), *chat_, {}).empty());
  EXPECT_THROW(load_local_dataset(tmp_.string(), *chat_, {}, true, false), std::exception);  // no train.jsonl
}

TEST_F(DatasetChecks, SortedBatchesAndOrder) {
  Dataset ds;
  for (int n : {9, 3, 7, 1, 5, 2, 8}) ds.examples.push_back({std::vector<int32_t>(size_t(n), 1), 0, 0});
  auto g = length_sorted_batches(ds, 2);
  ASSERT_EQ(g.size(), 3u);  // the remainder is dropped
  EXPECT_EQ(g[0], (std::vector<size_t>{3, 5}));
  EXPECT_EQ(g[1], (std::vector<size_t>{1, 4}));
  EXPECT_EQ(g[2], (std::vector<size_t>{2, 6}));
  EXPECT_THROW(length_sorted_batches(ds, 8), std::exception);
  EXPECT_EQ(batch_order(10, 3, 4), batch_order(10, 3, 4));
  EXPECT_NE(batch_order(10, 3, 4), batch_order(10, 3, 5));
  Batch b = make_batch(ds, {0, 3}, 4, false);  // 9 tokens cut to 4
  EXPECT_EQ(b.inputs.shape(), (Shape{2, 3}));
  EXPECT_EQ(b.n_tokens, 3);  // row 0: targets 1..3; row 1: a 1-token example has none
}
