// Fine-tuning data as mlx-lm reads it (tuner/datasets.py): a folder of train/valid/test.jsonl in
// the completions, chat (with tools) or text format, rendered through the model's chat template,
// with --mask-prompt offsets; and batches (tuner/trainer.py: iterate_batches) with two of mlx-lm's
// bugs fixed: groups are sorted by token length, and the loss mask has no padding target.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "tokenizer/chat_template.h"

namespace lmtune::train {

enum class DataFormat { completions, chat, text };
const char* data_format_name(DataFormat f);

// The YAML feature keys (mlx-lm's prompt_feature, completion_feature, chat_feature, text_feature).
struct DataOptions {
  std::string prompt_feature = "prompt";
  std::string completion_feature = "completion";
  std::string chat_feature = "messages";
  std::string text_feature = "text";
  bool mask_prompt = false;
};

// One tokenized record: the loss covers tokens[offset..] (offset 0: all but the first token).
struct Example {
  std::vector<int32_t> tokens;
  int64_t offset = 0;
  int64_t line = 0;  // 1-based line of the jsonl file it came from
};

struct Dataset {
  std::string path;  // "" for an absent split
  DataFormat format = DataFormat::text;
  std::vector<Example> examples;
  size_t size() const { return examples.size(); }
  bool empty() const { return examples.empty(); }
};

// mlx-lm's format detection on the first record (completions, then chat, then text); throws
// "Unsupported data format" otherwise.
DataFormat detect_format(const nlohmann::ordered_json& record, const DataOptions& o);

// True when the vocabulary has a thinking token pair: mlx-lm's TokenizerWrapper then passes
// enable_thinking = true to every chat-template call (false otherwise).
bool tokenizer_has_thinking(const Tokenizer& tok);

// One record as mlx-lm's {Completions,Chat,Text}Dataset.process: chat and completions through the
// chat template (no generation prompt, no EOS added), text encoded with special tokens plus EOS
// unless it already ends with it. Throws on a record that lacks the format's keys.
Example tokenize_record(const nlohmann::ordered_json& record, DataFormat format, const ChatTemplate& chat,
                        const DataOptions& o);

// Reads and tokenizes a whole jsonl file. Every malformed line (invalid JSON, not an object,
// missing or ill-typed keys, a template error) is reported as "path:line: reason" on stderr;
// if there was any, it throws listing them (mlx-lm also stops at a bad line, without saying where).
// Blank lines are skipped. A missing file gives an empty Dataset.
Dataset load_jsonl_dataset(const std::string& path, const ChatTemplate& chat, const DataOptions& o);

struct DataSplits {
  Dataset train, valid, test;
};
// dir/{train,valid,test}.jsonl; with need_train a missing or empty train.jsonl is an error (and
// a missing valid.jsonl a warning), with need_test so is a missing test.jsonl (mlx-lm's messages).
DataSplits load_local_dataset(const std::string& dir, const ChatTemplate& chat, const DataOptions& o, bool need_train,
                              bool need_test);

// One padded batch. Width W = min(1 + 32 * ceil(max_len / 32), max_seq_length), as mlx-lm.
struct Batch {
  Tensor inputs;                 // i32 (B, W - 1): tokens[:, :-1], padded with id 0
  Tensor targets;                // i32 (B, W - 1): tokens[:, 1:] where supervised, else -1 (Model::loss ignores it)
  int64_t n_tokens = 0;          // supervised targets
  std::vector<int64_t> lengths;  // per row, after truncation
  std::vector<int64_t> offsets;  // per row
  std::vector<size_t> indices;   // dataset indices of the rows
  // Packed batches only (make_packed_batch): i32 (B, W - 1) per input token its rotary position
  // (from 0 in each example) and its segment id (the example's place in its row; padding after the
  // last example is one more segment). lengths, offsets and indices are then per example.
  Tensor positions, segments;
};

// Supervised target j of a row (target j is token j + 1) iff j + 1 >= offset and j + 1 < length:
// every real token after the prompt, never a padding token (mlx-lm's `steps <= length` also
// trains the first pad, PR #1697). Prints mlx-lm's truncation warning when a row is cut.
Batch make_batch(const Dataset& ds, const std::vector<size_t>& indices, int64_t max_seq_length, bool warn = true);

// Groups of batch_size dataset indices: stable-sorted by token count (mlx-lm sorts by the number
// of JSON keys, a no-op, issue #596), cut consecutively, the remainder dropped. Throws when the
// dataset has fewer than batch_size examples (mlx-lm's message).
std::vector<std::vector<size_t>> length_sorted_batches(const Dataset& ds, int64_t batch_size);

// --pack: the examples placed whole into rows, best-fit decreasing: longest first, each into the
// fullest row that still has room, else a new row. An example of n tokens (cut to max_seq_length, as
// make_batch cuts it) fills n - 1 input slots (its inputs are tokens[:-1]) of a row's
// max_seq_length - 1. The rows are stable-sorted by fill and cut consecutively into groups of
// batch_size rows; the last group may have fewer, so no example is dropped. Each row lists its
// examples in placement order.
using PackedGroup = std::vector<std::vector<size_t>>;  // rows of dataset indices
std::vector<PackedGroup> packed_batches(const Dataset& ds, int64_t batch_size, int64_t max_seq_length);

// A batch of packed rows: row r holds its examples one after another, each with the inputs and
// targets make_batch gives it alone (--mask-prompt offsets, the same truncation), positions from 0
// and its own segment id; width = min(32 * ceil(fullest row / 32), max_seq_length - 1) input slots,
// padded with id 0, target -1. Throws if a row overflows.
Batch make_packed_batch(const Dataset& ds, const PackedGroup& rows, int64_t max_seq_length, bool warn = true);

// The order of batch groups for pass `pass` of training: a permutation of 0..n-1 determined by
// (seed, pass) alone, so the batch of any iteration is known without replaying earlier ones.
std::vector<size_t> batch_order(size_t n, uint64_t seed, int64_t pass);

// The supervised part of an example marked for --preview: the prompt as text, then the supervised
// text between markers.
std::string preview_example(const Example& ex, const Tokenizer& tok, bool color);

}  // namespace lmtune::train
