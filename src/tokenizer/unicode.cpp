// UTF-8 helpers and Unicode normalization / properties through ICU's C API.
#include "tokenizer/unicode.h"

#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include <vector>

#include "core/error.h"

namespace lmtune::tok {

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

namespace {

// Length of the valid UTF-8 sequence at s[i] (>0), or minus the length of its maximal
// invalid subpart (the bytes that began a valid sequence before it broke off, at least 1).
long scan_sequence(std::string_view s, size_t i) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = b(i);
  if (c < 0x80) return 1;
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 2;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 3;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  size_t k = 1;
  for (; k <= need; ++k) {
    if (i + k >= s.size()) return -static_cast<long>(k);
    unsigned char x = b(i + k);
    unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (x < l || x > h) return -static_cast<long>(k);
  }
  return static_cast<long>(need + 1);
}

std::u16string to_u16(std::string_view s) {
  std::u16string out(s.size() + 1, u'\0');
  int32_t len = 0;
  UErrorCode err = U_ZERO_ERROR;
  u_strFromUTF8(reinterpret_cast<UChar*>(out.data()), static_cast<int32_t>(out.size()), &len, s.data(),
                static_cast<int32_t>(s.size()), &err);
  LMT_CHECK(U_SUCCESS(err), "[tokenizer] UTF-8 to UTF-16 conversion failed: ", u_errorName(err));
  out.resize(len);
  return out;
}

std::string from_u16(const std::u16string& s) {
  std::string out(s.size() * 3 + 1, '\0');
  int32_t len = 0;
  UErrorCode err = U_ZERO_ERROR;
  u_strToUTF8(out.data(), static_cast<int32_t>(out.size()), &len, reinterpret_cast<const UChar*>(s.data()),
              static_cast<int32_t>(s.size()), &err);
  LMT_CHECK(U_SUCCESS(err), "[tokenizer] UTF-16 to UTF-8 conversion failed: ", u_errorName(err));
  out.resize(len);
  return out;
}

bool is_ascii(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

std::string normalize_with(const UNormalizer2* n, std::string_view s) {
  if (is_ascii(s)) return std::string(s);  // ASCII is stable under every normalization form
  std::u16string in = to_u16(s);
  UErrorCode err = U_ZERO_ERROR;
  int32_t cap = static_cast<int32_t>(in.size() * 3 + 16);
  std::u16string out(cap, u'\0');
  int32_t len = unorm2_normalize(n, reinterpret_cast<const UChar*>(in.data()), static_cast<int32_t>(in.size()),
                                 reinterpret_cast<UChar*>(out.data()), cap, &err);
  if (err == U_BUFFER_OVERFLOW_ERROR) {
    err = U_ZERO_ERROR;
    out.assign(len, u'\0');
    len = unorm2_normalize(n, reinterpret_cast<const UChar*>(in.data()), static_cast<int32_t>(in.size()),
                           reinterpret_cast<UChar*>(out.data()), len, &err);
  }
  LMT_CHECK(U_SUCCESS(err), "[tokenizer] unicode normalization failed: ", u_errorName(err));
  out.resize(len);
  return from_u16(out);
}

const UNormalizer2* instance(const UNormalizer2* (*get)(UErrorCode*)) {
  UErrorCode err = U_ZERO_ERROR;
  const UNormalizer2* n = get(&err);
  LMT_CHECK(U_SUCCESS(err), "[tokenizer] ICU normalizer unavailable: ", u_errorName(err));
  return n;
}

}  // namespace

size_t find_invalid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    long n = scan_sequence(s, i);
    if (n < 0) return i;
    i += static_cast<size_t>(n);
  }
  return std::string_view::npos;
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    long n = scan_sequence(s, i);
    if (n > 0) {
      out.append(s.data() + i, static_cast<size_t>(n));
      i += static_cast<size_t>(n);
    } else {
      out += "\xEF\xBF\xBD";
      i += static_cast<size_t>(-n);
    }
  }
  return out;
}

bool is_whitespace(uint32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  return u_hasBinaryProperty(static_cast<UChar32>(cp), UCHAR_WHITE_SPACE);
}

bool is_numeric(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  int8_t t = u_charType(static_cast<UChar32>(cp));
  return t == U_DECIMAL_DIGIT_NUMBER || t == U_LETTER_NUMBER || t == U_OTHER_NUMBER;
}

bool is_alphanumeric(uint32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z');
  return u_hasBinaryProperty(static_cast<UChar32>(cp), UCHAR_ALPHABETIC) || is_numeric(cp);
}

bool is_punctuation(uint32_t cp) {
  if (cp < 0x80)
    return (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40) || (cp >= 0x5B && cp <= 0x60) ||
           (cp >= 0x7B && cp <= 0x7E);
  // HF tokenizers' Punctuation uses the unicode_categories crate, whose tables are Unicode 8.0:
  // later punctuation is not punctuation there, and two characters kept their old category.
  if (cp == 0x166D || cp == 0x111C9) return true;
  if (!u_ispunct(static_cast<UChar32>(cp))) return false;
  UVersionInfo age;
  u_charAge(static_cast<UChar32>(cp), age);
  return age[0] < 8 || (age[0] == 8 && age[1] == 0);
}

std::string nfc(std::string_view s) { return normalize_with(instance(unorm2_getNFCInstance), s); }
std::string nfkc(std::string_view s) { return normalize_with(instance(unorm2_getNFKCInstance), s); }
std::string nfd(std::string_view s) { return normalize_with(instance(unorm2_getNFDInstance), s); }
std::string nfkd(std::string_view s) { return normalize_with(instance(unorm2_getNFKDInstance), s); }

// Character by character (char::to_lowercase, no final-sigma context), as HF's Lowercase does.
std::string to_lower(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    size_t b = i;
    uint32_t cp = next_code_point(s, i);
    if (cp < 0x80) {
      out += static_cast<char>(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
      continue;
    }
    std::u16string in = to_u16(s.substr(b, i - b));
    UErrorCode err = U_ZERO_ERROR;
    UChar buf[16];
    int32_t len =
        u_strToLower(buf, 16, reinterpret_cast<const UChar*>(in.data()), static_cast<int32_t>(in.size()), "", &err);
    LMT_CHECK(U_SUCCESS(err), "[tokenizer] lowercase failed: ", u_errorName(err));
    out += from_u16(std::u16string(reinterpret_cast<const char16_t*>(buf), len));
  }
  return out;
}

}  // namespace lmtune::tok
