// PCRE2-backed patterns and the split behaviors of Hugging Face tokenizers (normalizer.rs, pattern.rs).
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/pattern.h"

#include <pcre2.h>

#include <algorithm>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace lmtune::tok {

Regex::Regex(const std::string& pattern) : pattern_(pattern) {
  int err = 0;
  PCRE2_SIZE off = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                                   &err, &off, nullptr);
  if (!code) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof(buf));
    fail("[tokenizer] cannot compile regex ", pattern, " at offset ", off, ": ", reinterpret_cast<char*>(buf));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter when JIT is unavailable
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::for_each_match(std::string_view s, const std::function<void(size_t, size_t)>& f) const {
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  size_t start = 0;
  while (start <= s.size()) {
    int rc =
        pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), start, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      pcre2_match_data_free(md);
      fail("[tokenizer] regex match failed for ", pattern_, " (pcre2 error ", rc, ")");
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t b = ov[0], e = ov[1];
    f(b, e);
    if (e == b) {
      if (e >= s.size()) break;
      start = e + utf8_len(static_cast<unsigned char>(s[e]));
    } else {
      start = e;
    }
  }
  pcre2_match_data_free(md);
}

Pattern Pattern::regex(const std::string& re) {
  Pattern p;
  p.regex_ = std::make_shared<Regex>(re);
  p.kind_ = 0;
  return p;
}

Pattern Pattern::literal(const std::string& s) {
  Pattern p;
  p.literal_ = s;
  p.kind_ = 1;
  return p;
}

Pattern Pattern::predicate(std::function<bool(uint32_t)> f) {
  Pattern p;
  p.predicate_ = std::move(f);
  p.kind_ = 2;
  return p;
}

Pattern Pattern::from_json(const nlohmann::json& j, const std::string& what) {
  LMT_CHECK(j.is_object(), "[tokenizer] ", what, ": pattern must be an object, got ", j.dump());
  if (j.contains("String")) return literal(j.at("String").get<std::string>());
  if (j.contains("Regex")) return regex(j.at("Regex").get<std::string>());
  fail("[tokenizer] ", what, ": unsupported pattern ", j.dump());
}

std::vector<Span> Pattern::find_matches(std::string_view s) const {
  std::vector<Span> out;
  if (s.empty()) {
    out.push_back({0, 0, false});
    return out;
  }
  size_t prev = 0;
  auto add = [&](size_t b, size_t e) {
    if (prev != b) out.push_back({prev, b, false});
    out.push_back({b, e, true});
    prev = e;
  };
  if (kind_ == 0) {
    regex_->for_each_match(s, add);
  } else if (kind_ == 1) {
    if (literal_.empty()) return {{0, s.size(), false}};
    size_t pos = 0;
    while ((pos = s.find(literal_, pos)) != std::string_view::npos) {
      add(pos, pos + literal_.size());
      pos += literal_.size();
    }
  } else {
    size_t i = 0;
    while (i < s.size()) {
      size_t b = i;
      uint32_t cp = next_code_point(s, i);
      if (predicate_(cp)) add(b, i);
    }
  }
  if (prev != s.size()) out.push_back({prev, s.size(), false});
  return out;
}

std::string Pattern::replace_all(std::string_view s, const std::string& content) const {
  std::string out;
  out.reserve(s.size());
  for (const Span& sp : find_matches(s)) {
    if (sp.is_match)
      out += content;
    else
      out.append(s.data() + sp.begin, sp.end - sp.begin);
  }
  return out;
}

SplitBehavior parse_split_behavior(const std::string& name) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  fail("[tokenizer] unsupported split behavior ", name);
}

std::vector<Span> apply_split_behavior(std::vector<Span> m, SplitBehavior behavior) {
  std::vector<Span> acc;
  acc.reserve(m.size());
  switch (behavior) {
    case SplitBehavior::kIsolated: acc = std::move(m); break;
    case SplitBehavior::kRemoved:
      for (const Span& s : m)
        if (!s.is_match) acc.push_back(s);
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool prev_match = false;
      for (const Span& s : m) {
        if (s.is_match && !prev_match) {
          if (!acc.empty())
            acc.back().end = s.end;
          else
            acc.push_back({s.begin, s.end, true});
        } else {
          acc.push_back({s.begin, s.end, false});
        }
        prev_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool prev_match = false;
      for (auto it = m.rbegin(); it != m.rend(); ++it) {
        if (it->is_match && !prev_match) {
          if (!acc.empty())
            acc.back().begin = it->begin;
          else
            acc.push_back({it->begin, it->end, true});
        } else {
          acc.push_back({it->begin, it->end, false});
        }
        prev_match = it->is_match;
      }
      std::reverse(acc.begin(), acc.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool prev_match = false;
      for (const Span& s : m) {
        if (s.is_match == prev_match && !acc.empty())
          acc.back().end = s.end;
        else
          acc.push_back({s.begin, s.end, false});
        prev_match = s.is_match;
      }
      break;
    }
  }
  std::vector<Span> out;
  out.reserve(acc.size());
  for (const Span& s : acc)
    if (s.end > s.begin) out.push_back(s);
  return out;
}

std::vector<Span> split_spans(std::string_view s, const Pattern& p, SplitBehavior behavior, bool invert) {
  std::vector<Span> m = p.find_matches(s);
  if (invert)
    for (Span& sp : m) sp.is_match = !sp.is_match;
  return apply_split_behavior(std::move(m), behavior);
}

}  // namespace lmtune::tok
