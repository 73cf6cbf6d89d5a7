// A DOM builder on nlohmann's SAX events that diverts the root "model" object's "vocab" and
// "merges" into ModelTables. It builds what nlohmann::json::parse builds (the last of repeated keys
// wins, numbers keep their kind) and gives up on anything it does not expect.
#include "tokenizer/tokenizer_json.h"

#include <cstdint>
#include <vector>

namespace lmtune::tok {
namespace {

using nlohmann::json;

class TablesReader : public nlohmann::json_sax<json> {
 public:
  explicit TablesReader(TokenizerJson& out) : out_(out), t_(out.tables) {}

  bool null() override { return value(nullptr); }
  bool boolean(bool v) override { return value(v); }
  bool number_integer(number_integer_t v) override { return number(v, v, static_cast<double>(v)); }
  bool number_unsigned(number_unsigned_t v) override {
    int64_t id = v > uint64_t(INT64_MAX) ? INT64_MAX : static_cast<int64_t>(v);
    return number(v, id, static_cast<double>(v));
  }
  bool number_float(number_float_t v, const string_t&) override {
    return capture_ != kVocabMap && number(v, 0, v);  // an id must be an integer
  }
  bool binary(binary_t&) override { return false; }  // not in JSON text

  bool string(string_t& s) override {
    switch (capture_) {
      case kNone: return value(std::move(s));
      case kVocabMap: return false;  // an id must be an integer
      case kVocabList:
        if (field_ != 0) return false;
        t_.tokens.push_back(s);
        field_ = 1;
        return true;
      case kMerges:
        if (field_ < 0) {  // "a b"
          size_t sp = s.find(' ');
          if (sp == std::string::npos) return false;
          t_.merges.push_back(std::string_view(s).substr(0, sp));
          t_.merges.push_back(std::string_view(s).substr(sp + 1));
          return true;
        }
        if (field_ >= 2) return false;
        t_.merges.push_back(s);
        ++field_;
        return true;
    }
    return false;
  }

  bool key(string_t& k) override {
    if (capture_ == kVocabMap) {
      t_.tokens.push_back(k);  // its id comes next
      return true;
    }
    if (open_.size() == 1 && k == "model") {
      if (seen_model_) return false;  // a repeated key: left to the DOM path
      seen_model_ = next_is_model_ = true;
    } else if (model_open_ && open_.size() == 2 && (k == "vocab" || k == "merges")) {
      held_ = k == "vocab" ? kVocabKey : kMergesKey;
      bool& seen = held_ == kVocabKey ? seen_vocab_ : seen_merges_;
      if (seen) return false;
      seen = true;
      return true;  // kept out of the DOM: the value goes to the tables
    }
    slot_ = &(*open_.back())[k];
    return true;
  }

  bool start_object(std::size_t) override {
    if (capture_ != kNone || held_ == kMergesKey) return false;
    if (held_ == kVocabKey) {
      held_ = kNothing;
      capture_ = kVocabMap;
      t_.vocab = ModelTables::kMap;
      return true;
    }
    bool is_model = next_is_model_;
    open(json::object());
    model_open_ = model_open_ || is_model;
    return true;
  }

  bool end_object() override {
    if (capture_ == kVocabMap) {
      capture_ = kNone;
      return true;
    }
    if (model_open_ && open_.size() == 2) model_open_ = false;
    open_.pop_back();
    return true;
  }

  bool start_array(std::size_t) override {
    if (capture_ == kVocabMap) return false;
    if (capture_ != kNone) {  // an entry: [piece, score] or [a, b]
      if (field_ >= 0) return false;
      field_ = 0;
      return true;
    }
    if (held_ != kNothing) {
      capture_ = held_ == kVocabKey ? kVocabList : kMerges;
      if (held_ == kVocabKey) t_.vocab = ModelTables::kList;
      t_.has_merges = t_.has_merges || held_ == kMergesKey;
      held_ = kNothing;
      return true;
    }
    open(json::array());
    return true;
  }

  bool end_array() override {
    if (capture_ == kNone) {
      open_.pop_back();
      return true;
    }
    if (field_ < 0) {  // the list's own end
      capture_ = kNone;
      return true;
    }
    if (field_ != 2) return false;
    field_ = -1;
    return true;
  }

  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return false;  // the DOM path parses the text again and reports the error as json::parse does
  }

 private:
  enum Capture { kNone, kVocabMap, kVocabList, kMerges };
  enum Held { kNothing, kVocabKey, kMergesKey };

  bool number(json v, int64_t id, double score) {
    switch (capture_) {
      case kNone: return value(std::move(v));
      case kVocabMap: t_.ids.push_back(id); return true;
      case kVocabList:
        if (field_ != 1) return false;
        t_.scores.push_back(score);
        field_ = 2;
        return true;
      case kMerges: return false;
    }
    return false;
  }

  // A scalar for the DOM; refused where the tables wanted something else (e.g. "vocab": null).
  bool value(json&& v) {
    if (capture_ != kNone || held_ != kNothing) return false;
    place(std::move(v));
    return true;
  }

  json* place(json&& v) {
    next_is_model_ = false;
    if (open_.empty()) {
      out_.dom = std::move(v);
      return &out_.dom;
    }
    json& top = *open_.back();
    if (top.is_array()) {
      top.push_back(std::move(v));
      return &top.back();
    }
    *slot_ = std::move(v);
    return slot_;
  }

  void open(json&& container) { open_.push_back(place(std::move(container))); }

  TokenizerJson& out_;
  ModelTables& t_;
  std::vector<json*> open_;  // the DOM's open objects and arrays, outermost first
  json* slot_ = nullptr;     // the member the last key named
  Capture capture_ = kNone;
  int field_ = -1;        // strings / numbers seen of the current [piece, score] or [a, b]; -1 between entries
  Held held_ = kNothing;  // "vocab" or "merges" just named, waiting for its value
  bool next_is_model_ = false, model_open_ = false;
  bool seen_model_ = false, seen_vocab_ = false, seen_merges_ = false;
};

}  // namespace

bool read_tokenizer_json(const std::string& text, TokenizerJson& out) {
  TablesReader reader(out);
  return json::sax_parse(text, &reader);
}

}  // namespace lmtune::tok
