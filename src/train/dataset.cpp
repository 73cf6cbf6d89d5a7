#include "train/dataset.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <sstream>

#include "core/error.h"

namespace lmtune::train {

using ojson = nlohmann::ordered_json;

const char* data_format_name(DataFormat f) {
  switch (f) {
    case DataFormat::completions: return "completions";
    case DataFormat::chat: return "chat";
    case DataFormat::text: return "text";
  }
  return "?";
}

DataFormat detect_format(const ojson& r, const DataOptions& o) {
  if (r.is_object()) {
    if (r.contains(o.prompt_feature) && r.contains(o.completion_feature)) return DataFormat::completions;
    if (r.contains(o.chat_feature)) return DataFormat::chat;
    if (r.contains(o.text_feature)) {
      LMT_CHECK(!o.mask_prompt, "Prompt masking not supported for text dataset.");
      return DataFormat::text;
    }
  }
  fail("Unsupported data format, check the supported formats here:\n"
       "https://github.com/ml-explore/mlx-lm/blob/main/mlx_lm/LORA.md#Data. (the first record has keys: ",
       r.is_object() ? [&] {
         std::string k;
         for (auto it = r.begin(); it != r.end(); ++it) k += (k.empty() ? "" : ", ") + it.key();
         return k;
       }()
                     : std::string("(not an object)"),
       "; expected '", o.prompt_feature, "' + '", o.completion_feature, "', '", o.chat_feature, "' or '",
       o.text_feature, "')");
}

bool tokenizer_has_thinking(const Tokenizer& tok) {
  static const char* kPairs[][2] = {{"<think>", "</think>"},
                                    {"<longcat_think>", "</longcat_think>"},
                                    {"<|think:start|>", "<|think:end|>"},
                                    {"<|channel>", "<channel|>"}};
  for (const auto& p : kPairs)
    if (tok.token_to_id(p[0]) >= 0 && tok.token_to_id(p[1]) >= 0) return true;
  return false;
}

namespace {

ChatTemplateOptions template_options(const ChatTemplate& chat, const ojson& tools, bool add_generation_prompt) {
  ChatTemplateOptions opt;
  opt.tools = tools;
  opt.add_generation_prompt = add_generation_prompt;
  opt.kwargs["enable_thinking"] = tokenizer_has_thinking(chat.tokenizer());
  return opt;
}

std::vector<int32_t> encode_chat(const ChatTemplate& chat, const ojson& messages, const ojson& tools, bool agp) {
  if (messages.empty()) {
    // HF renders an empty conversation (e.g. just the BOS); our renderer wants a message, so an
    // empty prefix of a one-message chat masks nothing.
    try {
      return chat.encode(messages, template_options(chat, tools, agp));
    } catch (const std::exception&) {
      return {};
    }
  }
  return chat.encode(messages, template_options(chat, tools, agp));
}

std::string show(const ojson& v) {
  std::string d = v.dump();
  return d.size() > 60 ? d.substr(0, 57) + "..." : d;
}

// A message as chat templates read it: a string role; content a string, an object (a tool
// result), a list of content parts (objects), or null / absent only beside tool_calls. A number, a list of strings or a
// null would otherwise be printed by the template as "5", "['a']" or "None" and trained on silently.
void check_message(const ojson& m, size_t i, const std::string& key) {
  LMT_CHECK(m.is_object(), "'", key, "'[", i, "] is not a JSON object: ", show(m));
  LMT_CHECK(m.contains("role") && m["role"].is_string(), "'", key, "'[", i, "] needs a string 'role', got ",
            m.contains("role") ? show(m["role"]) : std::string("none"));
  const bool tool_calls = m.contains("tool_calls") && m["tool_calls"].is_array() && !m["tool_calls"].empty();
  if (!m.contains("content") || m["content"].is_null()) {
    LMT_CHECK(tool_calls, "'", key, "'[", i, "] (role ", m["role"].get<std::string>(),
              ") has no 'content' (null or absent is allowed only beside 'tool_calls')");
    return;
  }
  const ojson& c = m["content"];
  if (c.is_string() || c.is_object()) return;  // an object: a tool result some templates serialize
  LMT_CHECK(c.is_array(), "'", key, "'[", i, "]'s 'content' must be a string or a list of content parts, got ",
            show(c));
  for (size_t k = 0; k < c.size(); ++k)
    LMT_CHECK(c[k].is_object() && c[k].contains("type") && c[k]["type"].is_string(), "'", key, "'[", i,
              "]'s content part ", k, " must be an object with a 'type' (as {\"type\": \"text\", \"text\": ...}), got ",
              show(c[k]));
}

}  // namespace

Example tokenize_record(const ojson& r, DataFormat format, const ChatTemplate& chat, const DataOptions& o) {
  LMT_CHECK(r.is_object(), "the line is not a JSON object");
  Example ex;
  ojson tools = r.contains("tools") ? r["tools"] : ojson(nullptr);
  LMT_CHECK(tools.is_null() || tools.is_array(), "'tools' must be a list of tool definitions, got ", show(tools));
  if (format == DataFormat::text) {
    LMT_CHECK(r.contains(o.text_feature), "missing key '", o.text_feature, "' (text format)");
    LMT_CHECK(r[o.text_feature].is_string(), "'", o.text_feature, "' must be a string, got ", show(r[o.text_feature]));
    ex.tokens = chat.tokenizer().encode(r[o.text_feature].get<std::string>());
    int32_t eos = chat.tokenizer().eos_id();
    LMT_CHECK(eos >= 0, "the tokenizer has no eos_token to end a text example with");
    if (ex.tokens.empty() || ex.tokens.back() != eos) ex.tokens.push_back(eos);
    return ex;
  }
  ojson messages;
  bool agp = true;
  if (format == DataFormat::completions) {
    LMT_CHECK(r.contains(o.prompt_feature) && r.contains(o.completion_feature), "missing key '",
              r.contains(o.prompt_feature) ? o.completion_feature : o.prompt_feature, "' (completions format)");
    for (const std::string& k : {o.prompt_feature, o.completion_feature})
      LMT_CHECK(r[k].is_string(), "'", k, "' must be a string, got ", show(r[k]));
    messages = ojson::array({ojson{{"role", "user"}, {"content", r[o.prompt_feature]}},
                             ojson{{"role", "assistant"}, {"content", r[o.completion_feature]}}});
  } else {
    LMT_CHECK(r.contains(o.chat_feature), "missing key '", o.chat_feature, "' (chat format)");
    messages = r[o.chat_feature];
    LMT_CHECK(messages.is_array() && !messages.empty(), "'", o.chat_feature, "' is not a non-empty list of messages");
    for (size_t i = 0; i < messages.size(); ++i) check_message(messages[i], i, o.chat_feature);
    const ojson& last = messages.back();
    agp = last.contains("role") && last["role"] == "assistant";
  }
  ex.tokens = chat.encode(messages, template_options(chat, tools, false));
  if (o.mask_prompt) {
    ojson prefix = ojson::array();
    for (size_t i = 0; i + 1 < messages.size(); ++i) prefix.push_back(messages[i]);
    ex.offset = int64_t(encode_chat(chat, prefix, tools, agp).size());
  }
  return ex;
}

Dataset load_jsonl_dataset(const std::string& path, const ChatTemplate& chat, const DataOptions& o) {
  Dataset ds;
  if (!std::filesystem::exists(path)) return ds;
  std::ifstream f(path, std::ios::binary);
  LMT_CHECK(f.good(), "[data] cannot open ", path);
  ds.path = path;
  std::vector<std::string> errors;
  std::string line;
  int64_t lineno = 0;
  bool have_format = false;
  while (std::getline(f, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    try {
      ojson r;
      try {
        r = ojson::parse(line);
      } catch (const nlohmann::json::exception& e) {
        std::string what = e.what();
        size_t p = what.find("] ");
        fail("invalid JSON: ", p == std::string::npos ? what : what.substr(p + 2));
      }
      LMT_CHECK(r.is_object(), "the line is not a JSON object");
      if (!have_format) {
        ds.format = detect_format(r, o);  // an unsupported first record stops here, as mlx-lm
        have_format = true;
      }
      Example ex = tokenize_record(r, ds.format, chat, o);
      ex.line = lineno;
      ds.examples.push_back(std::move(ex));
    } catch (const std::exception& e) {
      if (!have_format) throw Error(path + ":" + std::to_string(lineno) + ": " + e.what());
      std::string msg = path + ":" + std::to_string(lineno) + ": " + e.what();
      std::fprintf(stderr, "[data] %s\n", msg.c_str());
      errors.push_back(msg);
    }
  }
  if (!errors.empty()) {
    std::ostringstream s;
    s << "[data] " << errors.size() << " malformed line" << (errors.size() > 1 ? "s" : "") << " in " << path << " ("
      << ds.examples.size() << " good); fix or remove them:";
    for (size_t i = 0; i < errors.size() && i < 20; ++i) s << "\n  " << errors[i];
    if (errors.size() > 20) s << "\n  ... and " << errors.size() - 20 << " more (all listed above)";
    throw Error(s.str());
  }
  return ds;
}

DataSplits load_local_dataset(const std::string& dir, const ChatTemplate& chat, const DataOptions& o, bool need_train,
                              bool need_test) {
  LMT_CHECK(std::filesystem::is_directory(dir),
            "[data] --data must be a local folder with train.jsonl, "
            "valid.jsonl and test.jsonl (Hugging Face datasets are not available offline): ",
            dir);
  DataSplits s;
  if (need_train) {
    s.train = load_jsonl_dataset(dir + "/train.jsonl", chat, o);
    s.valid = load_jsonl_dataset(dir + "/valid.jsonl", chat, o);
    LMT_CHECK(!s.train.empty(), "Training set not found or empty. Must provide training set for fine-tuning.");
    if (s.valid.empty())
      std::printf("Warning: Validation set not found or empty. Training will proceed without validation.\n");
  }
  if (need_test) {
    s.test = load_jsonl_dataset(dir + "/test.jsonl", chat, o);
    LMT_CHECK(!s.test.empty(), "Test set not found or empty. Must provide test set for evaluation.");
  }
  return s;
}

Batch make_batch(const Dataset& ds, const std::vector<size_t>& indices, int64_t max_seq_length, bool warn) {
  LMT_CHECK(!indices.empty(), "[data] empty batch");
  LMT_CHECK(max_seq_length >= 2, "[data] max_seq_length must be at least 2, got ", max_seq_length);
  Batch b;
  b.indices = indices;
  int64_t max_len = 0;
  for (size_t i : indices) max_len = std::max<int64_t>(max_len, int64_t(ds.examples.at(i).tokens.size()));
  if (max_len > max_seq_length && warn)
    std::printf(
        "[WARNING] Some sequences are longer than %lld tokens. The longest sentence %lld will be truncated "
        "to %lld. Consider pre-splitting your data to save memory.\n",
        (long long)max_seq_length, (long long)max_len, (long long)max_seq_length);
  const int64_t pad_to = 32;
  int64_t width = std::min<int64_t>(1 + pad_to * ((max_len + pad_to - 1) / pad_to), max_seq_length);
  int64_t B = int64_t(indices.size()), T = width - 1;
  std::vector<int32_t> in(size_t(B * T), 0), tg(size_t(B * T), -1);
  for (int64_t r = 0; r < B; ++r) {
    const Example& ex = ds.examples[indices[size_t(r)]];
    int64_t len = std::min<int64_t>(int64_t(ex.tokens.size()), width);
    b.lengths.push_back(len);
    b.offsets.push_back(ex.offset);
    for (int64_t j = 0; j < T; ++j) {
      if (j < len) in[size_t(r * T + j)] = ex.tokens[size_t(j)];
      if (j + 1 < len && j + 1 >= ex.offset) {
        tg[size_t(r * T + j)] = ex.tokens[size_t(j + 1)];
        ++b.n_tokens;
      }
    }
  }
  b.inputs = Tensor::from_i32(in, {B, T});
  b.targets = Tensor::from_i32(tg, {B, T});
  return b;
}

std::vector<std::vector<size_t>> length_sorted_batches(const Dataset& ds, int64_t batch_size) {
  LMT_CHECK(batch_size >= 1, "[data] batch_size must be at least 1, got ", batch_size);
  LMT_CHECK(int64_t(ds.size()) >= batch_size, "Dataset must have at least batch_size=", batch_size,
            " examples but only has ", ds.size(), ".", ds.path.empty() ? "" : " (" + ds.path + ")");
  std::vector<size_t> idx(ds.size());
  std::iota(idx.begin(), idx.end(), size_t(0));
  std::stable_sort(idx.begin(), idx.end(),
                   [&](size_t a, size_t b) { return ds.examples[a].tokens.size() < ds.examples[b].tokens.size(); });
  std::vector<std::vector<size_t>> out;
  for (size_t i = 0; i + size_t(batch_size) <= idx.size(); i += size_t(batch_size))
    out.emplace_back(idx.begin() + long(i), idx.begin() + long(i) + long(batch_size));
  return out;
}

namespace {
// Input slots an example fills in a packed row: its inputs tokens[:-1] after make_batch's cut.
int64_t packed_fill(const Example& ex, int64_t max_seq_length) {
  return std::max<int64_t>(0, std::min<int64_t>(int64_t(ex.tokens.size()), max_seq_length) - 1);
}
}  // namespace

std::vector<PackedGroup> packed_batches(const Dataset& ds, int64_t batch_size, int64_t max_seq_length) {
  LMT_CHECK(batch_size >= 1, "[data] batch_size must be at least 1, got ", batch_size);
  LMT_CHECK(max_seq_length >= 2, "[data] max_seq_length must be at least 2, got ", max_seq_length);
  LMT_CHECK(!ds.empty(), "[data] nothing to pack: the dataset is empty", ds.path.empty() ? "" : " (" + ds.path + ")");
  const int64_t cap = max_seq_length - 1;
  std::vector<size_t> idx(ds.size());
  std::iota(idx.begin(), idx.end(), size_t(0));
  std::stable_sort(idx.begin(), idx.end(),
                   [&](size_t a, size_t b) { return ds.examples[a].tokens.size() > ds.examples[b].tokens.size(); });
  std::vector<std::vector<size_t>> rows;
  std::vector<int64_t> fill;
  std::set<std::pair<int64_t, size_t>> room;  // (free slots, row): best fit = the least room that suffices
  for (size_t i : idx) {
    const int64_t n = packed_fill(ds.examples[i], max_seq_length);
    auto it = room.lower_bound({n, size_t(0)});
    size_t r;
    if (it == room.end()) {
      r = rows.size();
      rows.emplace_back();
      fill.push_back(0);
    } else {
      r = it->second;
      room.erase(it);
    }
    rows[r].push_back(i);
    fill[r] += n;
    room.insert({cap - fill[r], r});
  }
  std::vector<size_t> order(rows.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return fill[a] < fill[b]; });
  std::vector<PackedGroup> out;
  for (size_t g = 0; g < order.size(); g += size_t(batch_size)) {
    PackedGroup group;
    for (size_t k = g; k < std::min(order.size(), g + size_t(batch_size)); ++k) group.push_back(rows[order[k]]);
    out.push_back(std::move(group));
  }
  return out;
}

Batch make_packed_batch(const Dataset& ds, const PackedGroup& rows, int64_t max_seq_length, bool warn) {
  LMT_CHECK(!rows.empty(), "[data] empty packed batch");
  LMT_CHECK(max_seq_length >= 2, "[data] max_seq_length must be at least 2, got ", max_seq_length);
  const int64_t cap = max_seq_length - 1;
  int64_t widest = 0, longest = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    int64_t f = 0;
    for (size_t i : rows[r]) {
      const Example& ex = ds.examples.at(i);
      f += packed_fill(ex, max_seq_length);
      longest = std::max<int64_t>(longest, int64_t(ex.tokens.size()));
    }
    LMT_CHECK(f <= cap, "[data] packed row ", r, " holds ", f, " input tokens, more than max_seq_length - 1 = ", cap);
    widest = std::max(widest, f);
  }
  if (longest > max_seq_length && warn)
    std::printf(
        "[WARNING] Some sequences are longer than %lld tokens. The longest sentence %lld will be truncated "
        "to %lld. Consider pre-splitting your data to save memory.\n",
        (long long)max_seq_length, (long long)longest, (long long)max_seq_length);
  const int64_t pad_to = 32;
  const int64_t B = int64_t(rows.size()),
                T = std::max<int64_t>(1, std::min(pad_to * ((widest + pad_to - 1) / pad_to), cap));
  std::vector<int32_t> in(size_t(B * T), 0), tg(size_t(B * T), -1), pos(size_t(B * T), 0), seg(size_t(B * T), 0);
  Batch b;
  for (int64_t r = 0; r < B; ++r) {
    int64_t at = 0;
    int32_t id = 0;
    for (size_t i : rows[size_t(r)]) {
      const Example& ex = ds.examples[i];
      const int64_t len = std::min<int64_t>(int64_t(ex.tokens.size()), max_seq_length);
      b.indices.push_back(i);
      b.lengths.push_back(len);
      b.offsets.push_back(ex.offset);
      for (int64_t j = 0; j + 1 < len; ++j, ++at) {
        const size_t k = size_t(r * T + at);
        in[k] = ex.tokens[size_t(j)];
        pos[k] = int32_t(j);
        seg[k] = id;
        if (j + 1 >= ex.offset) {
          tg[k] = ex.tokens[size_t(j + 1)];
          ++b.n_tokens;
        }
      }
      if (len > 1) ++id;
    }
    for (int32_t p = 0; at < T; ++at, ++p) {  // the padding: one more segment of its own
      pos[size_t(r * T + at)] = p;
      seg[size_t(r * T + at)] = id;
    }
  }
  b.inputs = Tensor::from_i32(in, {B, T});
  b.targets = Tensor::from_i32(tg, {B, T});
  b.positions = Tensor::from_i32(pos, {B, T});
  b.segments = Tensor::from_i32(seg, {B, T});
  return b;
}

std::vector<size_t> batch_order(size_t n, uint64_t seed, int64_t pass) {
  std::vector<size_t> p(n);
  std::iota(p.begin(), p.end(), size_t(0));
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + uint64_t(pass) * 0xBF58476D1CE4E5B9ull + 1);
  for (size_t i = n; i > 1; --i) std::swap(p[i - 1], p[size_t(rng() % i)]);
  return p;
}

std::string preview_example(const Example& ex, const Tokenizer& tok, bool color) {
  size_t off = size_t(std::clamp<int64_t>(ex.offset, 1, int64_t(ex.tokens.size())));
  std::vector<int32_t> head(ex.tokens.begin(), ex.tokens.begin() + long(off));
  std::vector<int32_t> tail(ex.tokens.begin() + long(off), ex.tokens.end());
  std::string open = color ? "\x1b[1;32m" : "<<<", close = color ? "\x1b[0m" : ">>>";
  return tok.decode(head) + open + tok.decode(tail) + close;
}

}  // namespace lmtune::train
