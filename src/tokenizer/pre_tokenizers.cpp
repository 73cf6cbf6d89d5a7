// Pre-tokenizers: Split ByteLevel Metaspace Digits Punctuation Whitespace WhitespaceSplit
// CharDelimiterSplit BertPreTokenizer Sequence, following Hugging Face tokenizers' semantics.
#include "core/error.h"
#include "tokenizer/components.h"
#include "tokenizer/pattern.h"
#include "tokenizer/unicode.h"

namespace lmtune::tok {
namespace {

constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Replaces every piece by its split into spans; only the first span keeps at_start.
void split_pieces(std::vector<Piece>& pieces, const Pattern& p, SplitBehavior behavior, bool invert = false) {
  std::vector<Piece> out;
  out.reserve(pieces.size() * 2);
  for (Piece& piece : pieces) {
    std::vector<Span> spans = split_spans(piece.text, p, behavior, invert);
    for (const Span& s : spans)
      out.push_back({piece.text.substr(s.begin, s.end - s.begin), piece.at_start && s.begin == 0});
  }
  pieces = std::move(out);
}

class Split : public PreTokenizer {
 public:
  Split(Pattern p, SplitBehavior b, bool invert) : p_(std::move(p)), b_(b), invert_(invert) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override { split_pieces(pieces, p_, b_, invert_); }

 private:
  Pattern p_;
  SplitBehavior b_;
  bool invert_;
};

class ByteLevel : public PreTokenizer {
 public:
  ByteLevel(bool add_prefix_space, bool use_regex) : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {
    if (use_regex_) re_ = Pattern::regex(kGpt2Pattern);
  }
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    if (add_prefix_space_)
      for (Piece& p : pieces)
        if (p.text.empty() || p.text[0] != ' ') p.text.insert(0, 1, ' ');
    if (use_regex_) split_pieces(pieces, re_, SplitBehavior::kIsolated);
    for (Piece& p : pieces) {
      std::string mapped;
      mapped.reserve(p.text.size() * 2);
      for (unsigned char c : p.text) mapped += byte_to_unicode(c);
      p.text = std::move(mapped);
    }
  }

 private:
  bool add_prefix_space_, use_regex_;
  Pattern re_;
};

enum class Prepend { kAlways, kFirst, kNever };

Prepend parse_prepend_scheme(const nlohmann::json& j) {
  if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
    std::string s = j["prepend_scheme"].get<std::string>();
    if (s == "always") return Prepend::kAlways;
    if (s == "first") return Prepend::kFirst;
    if (s == "never") return Prepend::kNever;
    fail("[tokenizer] Metaspace: unsupported prepend_scheme ", s);
  }
  return j.value("add_prefix_space", true) ? Prepend::kAlways : Prepend::kNever;
}

class Metaspace : public PreTokenizer {
 public:
  Metaspace(std::string replacement, Prepend scheme, bool split)
      : rep_(std::move(replacement)),
        scheme_(scheme),
        split_(split),
        space_(Pattern::literal(" ")),
        rep_pattern_(Pattern::literal(rep_)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (Piece& p : pieces) {
      p.text = space_.replace_all(p.text, rep_);
      bool starts = p.text.compare(0, rep_.size(), rep_) == 0;
      if (!starts && (scheme_ == Prepend::kAlways || (scheme_ == Prepend::kFirst && p.at_start)))
        p.text.insert(0, rep_);
    }
    if (split_) split_pieces(pieces, rep_pattern_, SplitBehavior::kMergedWithNext);
  }

 private:
  std::string rep_;
  Prepend scheme_;
  bool split_;
  Pattern space_, rep_pattern_;
};

class PredicateSplit : public PreTokenizer {
 public:
  PredicateSplit(std::function<bool(uint32_t)> f, SplitBehavior b) : p_(Pattern::predicate(std::move(f))), b_(b) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override { split_pieces(pieces, p_, b_); }

 private:
  Pattern p_;
  SplitBehavior b_;
};

class Sequence : public PreTokenizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PreTokenizer>> items) : items_(std::move(items)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (const auto& p : items_) p->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> items_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j) {
  if (j.is_null()) return nullptr;
  std::string type = component_type(j, "pre_tokenizer");
  if (type == "Split") {
    return std::make_unique<Split>(Pattern::from_json(j.at("pattern"), "Split pre_tokenizer"),
                                   parse_split_behavior(j.at("behavior").get<std::string>()), j.value("invert", false));
  }
  if (type == "ByteLevel")
    return std::make_unique<ByteLevel>(j.value("add_prefix_space", true), j.value("use_regex", true));
  if (type == "Metaspace") {
    std::string rep = j.contains("replacement") ? j["replacement"].get<std::string>() : "\xE2\x96\x81";
    return std::make_unique<Metaspace>(rep, parse_prepend_scheme(j), j.value("split", true));
  }
  if (type == "Digits") {
    return std::make_unique<PredicateSplit>(
        is_numeric, j.value("individual_digits", false) ? SplitBehavior::kIsolated : SplitBehavior::kContiguous);
  }
  if (type == "Punctuation") {
    return std::make_unique<PredicateSplit>(is_punctuation,
                                            parse_split_behavior(j.value("behavior", std::string("Isolated"))));
  }
  if (type == "WhitespaceSplit") return std::make_unique<PredicateSplit>(is_whitespace, SplitBehavior::kRemoved);
  if (type == "Whitespace")
    return std::make_unique<Split>(Pattern::regex(R"(\w+|[^\w\s]+)"), SplitBehavior::kRemoved, true);
  if (type == "CharDelimiterSplit") {
    std::string d = j.at("delimiter").get<std::string>();
    size_t i = 0;
    uint32_t cp = d.empty() ? 0 : next_code_point(d, i);
    return std::make_unique<PredicateSplit>([cp](uint32_t c) { return c == cp; }, SplitBehavior::kRemoved);
  }
  if (type == "BertPreTokenizer") {
    std::vector<std::unique_ptr<PreTokenizer>> items;
    items.push_back(std::make_unique<PredicateSplit>(is_whitespace, SplitBehavior::kRemoved));
    items.push_back(std::make_unique<PredicateSplit>(is_punctuation, SplitBehavior::kIsolated));
    return std::make_unique<Sequence>(std::move(items));
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> items;
    for (const auto& item : j.at("pretokenizers"))
      if (auto p = make_pre_tokenizer(item)) items.push_back(std::move(p));
    return std::make_unique<Sequence>(std::move(items));
  }
  fail("[tokenizer] unsupported pre_tokenizer type ", type);
}

}  // namespace lmtune::tok
