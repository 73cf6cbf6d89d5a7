// Jinja lexer: text/tag splitting with jinja2's whitespace rules, then expression tokens
// (names, string and number literals, operators) inside {{ }} and {% %}.
#include "tokenizer/jinja/lexer.h"
#include <cctype>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace lmtune::jinja {

SourceMap::SourceMap(const std::string& source) : source_(&source) {
  line_starts_.push_back(0);
  for (size_t k = 0; k < source.size(); ++k)
    if (source[k] == '\n') line_starts_.push_back(int(k + 1));
}

std::string SourceMap::where(int pos) const {
  auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), pos);
  int line = int(it - line_starts_.begin());
  int col = pos - line_starts_[line - 1] + 1;
  return str_cat("line ", line, ", column ", col);
}

std::string normalize_source(const std::string& source) {
  std::string out;
  out.reserve(source.size());
  for (size_t k = 0; k < source.size(); ++k) {
    if (source[k] == '\r') {
      out += '\n';
      if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
    } else {
      out += source[k];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xc0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += char(0xe0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3f));
    out += char(0x80 | (cp & 0x3f));
  } else {
    out += char(0xf0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3f));
    out += char(0x80 | ((cp >> 6) & 0x3f));
    out += char(0x80 | (cp & 0x3f));
  }
}

class Lexer {
 public:
  Lexer(const std::string& src, const LexOptions& opt) : src_(src), opt_(opt), map_(src) {}

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;
    while (pos < src_.size()) {
      size_t tag = find_tag(pos);
      if (tag == std::string::npos) {
        emit_text(src_.substr(pos), int(pos));
        break;
      }
      char kind = src_[tag + 1];  // '{', '%' or '#'
      char sign = tag + 2 < src_.size() ? src_[tag + 2] : 0;
      std::string text = src_.substr(pos, tag - pos);
      text = strip_before(std::move(text), sign, kind != '{', line_starting);
      emit_text(std::move(text), int(pos));
      size_t body = tag + 2 + (sign == '-' || sign == '+');
      size_t end;
      if (kind == '#') {
        end = lex_comment(tag, body);
      } else if (kind == '%' && is_raw_begin(body, end)) {
        end = lex_raw(end);
      } else {
        end = lex_tag(tag, body, kind == '%');
      }
      line_starting = end > 0 && src_[end - 1] == '\n';
      pos = end;
    }
    toks_.push_back(Token{Tok::Eof, "", 0, 0, int(src_.size())});
    return std::move(toks_);
  }

 private:
  [[noreturn]] void error(size_t pos, const std::string& msg) const {
    fail("[jinja] ", map_.where(int(pos)), ": ", msg);
  }

  size_t find_tag(size_t from) const {
    for (size_t k = src_.find('{', from); k != std::string::npos; k = src_.find('{', k + 1)) {
      if (k + 1 < src_.size() && (src_[k + 1] == '{' || src_[k + 1] == '%' || src_[k + 1] == '#')) return k;
    }
    return std::string::npos;
  }

  // jinja2's OptionalLStrip: '-' strips all trailing whitespace; otherwise lstrip_blocks removes
  // the indentation of a block or comment tag that starts a line.
  std::string strip_before(std::string text, char sign, bool block_like, bool line_starting) const {
    if (sign == '-') {
      size_t e = text.size();
      while (e > 0 && is_space(text[e - 1])) --e;
      text.resize(e);
    } else if (sign != '+' && opt_.lstrip_blocks && block_like) {
      size_t nl = text.rfind('\n');
      size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
      if (l_pos > 0 || line_starting) {
        bool all_ws = l_pos < text.size();
        for (size_t k = l_pos; k < text.size(); ++k) all_ws = all_ws && is_space(text[k]);
        if (all_ws) text.resize(l_pos);
      }
    }
    return text;
  }

  void emit_text(std::string text, int pos) {
    if (text.empty()) return;
    toks_.push_back(Token{Tok::Text, std::move(text), 0, 0, pos});
  }

  // After a closing delimiter at `after`: '-' eats following whitespace, '+' keeps it,
  // otherwise trim_blocks eats one newline (blocks and comments only).
  size_t after_close(size_t after, char sign, bool block_like) const {
    if (sign == '-') {
      while (after < src_.size() && is_space(src_[after])) ++after;
    } else if (sign != '+' && block_like && opt_.trim_blocks && after < src_.size() && src_[after] == '\n') {
      ++after;
    }
    return after;
  }

  size_t lex_comment(size_t tag, size_t body) {
    size_t close = src_.find("#}", body);
    if (close == std::string::npos) error(tag, "missing end of comment tag");
    char sign = close > body && (src_[close - 1] == '-' || src_[close - 1] == '+') ? src_[close - 1] : 0;
    return after_close(close + 2, sign, true);
  }

  bool is_raw_begin(size_t body, size_t& end) const {
    size_t k = body;
    while (k < src_.size() && is_space(src_[k])) ++k;
    if (src_.compare(k, 3, "raw") != 0 || (k + 3 < src_.size() && is_name_char(src_[k + 3]))) return false;
    k += 3;
    while (k < src_.size() && is_space(src_[k])) ++k;
    if (src_.compare(k, 3, "-%}") == 0) {
      end = after_close(k + 3, '-', true);
      return true;
    }
    if (src_.compare(k, 2, "%}") == 0) {
      end = k + 2;  // jinja2 applies no trim_blocks after {% raw %}
      return true;
    }
    return false;
  }

  size_t lex_raw(size_t start) {
    for (size_t k = src_.find("{%", start); k != std::string::npos; k = src_.find("{%", k + 1)) {
      size_t p = k + 2;
      char sign = p < src_.size() && (src_[p] == '-' || src_[p] == '+') ? src_[p++] : 0;
      while (p < src_.size() && is_space(src_[p])) ++p;
      if (src_.compare(p, 6, "endraw") != 0) continue;
      p += 6;
      while (p < src_.size() && is_space(src_[p])) ++p;
      char close_sign = 0;
      if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) close_sign = src_[p++];
      if (src_.compare(p, 2, "%}") != 0) continue;
      bool line_starting = start > 0 && src_[start - 1] == '\n';
      emit_text(strip_before(src_.substr(start, k - start), sign, true, line_starting), int(start));
      return after_close(p + 2, close_sign, true);
    }
    error(start, "missing end of raw directive");
  }

  size_t lex_tag(size_t tag, size_t body, bool block) {
    toks_.push_back(Token{block ? Tok::BlockBegin : Tok::VarBegin, "", 0, 0, int(tag)});
    const char close = block ? '%' : '}';
    std::vector<char> balance;
    size_t k = body;
    while (true) {
      while (k < src_.size() && is_space(src_[k])) ++k;
      if (k >= src_.size()) error(tag, block ? "unexpected end of template, missing '%}'" : "missing '}}'");
      if (balance.empty()) {
        char sign = src_[k];
        size_t c = (sign == '-' || sign == '+') ? k + 1 : k;
        if (c + 1 < src_.size() && src_[c] == close && src_[c + 1] == '}' && (c == k || sign == '-' || block)) {
          toks_.push_back(Token{block ? Tok::BlockEnd : Tok::VarEnd, "", 0, 0, int(k)});
          return after_close(c + 2, c == k ? 0 : sign, block);
        }
      }
      k = lex_operand(k, balance);
    }
  }

  size_t lex_operand(size_t k, std::vector<char>& balance) {
    char c = src_[k];
    if (is_name_start(c)) {
      size_t e = k;
      while (e < src_.size() && is_name_char(src_[e])) ++e;
      toks_.push_back(Token{Tok::Name, src_.substr(k, e - k), 0, 0, int(k)});
      return e;
    }
    if (c == '\'' || c == '"') return lex_string(k);
    if (is_digit(c)) return lex_number(k);
    static const char* kOps2[] = {"//", "**", "==", "!=", "<=", ">="};
    for (const char* op : kOps2) {
      if (src_.compare(k, 2, op) == 0) {
        toks_.push_back(Token{Tok::Op, op, 0, 0, int(k)});
        return k + 2;
      }
    }
    if (std::strchr("+-/*%~<>=()[]{},.:|;", c) == nullptr) error(k, str_cat("unexpected char '", c, "'"));
    if (c == '(' || c == '[' || c == '{') balance.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
    if (c == ')' || c == ']' || c == '}') {
      if (balance.empty()) error(k, str_cat("unexpected '", c, "'"));
      if (balance.back() != c) error(k, str_cat("unexpected '", c, "', expected '", balance.back(), "'"));
      balance.pop_back();
    }
    toks_.push_back(Token{Tok::Op, std::string(1, c), 0, 0, int(k)});
    return k + 1;
  }

  size_t lex_string(size_t start) {
    char q = src_[start];
    std::string out;
    size_t k = start + 1;
    while (true) {
      if (k >= src_.size()) error(start, "unterminated string");
      char c = src_[k];
      if (c == q) break;
      if (c != '\\') {
        out += c;
        ++k;
        continue;
      }
      if (k + 1 >= src_.size()) error(start, "unterminated string");
      char e = src_[k + 1];
      k += 2;
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'v': out += '\v'; break;
        case '\n': break;
        case 'x':
        case 'u':
        case 'U': {
          size_t n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          if (k + n > src_.size()) error(k, "truncated \\" + std::string(1, e) + " escape");
          for (size_t d = k; d < k + n; ++d)
            if (!std::isxdigit(static_cast<unsigned char>(src_[d])))
              error(k, "\\" + std::string(1, e) + " escape needs " + std::to_string(n) + " hex digits");
          uint32_t cp = uint32_t(std::stoul(src_.substr(k, n), nullptr, 16));
          append_utf8(out, cp);
          k += n;
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            uint32_t cp = uint32_t(e - '0');
            for (int m = 0; m < 2 && k < src_.size() && src_[k] >= '0' && src_[k] <= '7'; ++m)
              cp = cp * 8 + uint32_t(src_[k++] - '0');
            append_utf8(out, cp);
          } else {
            out += '\\';
            out += e;
          }
      }
    }
    toks_.push_back(Token{Tok::String, std::move(out), 0, 0, int(start)});
    return k + 1;
  }

  size_t digits(size_t k) const {
    while (k < src_.size() && (is_digit(src_[k]) || (src_[k] == '_' && k + 1 < src_.size() && is_digit(src_[k + 1]))))
      ++k;
    return k;
  }

  size_t lex_number(size_t start) {
    size_t k = digits(start);
    bool is_float = false;
    // A float needs digits after '.', and not after a '.' (so `x.0.1` stays attribute access).
    bool after_dot = start > 0 && src_[start - 1] == '.';
    if (!after_dot && k + 1 < src_.size() && src_[k] == '.' && is_digit(src_[k + 1])) {
      k = digits(k + 1);
      is_float = true;
    }
    if (!after_dot && k < src_.size() && (src_[k] == 'e' || src_[k] == 'E')) {
      size_t e = k + 1;
      if (e < src_.size() && (src_[e] == '+' || src_[e] == '-')) ++e;
      if (e < src_.size() && is_digit(src_[e])) {
        k = digits(e);
        is_float = true;
      }
    }
    std::string text = src_.substr(start, k - start);
    text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
    Token t{is_float ? Tok::Float : Tok::Int, text, 0, 0, int(start)};
    if (is_float) {
      // As Python's float(): past the range inf, below it 0 or a subnormal (std::stod throws there).
      t.f = std::strtod(text.c_str(), nullptr);
    } else {
      try {
        t.i = std::stoll(text);
      } catch (const std::exception&) {
        error(start, "integer literal out of range: " + text);
      }
    }
    toks_.push_back(std::move(t));
    return k;
  }

  const std::string& src_;
  LexOptions opt_;
  SourceMap map_;
  std::vector<Token> toks_;
};

}  // namespace

std::vector<Token> tokenize(const std::string& source, const LexOptions& opt) { return Lexer(source, opt).run(); }

}  // namespace lmtune::jinja
