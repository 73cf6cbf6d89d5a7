// Patterns that split text the way Hugging Face tokenizers' Pattern trait does: a PCRE2 regex
// (UTF + UCP, JIT), a literal string or a char predicate, plus the SplitDelimiterBehavior rules.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace lmtune::tok {

// [begin, end) byte span of a piece and whether it is a pattern match.
struct Span {
  size_t begin, end;
  bool is_match;
};

class Regex {
 public:
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Calls f(begin, end) for each successive non-overlapping match in s (valid UTF-8).
  void for_each_match(std::string_view s, const std::function<void(size_t, size_t)>& f) const;
  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*
};

class Pattern {
 public:
  static Pattern regex(const std::string& re);
  static Pattern literal(const std::string& s);
  static Pattern predicate(std::function<bool(uint32_t)> f);
  // {"String": "..."} or {"Regex": "..."} as tokenizer.json writes them; `what` names the component.
  static Pattern from_json(const nlohmann::json& j, const std::string& what);

  // Covers all of s with alternating match / non-match spans (one non-match span for empty s).
  std::vector<Span> find_matches(std::string_view s) const;
  // Replaces every match with `content`.
  std::string replace_all(std::string_view s, const std::string& content) const;

 private:
  std::shared_ptr<Regex> regex_;
  std::string literal_;
  std::function<bool(uint32_t)> predicate_;
  int kind_ = 0;  // 0 regex, 1 literal, 2 predicate
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
SplitBehavior parse_split_behavior(const std::string& name);

// Applies the behavior to spans and returns the kept non-empty pieces as [begin, end) spans.
std::vector<Span> apply_split_behavior(std::vector<Span> spans, SplitBehavior behavior);

// Pieces of s split by pattern with behavior; `invert` swaps match and non-match first.
std::vector<Span> split_spans(std::string_view s, const Pattern& p, SplitBehavior behavior, bool invert = false);

}  // namespace lmtune::tok
