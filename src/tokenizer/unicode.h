// UTF-8 helpers and the Unicode properties the tokenizer components need (ICU underneath),
// matching Rust's char predicates and String::from_utf8_lossy as Hugging Face tokenizers use them.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace lmtune::tok {

// Byte length of the UTF-8 character starting with `lead` (1 for a stray continuation byte).
inline size_t utf8_len(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  if ((lead >> 3) == 0x1E) return 4;
  return 1;
}

// Decodes the code point at s[i] and advances i; s must be valid UTF-8.
inline uint32_t next_code_point(std::string_view s, size_t& i) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n = utf8_len(c);
  uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += n;
  return cp;
}

void append_utf8(std::string& out, uint32_t cp);

// Byte offset of the first invalid UTF-8 sequence, or npos when s is valid.
size_t find_invalid_utf8(std::string_view s);

// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);

// Rust char predicates.
bool is_whitespace(uint32_t cp);    // White_Space property
bool is_alphanumeric(uint32_t cp);  // Alphabetic or numeric
bool is_numeric(uint32_t cp);       // general category Nd | Nl | No
bool is_punctuation(uint32_t cp);   // ASCII punctuation or general category P*

std::string nfc(std::string_view s);
std::string nfkc(std::string_view s);
std::string nfd(std::string_view s);
std::string nfkd(std::string_view s);
std::string to_lower(std::string_view s);  // full Unicode lowercase, like str::to_lowercase

}  // namespace lmtune::tok
