// Built-in filters (trim, tojson, map, select, default, join, indent, ...) and tests (defined,
// none, string, mapping, divisibleby, ...), with jinja2's argument names and defaults;
// tojson is Hugging Face's json.dumps(ensure_ascii=False) override.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/evaluator.h"
#include "tokenizer/jinja/limits.h"

namespace lmtune::jinja {
namespace {

const Value kNoValue;
const Value kNone = Value::none();

std::string lower_ascii(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
  return s;
}

// jinja2's make_attrgetter: "a.b.0" walks attributes and integer indices.
Value attr_path(const Value& obj, const std::string& path) {
  Value cur = obj;
  size_t b = 0;
  while (true) {
    size_t e = path.find('.', b);
    std::string part = path.substr(b, e == std::string::npos ? std::string::npos : e - b);
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    cur = digits ? get_item(cur, Value::integer(std::stoll(part))) : get_item(cur, Value::string(part));
    if (e == std::string::npos) return cur;
    b = e + 1;
  }
}

Value attribute_arg(const CallArgs& a, size_t index) { return arg(a, index, "attribute", kNone); }

Value call_string_method(Evaluator& ev, const Value& v, const char* name, CallArgs& a) {
  bool found = false;
  Value s = v.is_string() ? v : Value::string(to_str(v));
  return call_method(ev, s, name, a, found);
}

// ---- filters ----
Value f_trim(Evaluator& ev, const Value& v, CallArgs& a) {
  CallArgs m;
  m.pos.push_back(arg(a, 0, "chars", kNone));
  return call_string_method(ev, v, "strip", m);
}
Value f_length(Evaluator&, const Value& v, CallArgs&) { return Value::integer(length(v)); }
Value f_upper(Evaluator& ev, const Value& v, CallArgs& a) { return call_string_method(ev, v, "upper", a); }
Value f_lower(Evaluator& ev, const Value& v, CallArgs& a) { return call_string_method(ev, v, "lower", a); }
Value f_capitalize(Evaluator& ev, const Value& v, CallArgs& a) { return call_string_method(ev, v, "capitalize", a); }

Value f_title(Evaluator&, const Value& v, CallArgs&) {
  // jinja2: words start after '-', whitespace, or an opening bracket.
  std::string s = to_str(v), out;
  bool start = true;
  for (char c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    bool sep = c == '-' || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '(' || c == '{' || c == '[' ||
               c == '<' || c == '\f' || c == '\v';
    if (sep) {
      out += c;
      start = true;
    } else {
      out += u < 0x80 ? char(start ? std::toupper(u) : std::tolower(u)) : c;
      start = false;
    }
  }
  return Value::string(std::move(out));
}

Value f_tojson(Evaluator&, const Value& v, CallArgs& a) {
  JsonOptions opt;
  opt.ensure_ascii = arg(a, 0, "ensure_ascii", Value::boolean(false)).truthy();
  const Value& indent = arg(a, 1, "indent", kNone);
  if (!indent.is_none() && !indent.is_undefined()) {
    int64_t n = to_int(indent, "tojson indent");
    check_string_size(double(n), "tojson indent");
    opt.indent = int(n);
    opt.item_sep = std::string(1, ',');
  }
  const Value& seps = arg(a, 2, "separators", kNone);
  if (seps.is_list_like() && seps.items().size() == 2) {
    opt.item_sep = to_str(seps.items()[0]);
    opt.key_sep = to_str(seps.items()[1]);
  }
  opt.sort_keys = arg(a, 3, "sort_keys", Value::boolean(false)).truthy();
  return Value::string(to_json(v, opt));
}

Value f_items(Evaluator& ev, const Value& v, CallArgs&) {
  if (v.is_undefined()) return Value::list();
  if (!v.is_mapping()) fail("can only get item pairs from a mapping, got ", v.type_name());
  List out;
  for (const auto& [k, e] : v.map().entries) out.push_back(Value::tuple({Value::string(k), e}));
  return Value::list(std::move(out));
}

Value f_first(Evaluator&, const Value& v, CallArgs&) {
  List items = iterate(v);
  return items.empty() ? Value() : items.front();
}
Value f_last(Evaluator&, const Value& v, CallArgs&) {
  List items = iterate(v);
  return items.empty() ? Value() : items.back();
}

Value f_join(Evaluator&, const Value& v, CallArgs& a) {
  std::string sep = to_str(arg(a, 0, "d", Value::string("")));
  const Value& attr = attribute_arg(a, 1);
  std::string out;
  List items = iterate(v);
  for (size_t k = 0; k < items.size(); ++k) {
    if (k) out += sep;
    append_str(out, attr.is_string() ? attr_path(items[k], attr.str()) : items[k]);
  }
  return Value::string(std::move(out));
}

Value f_replace(Evaluator& ev, const Value& v, CallArgs& a) { return call_string_method(ev, v, "replace", a); }

Value f_default(Evaluator&, const Value& v, CallArgs& a) {
  const Value& dflt = arg(a, 0, "default_value", Value::string(""));
  bool boolean = arg(a, 1, "boolean", Value::boolean(false)).truthy();
  if (v.is_undefined() || (boolean && !v.truthy())) return dflt;
  return v;
}

Value f_list(Evaluator&, const Value& v, CallArgs&) { return Value::list(iterate(v)); }
Value f_string(Evaluator&, const Value& v, CallArgs&) { return v.is_string() ? v : Value::string(to_str(v)); }
Value f_safe(Evaluator&, const Value& v, CallArgs&) { return v; }

Value f_int(Evaluator&, const Value& v, CallArgs& a) {
  const Value& dflt = arg(a, 0, "default", Value::integer(0));
  int base = int(to_int(arg(a, 1, "base", Value::integer(10)), "int base"));
  if (v.kind == Kind::Int) return v;
  if (v.kind == Kind::Bool) return Value::integer(v.b);
  if (v.kind == Kind::Float) return std::isfinite(v.f) ? Value::integer(int64_t(v.f)) : dflt;
  if (v.is_string()) {
    std::string s = v.str();
    s.erase(std::remove(s.begin(), s.end(), '_'), s.end());
    try {
      size_t used = 0;
      int64_t x = std::stoll(s, &used, base);
      if (s.find_first_not_of(" \t\n", used) == std::string::npos) return Value::integer(x);
    } catch (const std::exception&) {
    }
    try {
      size_t used = 0;
      double d = std::stod(s, &used);
      if (s.find_first_not_of(" \t\n", used) == std::string::npos) return Value::integer(int64_t(d));
    } catch (const std::exception&) {
    }
  }
  return dflt;
}

Value f_float(Evaluator&, const Value& v, CallArgs& a) {
  const Value& dflt = arg(a, 0, "default", Value::number(0.0));
  if (v.is_number()) return Value::number(v.as_double());
  if (v.is_string()) {
    try {
      size_t used = 0;
      double d = std::stod(v.str(), &used);
      if (v.str().find_first_not_of(" \t\n", used) == std::string::npos) return Value::number(d);
    } catch (const std::exception&) {
    }
  }
  return dflt;
}

Value f_round(Evaluator&, const Value& v, CallArgs& a) {
  int64_t precision = to_int(arg(a, 0, "precision", Value::integer(0)), "round precision");
  std::string method = to_str(arg(a, 1, "method", Value::string("common")));
  if (!v.is_number()) fail("round expects a number, got ", v.type_name());
  if (v.kind != Kind::Float && method == "common") return Value::integer(v.kind == Kind::Int ? v.i : v.b);
  double scale = std::pow(10.0, double(precision));
  double x = v.as_double() * scale;
  double r = method == "ceil" ? std::ceil(x) : method == "floor" ? std::floor(x) : std::nearbyint(x);
  if (method != "common" && method != "ceil" && method != "floor") fail("method must be common, ceil or floor");
  return Value::number(r / scale);
}

Value f_abs(Evaluator&, const Value& v, CallArgs&) {
  if (v.kind == Kind::Int) return Value::integer(v.i < 0 ? -v.i : v.i);
  if (v.kind == Kind::Bool) return Value::integer(v.b);
  if (v.kind == Kind::Float) return Value::number(std::fabs(v.f));
  fail("bad operand type for abs(): '", v.type_name(), "'");
}

Value f_indent(Evaluator&, const Value& v, CallArgs& a) {
  const Value& width = arg(a, 0, "width", Value::integer(4));
  int64_t n = width.is_string() ? 0 : to_int(width, "indent width");
  check_string_size(double(n), "indent");
  std::string pad = width.is_string() ? width.str() : std::string(size_t(std::max<int64_t>(n, 0)), ' ');
  bool first = arg(a, 1, "first", Value::boolean(false)).truthy();
  bool blank = arg(a, 2, "blank", Value::boolean(false)).truthy();
  std::string s = to_str(v) + "\n";
  std::vector<std::string> lines;
  size_t b = 0;
  for (size_t k = 0; k < s.size(); ++k)
    if (s[k] == '\n') {
      lines.push_back(s.substr(b, k - b));
      b = k + 1;
    }
  std::string out;
  for (size_t k = 0; k < lines.size(); ++k) {
    if (k) {
      out += '\n';
      if (blank || !lines[k].empty()) out += pad;
    }
    out += lines[k];
  }
  if (first) out = pad + out;
  return Value::string(std::move(out));
}

Value f_map(Evaluator& ev, const Value& v, CallArgs& a) {
  List items = iterate(v);
  List out;
  out.reserve(items.size());
  const Value* attribute = nullptr;
  const Value* dflt = nullptr;
  for (const auto& [k, x] : a.kw) {
    if (k == "attribute") attribute = &x;
    if (k == "default") dflt = &x;
  }
  if (attribute) {
    for (const Value& item : items) {
      Value got = attr_path(item, to_str(*attribute));
      out.push_back(got.is_undefined() && dflt ? *dflt : got);
    }
    return Value::list(std::move(out));
  }
  if (a.pos.empty()) fail("map requires a filter name or attribute=");
  std::string name = to_str(a.pos[0]);
  CallArgs rest;
  rest.pos.assign(a.pos.begin() + 1, a.pos.end());
  rest.kw = a.kw;
  for (const Value& item : items) {
    CallArgs copy = rest;
    out.push_back(ev.apply_filter(name, item, copy));
  }
  return Value::list(std::move(out));
}

// select/reject/selectattr/rejectattr share one implementation.
Value select_impl(Evaluator& ev, const Value& v, CallArgs& a, bool by_attr, bool keep) {
  size_t first = by_attr ? 1 : 0;
  std::string attr = by_attr ? to_str(arg(a, 0, "attribute", kNone)) : "";
  std::string test = a.pos.size() > first ? to_str(a.pos[first]) : "";
  CallArgs rest;
  if (a.pos.size() > first + 1) rest.pos.assign(a.pos.begin() + first + 1, a.pos.end());
  List out;
  for (const Value& item : iterate(v)) {
    Value x = by_attr ? attr_path(item, attr) : item;
    bool ok;
    if (test.empty()) {
      ok = x.truthy();
    } else {
      CallArgs copy = rest;
      ok = ev.apply_test(test, x, copy);
    }
    if (ok == keep) out.push_back(item);
  }
  return Value::list(std::move(out));
}
Value f_select(Evaluator& ev, const Value& v, CallArgs& a) { return select_impl(ev, v, a, false, true); }
Value f_reject(Evaluator& ev, const Value& v, CallArgs& a) { return select_impl(ev, v, a, false, false); }
Value f_selectattr(Evaluator& ev, const Value& v, CallArgs& a) { return select_impl(ev, v, a, true, true); }
Value f_rejectattr(Evaluator& ev, const Value& v, CallArgs& a) { return select_impl(ev, v, a, true, false); }

// Sort key: the attribute if asked for, lower-cased strings unless case sensitive.
Value sort_key(const Value& item, const Value& attr, bool case_sensitive) {
  Value k = attr.is_string() ? attr_path(item, attr.str()) : item;
  if (!case_sensitive && k.is_string()) return Value::string(lower_ascii(k.str()));
  return k;
}

Value f_unique(Evaluator&, const Value& v, CallArgs& a) {
  bool cs = arg(a, 0, "case_sensitive", Value::boolean(false)).truthy();
  const Value& attr = arg(a, 1, "attribute", kNone);
  List out, seen;
  for (const Value& item : iterate(v)) {
    Value k = sort_key(item, attr, cs);
    if (std::any_of(seen.begin(), seen.end(), [&](const Value& s) { return equals(s, k); })) continue;
    seen.push_back(k);
    out.push_back(item);
  }
  return Value::list(std::move(out));
}

Value f_sort(Evaluator&, const Value& v, CallArgs& a) {
  bool reverse = arg(a, 0, "reverse", Value::boolean(false)).truthy();
  bool cs = arg(a, 1, "case_sensitive", Value::boolean(false)).truthy();
  const Value& attr = arg(a, 2, "attribute", kNone);
  List items = iterate(v);
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    int c = compare(sort_key(x, attr, cs), sort_key(y, attr, cs));
    return reverse ? c > 0 : c < 0;
  });
  return Value::list(std::move(items));
}

Value f_dictsort(Evaluator&, const Value& v, CallArgs& a) {
  bool cs = arg(a, 0, "case_sensitive", Value::boolean(false)).truthy();
  std::string by = to_str(arg(a, 1, "by", Value::string("key")));
  bool reverse = arg(a, 2, "reverse", Value::boolean(false)).truthy();
  if (!v.is_mapping()) fail("dictsort expects a mapping, got ", v.type_name());
  List items;
  for (const auto& [k, e] : v.map().entries) items.push_back(Value::tuple({Value::string(k), e}));
  size_t pos = by == "value" ? 1 : 0;
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    int c = compare(sort_key(x.items()[pos], kNone, cs), sort_key(y.items()[pos], kNone, cs));
    return reverse ? c > 0 : c < 0;
  });
  return Value::list(std::move(items));
}

Value f_reverse(Evaluator&, const Value& v, CallArgs&) {
  if (v.is_string()) {
    auto chars = utf8_chars(v.str());
    std::string out;
    for (auto it = chars.rbegin(); it != chars.rend(); ++it) out += *it;
    return Value::string(std::move(out));
  }
  List items = iterate(v);
  std::reverse(items.begin(), items.end());
  return Value::list(std::move(items));
}

Value f_wordcount(Evaluator&, const Value& v, CallArgs&) {
  std::string s = to_str(v);
  int64_t n = 0;
  bool in_word = false;
  for (const std::string& ch : utf8_chars(s)) {
    unsigned char u = static_cast<unsigned char>(ch[0]);
    bool w = std::isalnum(u) || u == '_';
    if (u >= 0x80) {
      // Approximates Python's \w for non-ASCII: letters of Latin/Greek/Cyrillic/.. and CJK/Hangul
      // count, symbols and emoji do not.
      uint32_t cp = u >= 0xf0   ? 0x10000
                    : u >= 0xe0 ? ((u & 0x0f) << 12) | ((ch[1] & 0x3f) << 6) | (ch[2] & 0x3f)
                                : ((u & 0x1f) << 6) | (ch[1] & 0x3f);
      w = (cp >= 0xc0 && cp < 0x2000 && cp != 0xd7 && cp != 0xf7) || (cp >= 0x3040 && cp < 0xa000) ||
          (cp >= 0xac00 && cp < 0xd7b0);
    }
    if (w && !in_word) ++n;
    in_word = w;
  }
  return Value::integer(n);
}

Value f_batch(Evaluator&, const Value& v, CallArgs& a) {
  int64_t size = to_int(arg(a, 0, "linecount", Value::integer(1)), "batch linecount");
  if (size <= 0) fail("batch linecount must be positive");
  const Value& fill = arg(a, 1, "fill_with", kNone);
  List out, cur;
  for (const Value& item : iterate(v)) {
    cur.push_back(item);
    if (int64_t(cur.size()) == size) out.push_back(Value::list(std::exchange(cur, {})));
  }
  if (!cur.empty()) {
    if (!fill.is_none())
      while (int64_t(cur.size()) < size) cur.push_back(fill);
    out.push_back(Value::list(std::move(cur)));
  }
  return Value::list(std::move(out));
}

Value minmax(const Value& v, CallArgs& a, bool want_max) {
  bool cs = arg(a, 0, "case_sensitive", Value::boolean(false)).truthy();
  const Value& attr = arg(a, 1, "attribute", kNone);
  List items = iterate(v);
  if (items.empty()) return Value();
  size_t best = 0;
  for (size_t k = 1; k < items.size(); ++k) {
    int c = compare(sort_key(items[k], attr, cs), sort_key(items[best], attr, cs));
    if (want_max ? c > 0 : c < 0) best = k;
  }
  return items[best];
}
Value f_min(Evaluator&, const Value& v, CallArgs& a) { return minmax(v, a, false); }
Value f_max(Evaluator&, const Value& v, CallArgs& a) { return minmax(v, a, true); }

Value f_sum(Evaluator&, const Value& v, CallArgs& a) {
  const Value& attr = arg(a, 0, "attribute", kNone);
  Value total = arg(a, 1, "start", Value::integer(0));
  for (const Value& item : iterate(v)) {
    Value x = attr.is_string() ? attr_path(item, attr.str()) : item;
    if (!x.is_number() || !total.is_number()) fail("sum expects numbers, got ", x.type_name());
    if (x.kind != Kind::Float && total.kind != Kind::Float)
      total = Value::integer((total.kind == Kind::Int ? total.i : total.b) + (x.kind == Kind::Int ? x.i : x.b));
    else
      total = Value::number(total.as_double() + x.as_double());
  }
  return total;
}

Value f_escape(Evaluator&, const Value& v, CallArgs&) {
  std::string out;
  for (char c : to_str(v)) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return Value::string(std::move(out));
}

Value f_format(Evaluator& ev, const Value& v, CallArgs& a) {
  // "%s, %s"|format(a, b): Python's printf-style formatting.
  std::string fmt = to_str(v), out;
  size_t next = 0;
  for (size_t k = 0; k < fmt.size(); ++k) {
    if (fmt[k] != '%' || k + 1 >= fmt.size()) {
      out += fmt[k];
      continue;
    }
    char c = fmt[++k];
    if (c == '%') {
      out += '%';
    } else if (c == 's' || c == 'd' || c == 'i' || c == 'r') {
      if (next >= a.pos.size()) fail("not enough arguments for format string");
      const Value& x = a.pos[next++];
      out += c == 'r' ? repr(x)
                      : (c == 's' ? to_str(x) : std::to_string(x.kind == Kind::Float ? int64_t(x.f) : to_int(x, "%d")));
    } else {
      fail("unsupported format character '", c, "'");
    }
  }
  return Value::string(std::move(out));
}

Value f_attr(Evaluator&, const Value& v, CallArgs& a) { return get_attr(v, to_str(arg(a, 0, "name", kNone))); }

// ---- tests ----
bool t_defined(Evaluator&, const Value& v, CallArgs&) { return !v.is_undefined(); }
bool t_undefined(Evaluator&, const Value& v, CallArgs&) { return v.is_undefined(); }
bool t_none(Evaluator&, const Value& v, CallArgs&) { return v.is_none(); }
bool t_string(Evaluator&, const Value& v, CallArgs&) { return v.is_string(); }
bool t_number(Evaluator&, const Value& v, CallArgs&) { return v.is_number(); }
bool t_integer(Evaluator&, const Value& v, CallArgs&) { return v.kind == Kind::Int; }
bool t_float(Evaluator&, const Value& v, CallArgs&) { return v.kind == Kind::Float; }
bool t_mapping(Evaluator&, const Value& v, CallArgs&) { return v.kind == Kind::Dict; }
bool t_iterable(Evaluator&, const Value& v, CallArgs&) {
  return v.is_list_like() || v.is_string() || v.kind == Kind::Dict || v.is_undefined();
}
bool t_sequence(Evaluator&, const Value& v, CallArgs&) {
  return v.is_list_like() || v.is_string() || v.kind == Kind::Dict || v.is_undefined();
}
bool t_boolean(Evaluator&, const Value& v, CallArgs&) { return v.kind == Kind::Bool; }
bool t_true(Evaluator&, const Value& v, CallArgs&) { return v.kind == Kind::Bool && v.b; }
bool t_false(Evaluator&, const Value& v, CallArgs&) { return v.kind == Kind::Bool && !v.b; }
bool t_callable(Evaluator&, const Value& v, CallArgs&) { return v.kind == Kind::Function; }
bool t_even(Evaluator&, const Value& v, CallArgs&) { return to_int(v, "even") % 2 == 0; }
bool t_odd(Evaluator&, const Value& v, CallArgs&) { return to_int(v, "odd") % 2 != 0; }
bool t_divisibleby(Evaluator&, const Value& v, CallArgs& a) {
  int64_t d = to_int(arg(a, 0, "num", kNone), "divisibleby");
  if (d == 0) fail("integer division or modulo by zero");
  return to_int(v, "divisibleby") % d == 0;
}
bool t_eq(Evaluator&, const Value& v, CallArgs& a) { return equals(v, arg(a, 0, "other", kNoValue)); }
bool t_ne(Evaluator&, const Value& v, CallArgs& a) { return !equals(v, arg(a, 0, "other", kNoValue)); }
bool t_lt(Evaluator&, const Value& v, CallArgs& a) { return compare(v, arg(a, 0, "other", kNoValue)) < 0; }
bool t_le(Evaluator&, const Value& v, CallArgs& a) { return compare(v, arg(a, 0, "other", kNoValue)) <= 0; }
bool t_gt(Evaluator&, const Value& v, CallArgs& a) { return compare(v, arg(a, 0, "other", kNoValue)) > 0; }
bool t_ge(Evaluator&, const Value& v, CallArgs& a) { return compare(v, arg(a, 0, "other", kNoValue)) >= 0; }
bool t_in(Evaluator&, const Value& v, CallArgs& a) { return contains(arg(a, 0, "seq", kNoValue), v); }
bool t_sameas(Evaluator&, const Value& v, CallArgs& a) {
  const Value& o = arg(a, 0, "other", kNoValue);
  if (v.kind != o.kind) return false;
  if (v.ptr || o.ptr) return v.ptr == o.ptr;
  return equals(v, o);
}
bool t_lower(Evaluator&, const Value& v, CallArgs&) {
  return v.is_string() && std::none_of(v.str().begin(), v.str().end(), [](char c) { return c >= 'A' && c <= 'Z'; });
}
bool t_upper(Evaluator&, const Value& v, CallArgs&) {
  return v.is_string() && std::none_of(v.str().begin(), v.str().end(), [](char c) { return c >= 'a' && c <= 'z'; });
}
bool t_escaped(Evaluator&, const Value&, CallArgs&) { return false; }
bool t_filter(Evaluator&, const Value& v, CallArgs&) { return v.is_string() && find_filter(v.str()) != nullptr; }
bool t_test(Evaluator&, const Value& v, CallArgs&) { return v.is_string() && find_test(v.str()) != nullptr; }

}  // namespace

FilterFn find_filter(const std::string& name) {
  static const std::pair<const char*, FilterFn> kFilters[] = {
      {"trim", f_trim},
      {"length", f_length},
      {"count", f_length},
      {"upper", f_upper},
      {"lower", f_lower},
      {"title", f_title},
      {"capitalize", f_capitalize},
      {"tojson", f_tojson},
      {"items", f_items},
      {"first", f_first},
      {"last", f_last},
      {"join", f_join},
      {"replace", f_replace},
      {"default", f_default},
      {"d", f_default},
      {"map", f_map},
      {"select", f_select},
      {"reject", f_reject},
      {"selectattr", f_selectattr},
      {"rejectattr", f_rejectattr},
      {"list", f_list},
      {"string", f_string},
      {"int", f_int},
      {"float", f_float},
      {"round", f_round},
      {"safe", f_safe},
      {"indent", f_indent},
      {"abs", f_abs},
      {"unique", f_unique},
      {"dictsort", f_dictsort},
      {"wordcount", f_wordcount},
      {"batch", f_batch},
      {"sort", f_sort},
      {"reverse", f_reverse},
      {"min", f_min},
      {"max", f_max},
      {"sum", f_sum},
      {"escape", f_escape},
      {"e", f_escape},
      {"format", f_format},
      {"attr", f_attr},
      {"forceescape", f_escape},
  };
  for (const auto& [n, f] : kFilters)
    if (name == n) return f;
  return nullptr;
}

TestFn find_test(const std::string& name) {
  static const std::pair<const char*, TestFn> kTests[] = {
      {"defined", t_defined},
      {"undefined", t_undefined},
      {"none", t_none},
      {"string", t_string},
      {"number", t_number},
      {"integer", t_integer},
      {"float", t_float},
      {"mapping", t_mapping},
      {"iterable", t_iterable},
      {"sequence", t_sequence},
      {"boolean", t_boolean},
      {"true", t_true},
      {"false", t_false},
      {"callable", t_callable},
      {"even", t_even},
      {"odd", t_odd},
      {"divisibleby", t_divisibleby},
      {"eq", t_eq},
      {"equalto", t_eq},
      {"==", t_eq},
      {"ne", t_ne},
      {"!=", t_ne},
      {"lt", t_lt},
      {"lessthan", t_lt},
      {"<", t_lt},
      {"le", t_le},
      {"<=", t_le},
      {"gt", t_gt},
      {"greaterthan", t_gt},
      {">", t_gt},
      {"ge", t_ge},
      {">=", t_ge},
      {"in", t_in},
      {"sameas", t_sameas},
      {"lower", t_lower},
      {"upper", t_upper},
      {"escaped", t_escaped},
      {"filter", t_filter},
      {"test", t_test},
  };
  for (const auto& [n, t] : kTests)
    if (name == n) return t;
  return nullptr;
}

}  // namespace lmtune::jinja
