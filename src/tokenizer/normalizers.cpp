// Normalizers: NFC NFKC NFD NFKD Lowercase Strip StripAccents Prepend Replace Sequence.
#include <unicode/uchar.h>

#include "core/error.h"
#include "tokenizer/components.h"
#include "tokenizer/pattern.h"
#include "tokenizer/unicode.h"

namespace lmtune::tok {
namespace {

class UnicodeForm : public Normalizer {
 public:
  explicit UnicodeForm(std::string (*f)(std::string_view)) : f_(f) {}
  std::string normalize(std::string s) const override { return f_(s); }

 private:
  std::string (*f_)(std::string_view);
};

class Lowercase : public Normalizer {
 public:
  std::string normalize(std::string s) const override { return to_lower(s); }
};

class Strip : public Normalizer {
 public:
  Strip(bool left, bool right) : left_(left), right_(right) {}
  std::string normalize(std::string s) const override {
    size_t b = 0, e = s.size();
    if (left_) {
      while (b < e) {
        size_t i = b;
        if (!is_whitespace(next_code_point(s, i))) break;
        b = i;
      }
    }
    if (right_) {
      while (e > b) {
        size_t k = e - 1;
        while (k > b && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
        size_t i = k;
        if (!is_whitespace(next_code_point(s, i))) break;
        e = k;
      }
    }
    return s.substr(b, e - b);
  }

 private:
  bool left_, right_;
};

class StripAccents : public Normalizer {
 public:
  std::string normalize(std::string s) const override {
    std::string out;
    size_t i = 0;
    while (i < s.size()) {
      uint32_t cp = next_code_point(s, i);
      if (u_charType(static_cast<UChar32>(cp)) != U_NON_SPACING_MARK) append_utf8(out, cp);
    }
    return out;
  }
};

class Prepend : public Normalizer {
 public:
  explicit Prepend(std::string p) : p_(std::move(p)) {}
  std::string normalize(std::string s) const override { return s.empty() ? s : p_ + s; }

 private:
  std::string p_;
};

class Replace : public Normalizer {
 public:
  Replace(Pattern p, std::string content) : p_(std::move(p)), content_(std::move(content)) {}
  std::string normalize(std::string s) const override { return p_.replace_all(s, content_); }

 private:
  Pattern p_;
  std::string content_;
};

class Sequence : public Normalizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<Normalizer>> items) : items_(std::move(items)) {}
  std::string normalize(std::string s) const override {
    for (const auto& n : items_) s = n->normalize(std::move(s));
    return s;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> items_;
};

}  // namespace

std::string component_type(const nlohmann::json& j, const char* kind) {
  LMT_CHECK(j.is_object() && j.contains("type") && j["type"].is_string(), "[tokenizer] ", kind,
            " without a \"type\": ", j.dump().substr(0, 200));
  return j["type"].get<std::string>();
}

std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j) {
  if (j.is_null()) return nullptr;
  std::string type = component_type(j, "normalizer");
  if (type == "NFC") return std::make_unique<UnicodeForm>(nfc);
  if (type == "NFKC") return std::make_unique<UnicodeForm>(nfkc);
  if (type == "NFD") return std::make_unique<UnicodeForm>(nfd);
  if (type == "NFKD") return std::make_unique<UnicodeForm>(nfkd);
  if (type == "Lowercase") return std::make_unique<Lowercase>();
  if (type == "StripAccents") return std::make_unique<StripAccents>();
  if (type == "Strip") return std::make_unique<Strip>(j.value("strip_left", true), j.value("strip_right", true));
  if (type == "Prepend") return std::make_unique<Prepend>(j.at("prepend").get<std::string>());
  if (type == "Replace")
    return std::make_unique<Replace>(Pattern::from_json(j.at("pattern"), "Replace normalizer"),
                                     j.at("content").get<std::string>());
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> items;
    for (const auto& item : j.at("normalizers"))
      if (auto n = make_normalizer(item)) items.push_back(std::move(n));
    return std::make_unique<Sequence>(std::move(items));
  }
  fail("[tokenizer] unsupported normalizer type ", type);
}

}  // namespace lmtune::tok
