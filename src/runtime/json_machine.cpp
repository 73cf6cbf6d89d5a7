// The automaton's byte step: one frame per open value (object, array, string, number, literal,
// forced sequence); a frame that cannot take a byte but may end (a number, a literal that is a
// prefix of another) pops and hands the byte to its parent. Strings are checked as UTF-8.
#include "runtime/json_schema.h"

#include <algorithm>

namespace lmtune {

namespace {

enum Kind : uint8_t { k_value, k_object, k_object_any, k_array, k_string, k_number, k_literal, k_sequence, k_choice };
enum ObjPhase : uint8_t { o_open, o_first, o_key, o_colon, o_after, o_next };
enum StrPhase : uint8_t { s_open, s_body, s_escape, s_utf8 };
enum NumPhase : uint8_t { n_start, n_minus, n_zero, n_int, n_dot, n_frac, n_e, n_esign, n_exp };

const SchemaNode* any_node(bool python) {
  static const SchemaNode nodes[2] = {[] {
                                        SchemaNode x;
                                        for (const char* p = "{[\"-0123456789tfn"; *p; ++p) x.first[uint8_t(*p)] = true;
                                        return x;
                                      }(),
                                      [] {
                                        SchemaNode x;
                                        x.python = true;
                                        for (const char* p = "{[\"-0123456789TFN"; *p; ++p) x.first[uint8_t(*p)] = true;
                                        return x;
                                      }()};
  return &nodes[python];
}

const SchemaNode* true_false_null(bool python) {
  static const SchemaNode nodes[2] = {[] {
                                        SchemaNode x;
                                        x.kind = SchemaNode::Kind::literal;
                                        x.literals = {"true", "false", "null"};
                                        return x;
                                      }(),
                                      [] {
                                        SchemaNode x;
                                        x.kind = SchemaNode::Kind::literal;
                                        x.python = true;
                                        x.literals = {"True", "False", "None"};
                                        return x;
                                      }()};
  return &nodes[python];
}

uint64_t all_of(size_t n) { return n >= 64 ? ~uint64_t(0) : (uint64_t(1) << n) - 1; }

bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

bool number_accepts(uint8_t phase) { return phase == n_zero || phase == n_int || phase == n_frac || phase == n_exp; }

}  // namespace

JsonMachine::JsonMachine(const JsonGrammar& g) { push_value(g.root()); }

JsonMachine& JsonMachine::operator=(const JsonMachine& o) {
  n_ = o.n_;
  std::copy(o.f_.begin(), o.f_.begin() + n_, f_.begin());
  return *this;
}

void JsonMachine::push_value(const SchemaNode* node) { f_[size_t(n_++)] = Frame{node, 0, 0, 0, k_value, 0, 0, 0, 0}; }

void JsonMachine::pop() {
  --n_;
  // A forced sequence whose last part just closed is closed too.
  while (n_ > 0 && f_[size_t(n_ - 1)].kind == k_sequence &&
         size_t(f_[size_t(n_ - 1)].a) == f_[size_t(n_ - 1)].node->parts.size())
    --n_;
}

uint64_t JsonMachine::key_candidates(const SchemaNode* node, int32_t pos) const {
  uint64_t m = 0;
  for (size_t i = size_t(pos); i < node->keys.size(); ++i) {
    m |= uint64_t(1) << i;
    if (node->required[i]) break;  // a required property may not be skipped
  }
  return m;
}

bool JsonMachine::feed(uint8_t c) {
  for (int guard = 0; guard < int(f_.size()) + 2; ++guard) {
    if (n_ == 0) return false;
    const Step s = step(f_[size_t(n_ - 1)], c);
    if (s != refeed) return s == consumed;
  }
  return false;
}

bool JsonMachine::feed(const std::string& bytes) {
  for (char c : bytes)
    if (!feed(uint8_t(c))) return false;
  return true;
}

bool JsonMachine::can_end() const {
  JsonMachine m(*this);
  while (m.n_ > 0) {
    const Frame& t = m.f_[size_t(m.n_ - 1)];
    bool ends = t.kind == k_number && number_accepts(t.phase);
    if (t.kind == k_literal)
      for (size_t i = 0; i < t.node->literals.size(); ++i)
        if ((t.mask >> i & 1) && t.node->literals[i].size() == size_t(t.a)) ends = true;
    if (!ends) return false;
    m.pop();
  }
  return true;
}

bool JsonMachine::in_plain_string(int64_t* room) const {
  if (n_ == 0) return false;
  const Frame& t = f_[size_t(n_ - 1)];
  if (t.kind != k_string || t.phase != s_body) return false;
  const int64_t max = t.node->kind == SchemaNode::Kind::string ? t.node->max_length : -1;
  *room = max < 0 ? -1 : max - t.a;
  return true;
}

bool JsonMachine::in_forced_literal() const {
  if (n_ == 0) return false;
  const Frame& t = f_[size_t(n_ - 1)];
  const size_t part = t.kind == k_sequence ? size_t(t.a) : 0;
  const bool seq = t.kind == k_sequence || (t.kind == k_value && t.node->kind == SchemaNode::Kind::sequence);
  return seq && part < t.node->parts.size() && !t.node->parts[part];
}

JsonMachine::Step JsonMachine::step(Frame& f, uint8_t c) {
  const SchemaNode* nd = f.node;
  const bool full = size_t(n_) >= f_.size();
  switch (f.kind) {
    case k_value: {
      if (nd->kwargs) {  // keyword arguments may be empty: no first byte to check
        f = Frame{nd, 0, 0, 0, k_object, o_first, 0, 0, 0};
        return refeed;
      }
      if (!nd->first[c]) return reject;
      using K = SchemaNode::Kind;
      switch (nd->kind) {
        case K::any:
          if (c == '{' || c == '[') {
            if (n_ > JsonGrammar::kMaxDepth) return reject;
            f = Frame{
                c == '{' ? nd : any_node(nd->python), 0, 0, 0, uint8_t(c == '{' ? k_object_any : k_array), 0, 0, 0, 0};
          } else if (c == '"') {
            f = Frame{any_node(nd->python), 0, 0, 0, k_string, s_open, 0, 0, 0};
          } else if (std::string_view("tfnTFN").find(char(c)) != std::string_view::npos) {
            f = Frame{true_false_null(nd->python), all_of(3), 0, 0, k_literal, 0, 0, 0, 0};
          } else {
            f = Frame{any_node(nd->python), 0, 0, 0, k_number, n_start, 0, 0, 0};
          }
          return refeed;
        case K::object:
          if (n_ > JsonGrammar::kMaxDepth) return reject;
          f = Frame{nd, 0, 0, 0, k_object, o_open, 0, 0, 0};
          return refeed;
        case K::array:
          if (n_ > JsonGrammar::kMaxDepth) return reject;
          f = Frame{nd, 0, 0, 0, k_array, o_open, 0, 0, 0};
          return refeed;
        case K::string: f = Frame{nd, 0, 0, 0, k_string, s_open, 0, 0, 0}; return refeed;
        case K::number:
        case K::integer: f = Frame{nd, 0, 0, 0, k_number, n_start, 0, 0, 0}; return refeed;
        case K::literal: f = Frame{nd, all_of(nd->literals.size()), 0, 0, k_literal, 0, 0, 0, 0}; return refeed;
        case K::choice: f = Frame{nd, all_of(nd->literals.size()), 0, 0, k_choice, 0, 0, 0, 0}; return refeed;
        case K::sequence: f = Frame{nd, 0, 0, 0, k_sequence, 0, 0, 0, 0}; return refeed;
        case K::one_of:
          for (const SchemaNode* b : nd->parts)
            if (b->first[c]) {
              f.node = b;
              return refeed;
            }
          return reject;
      }
      return reject;
    }

    case k_object: {
      auto required_left = [&](int32_t pos) {
        for (size_t i = size_t(pos); i < nd->keys.size(); ++i)
          if (nd->required[i]) return true;
        return false;
      };
      switch (f.phase) {
        case o_open:
          if (c != '{') return reject;
          f.phase = o_first;
          return consumed;
        case o_first:
        case o_next:
          if (nd->kwargs) {  // name=value,...: a key starts here, or the arguments end
            f.mask = key_candidates(nd, f.a);
            for (size_t i = 0; i < nd->keys.size(); ++i)
              if ((f.mask >> i & 1) && uint8_t(nd->keys[i][0]) == c) {
                f.phase = o_key;
                f.b = 0;
                return refeed;
              }
            if (f.phase != o_first || required_left(f.a)) return reject;
            pop();
            return refeed;
          }
          if (c == '}' && f.phase == o_first && !required_left(f.a)) {
            pop();
            return consumed;
          }
          if (c != '"' || !(f.mask = key_candidates(nd, f.a))) return reject;
          f.phase = o_key;
          f.b = 1;
          return consumed;
        case o_key: {
          uint64_t m = 0;
          for (size_t i = 0; i < nd->keys.size(); ++i)
            if ((f.mask >> i & 1) && nd->keys[i].size() > size_t(f.b) && uint8_t(nd->keys[i][size_t(f.b)]) == c)
              m |= uint64_t(1) << i;
          if (!m) return reject;
          f.mask = m;
          ++f.b;
          for (size_t i = 0; i < nd->keys.size(); ++i)
            if ((m >> i & 1) && nd->keys[i].size() == size_t(f.b)) {  // "key" and name= are prefix-free
              f.a = int32_t(i) + 1;
              f.b = int32_t(i);
              f.phase = o_colon;
              if (nd->kwargs) {  // the '=' was part of the key
                if (full) return reject;
                f.phase = o_after;
                push_value(nd->values[i]);
              }
              break;
            }
          return consumed;
        }
        case o_colon:
          if (c != ':' || full) return reject;
          f.phase = o_after;
          push_value(nd->values[size_t(f.b)]);
          return consumed;
        case o_after:
          if (c == ',' && key_candidates(nd, f.a)) {
            f.phase = o_next;
            return consumed;
          }
          if (required_left(f.a)) return reject;
          if (nd->kwargs) {  // the arguments end; the byte is the caller's
            pop();
            return refeed;
          }
          if (c != '}') return reject;
          pop();
          return consumed;
      }
      return reject;
    }

    case k_object_any:
      switch (f.phase) {
        case o_open:
          if (c != '{') return reject;
          f.phase = o_first;
          return consumed;
        case o_first:
        case o_next:
          if (c == '}' && f.phase == o_first) {
            pop();
            return consumed;
          }
          if (c != '"' || full) return reject;
          f.phase = o_colon;
          f_[size_t(n_++)] = Frame{any_node(nd->python), 0, 0, 0, k_string, s_body, 0, 0, 0};
          return consumed;
        case o_colon:
          if (c != ':' || full) return reject;
          f.phase = o_after;
          push_value(any_node(nd->python));
          return consumed;
        case o_after:
          if (c == ',') {
            f.phase = o_next;
            return consumed;
          }
          if (c != '}') return reject;
          pop();
          return consumed;
      }
      return reject;

    case k_array: {
      const SchemaNode* items = nd->kind == SchemaNode::Kind::array ? nd->items : any_node(nd->python);
      const int64_t min = nd->kind == SchemaNode::Kind::array ? nd->min_items : 0;
      const int64_t max = nd->kind == SchemaNode::Kind::array ? nd->max_items : -1;
      switch (f.phase) {
        case o_open:
          if (c != '[') return reject;
          f.phase = o_first;
          return consumed;
        case o_first:
        case o_next:
          if (c == ']' && f.phase == o_first && min == 0) {
            pop();
            return consumed;
          }
          if (!items->first[c] || full || (max >= 0 && f.a >= max)) return reject;
          ++f.a;
          f.phase = o_after;
          push_value(items);
          return refeed;
        case o_after:
          if (c == ',' && (max < 0 || f.a < max)) {
            f.phase = o_next;
            return consumed;
          }
          if (c == ']' && f.a >= min) {
            pop();
            return consumed;
          }
          return reject;
      }
      return reject;
    }

    case k_string: {
      const bool typed = nd->kind == SchemaNode::Kind::string;
      const int64_t min = typed ? nd->min_length : 0, max = typed ? nd->max_length : -1;
      const bool room = max < 0 || f.a < max;
      switch (f.phase) {
        case s_open:
          if (c != '"') return reject;
          f.phase = s_body;
          return consumed;
        case s_body:
          if (c == '"') {
            if (f.a < min) return reject;
            pop();
            return consumed;
          }
          if (!room || c < 0x20) return reject;
          if (c == '\\') {
            f.phase = s_escape;
          } else if (c >= 0x80) {
            // Well-formed UTF-8 only (no overlongs, surrogates or values past U+10FFFF).
            if (c >= 0xC2 && c <= 0xDF) {
              f.rem = 1, f.lo = 0x80, f.hi = 0xBF;
            } else if (c >= 0xE0 && c <= 0xEF) {
              f.rem = 2, f.lo = c == 0xE0 ? 0xA0 : 0x80, f.hi = c == 0xED ? 0x9F : 0xBF;
            } else if (c >= 0xF0 && c <= 0xF4) {
              f.rem = 3, f.lo = c == 0xF0 ? 0x90 : 0x80, f.hi = c == 0xF4 ? 0x8F : 0xBF;
            } else {
              return reject;
            }
            f.phase = s_utf8;
          }
          ++f.a;
          return consumed;
        case s_escape:
          // \uXXXX is left out: it could spell a lone surrogate that strict parsers refuse.
          if (std::string_view("\"\\/bfnrt").find(char(c)) == std::string_view::npos) return reject;
          if (c == '/' && nd->python) return reject;  // Python keeps the backslash of \/
          f.phase = s_body;
          return consumed;
        case s_utf8:
          if (c < f.lo || c > f.hi) return reject;
          f.lo = 0x80, f.hi = 0xBF;
          if (--f.rem == 0) f.phase = s_body;
          return consumed;
      }
      return reject;
    }

    case k_number: {
      const bool integer = nd->kind == SchemaNode::Kind::integer;
      uint8_t next = 0xFF;
      if (is_digit(c)) {
        switch (f.phase) {
          case n_start:
          case n_minus: next = c == '0' ? n_zero : n_int, f.rem = 1; break;
          case n_int:  // 15 integer digits at most: every integer fits an int64 and a double exactly
            if (f.rem < 15) next = n_int, ++f.rem;
            break;
          case n_dot:
          case n_frac: next = n_frac; break;
          case n_e:
          case n_esign:
          case n_exp:  // two exponent digits at most: no number overflows a double
            if (f.b < 2) next = n_exp, ++f.b;
            break;
          default: break;
        }
      } else if (c == '-' && f.phase == n_start) {
        next = n_minus;
      } else if (c == '.' && !integer && (f.phase == n_zero || f.phase == n_int)) {
        next = n_dot;
      } else if ((c == 'e' || c == 'E') && !integer && (f.phase == n_zero || f.phase == n_int || f.phase == n_frac)) {
        next = n_e;
      } else if ((c == '+' || c == '-') && f.phase == n_e) {
        next = n_esign;
      }
      if (next != 0xFF && f.a < JsonGrammar::kMaxNumberBytes) {
        f.phase = next;
        ++f.a;
        return consumed;
      }
      if (!number_accepts(f.phase)) return reject;
      pop();
      return refeed;
    }

    case k_literal:
    case k_choice: {
      const auto& lits = nd->literals;
      uint64_t m = 0;
      bool complete = false;
      for (size_t i = 0; i < lits.size(); ++i) {
        if (!(f.mask >> i & 1)) continue;
        if (lits[i].size() == size_t(f.a)) complete = true;
        if (lits[i].size() > size_t(f.a) && uint8_t(lits[i][size_t(f.a)]) == c) m |= uint64_t(1) << i;
      }
      if (!m) {
        if (!complete || f.kind == k_choice) return reject;
        pop();  // a literal that is a prefix of another ended here
        return refeed;
      }
      f.mask = m;
      ++f.a;
      bool all_done = true;
      for (size_t i = 0; i < lits.size(); ++i)
        if (m >> i & 1) {
          if (lits[i].size() != size_t(f.a)) all_done = false;
          if (f.kind == k_choice && lits[i].size() == size_t(f.a)) {  // choices are prefix-free
            f = Frame{nd->values[i], 0, 0, 0, k_value, 0, 0, 0, 0};
            return consumed;
          }
        }
      if (all_done) pop();
      return consumed;
    }

    case k_sequence: {
      const size_t i = size_t(f.a);
      if (i >= nd->parts.size()) {
        pop();
        return refeed;
      }
      if (nd->parts[i]) {
        if (full) return reject;
        ++f.a;
        f.b = 0;
        push_value(nd->parts[i]);
        return refeed;
      }
      const std::string& lit = nd->literals[i];
      if (uint8_t(lit[size_t(f.b)]) != c) return reject;
      if (size_t(++f.b) == lit.size()) {
        ++f.a;
        f.b = 0;
        if (size_t(f.a) == nd->parts.size()) pop();
      }
      return consumed;
    }
  }
  return reject;
}

}  // namespace lmtune
