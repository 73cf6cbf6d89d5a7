// Methods on built-in values (str.strip/split/startswith..., dict.get/items..., list.append...),
// global functions (range, namespace, dict, raise_exception, strftime_now) and Python-style
// indexing, slicing, iteration and membership.
#include <algorithm>
#include <ctime>

#include "core/error.h"
#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/evaluator.h"
#include "tokenizer/jinja/limits.h"

namespace lmtune::jinja {

Value arg(const CallArgs& a, size_t index, const char* name, const Value& fallback) {
  if (index < a.pos.size()) return a.pos[index];
  for (const auto& [k, v] : a.kw)
    if (k == name) return v;
  return fallback;
}

int64_t to_int(const Value& v, const char* what) {
  if (v.kind == Kind::Int) return v.i;
  if (v.kind == Kind::Bool) return v.b;
  fail(what, " expects an integer, got ", v.type_name());
}

List iterate(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined: return {};
    case Kind::List:
    case Kind::Tuple: return v.items();
    case Kind::Dict: {
      List keys;
      keys.reserve(v.map().entries.size());
      for (const auto& [k, e] : v.map().entries) keys.push_back(Value::string(k));
      return keys;
    }
    case Kind::String: {
      List chars;
      for (auto& c : utf8_chars(v.str())) chars.push_back(Value::string(std::move(c)));
      return chars;
    }
    default: fail("'", v.type_name(), "' object is not iterable");
  }
}

int64_t length(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined: return 0;
    case Kind::String: return int64_t(utf8_length(v.str()));
    case Kind::List:
    case Kind::Tuple: return int64_t(v.items().size());
    case Kind::Dict:
    case Kind::Namespace: return int64_t(v.map().entries.size());
    default: fail("object of type '", v.type_name(), "' has no len()");
  }
}

static bool is_ascii(const std::string& s) {
  for (unsigned char c : s)
    if (c >= 0x80) return false;
  return true;
}

Value get_item(const Value& obj, const Value& key) {
  if (obj.is_mapping()) {
    if (!key.is_string()) return Value();
    const Value* v = obj.map().find(key.str());
    return v ? *v : Value();
  }
  if ((obj.is_list_like() || obj.is_string()) && (key.kind == Kind::Int || key.kind == Kind::Bool)) {
    int64_t n = length(obj);
    int64_t k = key.kind == Kind::Int ? key.i : key.b;
    if (k < 0) k += n;
    if (k < 0 || k >= n) return Value();
    if (obj.is_list_like()) return obj.items()[size_t(k)];
    if (is_ascii(obj.str())) return Value::string(obj.str().substr(size_t(k), 1));
    return Value::string(utf8_chars(obj.str())[size_t(k)]);
  }
  if (key.is_string()) return get_attr(obj, key.str());
  return Value();
}

Value get_attr(const Value& obj, const std::string& name) {
  if (has_method(obj, name)) {
    return Value::bound_method(name, obj, [name](Evaluator& ev, const Value& self, CallArgs& a) {
      bool found = false;
      return call_method(ev, self, name, a, found);
    });
  }
  if (obj.is_mapping()) {
    const Value* v = obj.map().find(name);
    return v ? *v : Value();
  }
  return Value();
}

// Python's slice.indices(): clamps start/stop for the step's direction.
static void slice_indices(int64_t n, const Value& start, const Value& stop, const Value& step, int64_t& b, int64_t& e,
                          int64_t& s) {
  auto opt = [](const Value& v) { return !(v.is_undefined() || v.is_none()); };
  s = opt(step) ? to_int(step, "slice step") : 1;
  if (s == 0) fail("slice step cannot be zero");
  auto clamp = [&](const Value& v, int64_t dflt) {
    if (!opt(v)) return dflt;
    int64_t x = to_int(v, "slice index");
    if (x < 0) x += n;
    if (s > 0) return std::clamp<int64_t>(x, 0, n);
    return std::clamp<int64_t>(x, -1, n - 1);
  };
  b = clamp(start, s > 0 ? 0 : n - 1);
  e = clamp(stop, s > 0 ? n : -1);
}

Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  if (obj.is_undefined()) return obj;
  int64_t b, e, s;
  if (obj.is_list_like()) {
    const List& items = obj.items();
    slice_indices(int64_t(items.size()), start, stop, step, b, e, s);
    List out;
    for (int64_t k = b; s > 0 ? k < e : k > e; k += s) out.push_back(items[size_t(k)]);
    return obj.kind == Kind::Tuple ? Value::tuple(std::move(out)) : Value::list(std::move(out));
  }
  if (obj.is_string()) {
    const std::string& str = obj.str();
    std::string out;
    if (is_ascii(str)) {
      slice_indices(int64_t(str.size()), start, stop, step, b, e, s);
      for (int64_t k = b; s > 0 ? k < e : k > e; k += s) out += str[size_t(k)];
    } else {
      auto chars = utf8_chars(str);
      slice_indices(int64_t(chars.size()), start, stop, step, b, e, s);
      for (int64_t k = b; s > 0 ? k < e : k > e; k += s) out += chars[size_t(k)];
    }
    return Value::string(std::move(out));
  }
  fail("'", obj.type_name(), "' object is not subscriptable");
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind) {
    case Kind::Undefined: return false;
    case Kind::String:
      if (!item.is_string()) fail("'in <string>' requires string as left operand, not ", item.type_name());
      return container.str().find(item.str()) != std::string::npos;
    case Kind::List:
    case Kind::Tuple:
      for (const Value& v : container.items())
        if (equals(v, item)) return true;
      return false;
    case Kind::Dict:
    case Kind::Namespace: return item.is_string() && container.map().find(item.str()) != nullptr;
    default: fail("argument of type '", container.type_name(), "' is not iterable");
  }
}

// ---- str methods ----
namespace {

bool in_set(char c, const std::string* chars) {
  if (!chars) return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
  return chars->find(c) != std::string::npos;
}

std::string strip(const std::string& s, const Value& chars, bool left, bool right) {
  const std::string* set = chars.is_string() ? &chars.str() : nullptr;
  size_t b = 0, e = s.size();
  if (left)
    while (b < e && in_set(s[b], set)) ++b;
  if (right)
    while (e > b && in_set(s[e - 1], set)) --e;
  return s.substr(b, e - b);
}

Value split(const std::string& s, const Value& sep, int64_t maxsplit) {
  List out;
  if (sep.is_string()) {
    const std::string& d = sep.str();
    if (d.empty()) fail("empty separator");
    size_t pos = 0;
    while (maxsplit != 0) {
      size_t f = s.find(d, pos);
      if (f == std::string::npos) break;
      out.push_back(Value::string(s.substr(pos, f - pos)));
      pos = f + d.size();
      --maxsplit;
    }
    out.push_back(Value::string(s.substr(pos)));
    return Value::list(std::move(out));
  }
  size_t k = 0;
  while (k < s.size()) {
    while (k < s.size() && in_set(s[k], nullptr)) ++k;
    if (k >= s.size()) break;
    if (maxsplit == 0) {
      size_t e = s.size();
      while (e > k && in_set(s[e - 1], nullptr)) --e;
      out.push_back(Value::string(s.substr(k, e - k)));
      break;
    }
    size_t b = k;
    while (k < s.size() && !in_set(s[k], nullptr)) ++k;
    out.push_back(Value::string(s.substr(b, k - b)));
    --maxsplit;
  }
  return Value::list(std::move(out));
}

bool affix(const std::string& s, const Value& p, bool start) {
  auto one = [&](const Value& x) {
    if (!x.is_string()) fail("startswith/endswith arg must be str or a tuple of str, not ", x.type_name());
    const std::string& t = x.str();
    if (t.size() > s.size()) return false;
    return start ? s.compare(0, t.size(), t) == 0 : s.compare(s.size() - t.size(), t.size(), t) == 0;
  };
  if (p.is_list_like()) {
    for (const Value& x : p.items())
      if (one(x)) return true;
    return false;
  }
  return one(p);
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
  {  // the result's size, bounded before any of it is built
    double n = 0;
    if (from.empty())
      n = double(utf8_length(s)) + 1;
    else
      for (size_t f = s.find(from); f != std::string::npos && (count < 0 || n < double(count));
           f = s.find(from, f + from.size()))
        ++n;
    if (count >= 0) n = std::min(n, double(count));
    check_string_size(double(s.size()) + n * (double(to.size()) - double(from.size())), "replace");
  }
  if (from.empty()) {
    std::string out;
    int64_t n = 0;
    for (auto& c : utf8_chars(s)) {
      if (count < 0 || n < count) {
        out += to;
        ++n;
      }
      out += c;
    }
    if (count < 0 || n < count) out += to;
    return out;
  }
  std::string out;
  size_t pos = 0;
  for (int64_t n = 0; count < 0 || n < count; ++n) {
    size_t f = s.find(from, pos);
    if (f == std::string::npos) break;
    out.append(s, pos, f - pos);
    out += to;
    pos = f + from.size();
  }
  out.append(s, pos, std::string::npos);
  return out;
}

std::string ascii_map(std::string s, int (*f)(int)) {
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x80) c = char(f(c));
  return s;
}

bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// Python str.title(): a letter after a non-letter is upper-cased, others lower-cased.
std::string py_title(const std::string& s) {
  std::string out = s;
  bool prev_letter = false;
  for (char& c : out) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u >= 0x80) {
      prev_letter = true;
      continue;
    }
    if (is_alpha(c)) {
      c = char(prev_letter ? std::tolower(u) : std::toupper(u));
      prev_letter = true;
    } else {
      prev_letter = false;
    }
  }
  return out;
}

Value str_method(Evaluator& ev, const std::string& s, const std::string& name, CallArgs& a, bool& found) {
  static const Value kNone = Value::none();
  found = true;
  if (name == "strip" || name == "lstrip" || name == "rstrip")
    return Value::string(strip(s, arg(a, 0, "chars", kNone), name != "rstrip", name != "lstrip"));
  if (name == "split") {
    const Value& mx = arg(a, 1, "maxsplit", Value::integer(-1));
    return split(s, arg(a, 0, "sep", kNone), to_int(mx, "split maxsplit"));
  }
  if (name == "startswith" || name == "endswith")
    return Value::boolean(affix(s, arg(a, 0, "prefix", kNone), name == "startswith"));
  if (name == "upper") return Value::string(ascii_map(s, ::toupper));
  if (name == "lower") return Value::string(ascii_map(s, ::tolower));
  if (name == "title") return Value::string(py_title(s));
  if (name == "capitalize") {
    std::string out = ascii_map(s, ::tolower);
    if (!out.empty() && static_cast<unsigned char>(out[0]) < 0x80) out[0] = char(std::toupper(out[0]));
    return Value::string(std::move(out));
  }
  if (name == "replace") {
    const Value& from = arg(a, 0, "old", kNone);
    const Value& to = arg(a, 1, "new", kNone);
    if (!from.is_string() || !to.is_string()) fail("replace() arguments must be str");
    return Value::string(replace_all(s, from.str(), to.str(), to_int(arg(a, 2, "count", Value::integer(-1)), "count")));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "count") {
    const Value& sub = arg(a, 0, "sub", kNone);
    if (!sub.is_string()) fail(name, "() argument must be str");
    const std::string& t = sub.str();
    if (name == "count") {
      if (t.empty()) return Value::integer(int64_t(utf8_length(s)) + 1);
      int64_t n = 0;
      for (size_t p = s.find(t); p != std::string::npos; p = s.find(t, p + t.size())) ++n;
      return Value::integer(n);
    }
    size_t p = name == "rfind" ? s.rfind(t) : s.find(t);
    if (p == std::string::npos) {
      if (name == "index") fail("substring not found");
      return Value::integer(-1);
    }
    return Value::integer(int64_t(utf8_length(s.substr(0, p))));
  }
  if (name == "join") {
    std::string out;
    List items = iterate(arg(a, 0, "iterable", kNone));
    for (size_t k = 0; k < items.size(); ++k) {
      if (k) out += s;
      if (!items[k].is_string()) fail("sequence item ", k, ": expected str instance, ", items[k].type_name(), " found");
      out += items[k].str();
    }
    return Value::string(std::move(out));
  }
  if (name == "splitlines") {
    List out;
    size_t b = 0;
    for (size_t k = 0; k < s.size(); ++k)
      if (s[k] == '\n') {
        out.push_back(Value::string(s.substr(b, k - b)));
        b = k + 1;
      }
    if (b < s.size()) out.push_back(Value::string(s.substr(b)));
    return Value::list(std::move(out));
  }
  if (name == "isdigit" || name == "isalpha" || name == "isspace" || name == "isalnum" || name == "islower" ||
      name == "isupper") {
    bool ok = !s.empty();
    bool cased = false;
    for (char c : s) {
      unsigned char u = static_cast<unsigned char>(c);
      if (name == "isdigit")
        ok = ok && std::isdigit(u);
      else if (name == "isalpha")
        ok = ok && std::isalpha(u);
      else if (name == "isalnum")
        ok = ok && std::isalnum(u);
      else if (name == "isspace")
        ok = ok && std::isspace(u);
      else if (name == "islower")
        ok = ok && !std::isupper(u), cased = cased || std::islower(u);
      else
        ok = ok && !std::islower(u), cased = cased || std::isupper(u);
    }
    if (name == "islower" || name == "isupper") ok = ok && cased;
    return Value::boolean(ok);
  }
  if (name == "format") {
    std::string out;
    size_t next = 0;
    for (size_t k = 0; k < s.size(); ++k) {
      if (s[k] == '{' && k + 1 < s.size() && s[k + 1] == '{') {
        out += '{';
        ++k;
      } else if (s[k] == '}' && k + 1 < s.size() && s[k + 1] == '}') {
        out += '}';
        ++k;
      } else if (s[k] == '{') {
        size_t e = s.find('}', k);
        if (e == std::string::npos) fail("single '{' encountered in format string");
        std::string field = s.substr(k + 1, e - k - 1);
        Value v;
        if (field.empty())
          v = arg(a, next++, "", Value());
        else if (std::isdigit(static_cast<unsigned char>(field[0])))
          v = arg(a, size_t(std::stoul(field)), "", Value());
        else
          v = arg(a, size_t(-1), field.c_str(), Value());
        append_str(out, v);
        check_string_size(double(out.size()), "format");
        k = e;
      } else {
        out += s[k];
      }
    }
    return Value::string(std::move(out));
  }
  found = false;
  return Value();
}

Value dict_method(Evaluator& ev, const Value& d, const std::string& name, CallArgs& a, bool& found) {
  found = true;
  Dict& m = d.map();
  if (name == "get") {
    const Value& key = arg(a, 0, "key", Value());
    const Value* v = key.is_string() ? m.find(key.str()) : nullptr;
    if (v) return *v;
    Value dflt = arg(a, 1, "default", Value::none());
    return dflt;
  }
  if (name == "items") {
    List out;
    out.reserve(m.entries.size());
    for (const auto& [k, v] : m.entries) out.push_back(Value::tuple({Value::string(k), v}));
    return Value::list(std::move(out));
  }
  if (name == "keys" || name == "values") {
    List out;
    out.reserve(m.entries.size());
    for (const auto& [k, v] : m.entries) out.push_back(name == "keys" ? Value::string(k) : v);
    return Value::list(std::move(out));
  }
  if (name == "pop") {
    const Value& key = arg(a, 0, "key", Value());
    const Value* v = key.is_string() ? m.find(key.str()) : nullptr;
    if (!v) {
      if (a.pos.size() > 1) return a.pos[1];
      fail("KeyError: ", repr(key));
    }
    Value out = *v;
    m.erase(key.str());
    return out;
  }
  if (name == "update") {
    if (!a.pos.empty() && a.pos[0].is_mapping())
      for (const auto& [k, v] : a.pos[0].map().entries) m.set(k, v);
    for (const auto& [k, v] : a.kw) m.set(k, v);
    return Value::none();
  }
  if (name == "copy") {
    Value out = Value::dict();
    out.map().entries = m.entries;
    return out;
  }
  if (name == "setdefault") {
    const Value& key = arg(a, 0, "key", Value());
    if (!key.is_string()) fail("dict keys must be strings");
    if (const Value* v = m.find(key.str())) return *v;
    Value dflt = arg(a, 1, "default", Value::none());
    m.set(key.str(), dflt);
    return dflt;
  }
  found = false;
  return Value();
}

Value list_method(Evaluator& ev, const Value& l, const std::string& name, CallArgs& a, bool& found) {
  found = true;
  List& items = l.items();
  bool mutable_list = l.kind == Kind::List;
  if (mutable_list && (name == "append" || name == "extend" || name == "insert"))
    check_item_count(double(items.size()) + (name == "extend" ? double(length(arg(a, 0, "iterable", Value()))) : 1.0),
                     name.c_str());
  if (mutable_list && name == "append") {
    items.push_back(arg(a, 0, "object", Value()));
    return Value::none();
  }
  if (mutable_list && name == "extend") {
    List more = iterate(arg(a, 0, "iterable", Value()));
    items.insert(items.end(), more.begin(), more.end());
    return Value::none();
  }
  if (mutable_list && name == "insert") {
    int64_t n = int64_t(items.size());
    int64_t k = to_int(arg(a, 0, "index", Value::integer(0)), "insert index");
    if (k < 0) k += n;
    k = std::clamp<int64_t>(k, 0, n);
    items.insert(items.begin() + k, arg(a, 1, "object", Value()));
    return Value::none();
  }
  if (mutable_list && name == "pop") {
    if (items.empty()) fail("pop from empty list");
    int64_t n = int64_t(items.size());
    int64_t k = to_int(arg(a, 0, "index", Value::integer(-1)), "pop index");
    if (k < 0) k += n;
    if (k < 0 || k >= n) fail("pop index out of range");
    Value out = items[size_t(k)];
    items.erase(items.begin() + k);
    return out;
  }
  if (name == "index" || name == "count") {
    const Value& x = arg(a, 0, "value", Value());
    int64_t n = 0;
    for (size_t k = 0; k < items.size(); ++k) {
      if (!equals(items[k], x)) continue;
      if (name == "index") return Value::integer(int64_t(k));
      ++n;
    }
    if (name == "index") fail("value is not in list");
    return Value::integer(n);
  }
  found = false;
  return Value();
}

}  // namespace

bool has_method(const Value& obj, const std::string& name) {
  static const char* kStr[] = {"strip",   "lstrip",  "rstrip",  "split",      "startswith", "endswith",
                               "upper",   "lower",   "title",   "capitalize", "replace",    "find",
                               "rfind",   "index",   "count",   "join",       "splitlines", "isdigit",
                               "isalpha", "isspace", "isalnum", "islower",    "isupper",    "format"};
  static const char* kDict[] = {"get", "items", "keys", "values", "pop", "update", "copy", "setdefault"};
  static const char* kList[] = {"append", "extend", "insert", "pop", "index", "count"};
  auto in = [&](auto& table) {
    for (const char* m : table)
      if (name == m) return true;
    return false;
  };
  if (obj.is_string()) return in(kStr);
  if (obj.kind == Kind::Dict) return in(kDict);
  if (obj.kind == Kind::List) return in(kList);
  if (obj.kind == Kind::Tuple) return name == "index" || name == "count";
  return false;
}

Value call_method(Evaluator& ev, const Value& obj, const std::string& name, CallArgs& args, bool& found) {
  found = false;
  if (obj.is_string()) return str_method(ev, obj.str(), name, args, found);
  if (obj.kind == Kind::Dict) return dict_method(ev, obj, name, args, found);
  if (obj.is_list_like()) return list_method(ev, obj, name, args, found);
  return Value();
}

// ---- globals ----
namespace {

Value fn_range(Evaluator&, CallArgs& a) {
  int64_t start = 0, stop = 0, step = 1;
  if (a.pos.size() == 1) {
    stop = to_int(a.pos[0], "range");
  } else if (a.pos.size() == 2 || a.pos.size() == 3) {
    start = to_int(a.pos[0], "range");
    stop = to_int(a.pos[1], "range");
    if (a.pos.size() == 3) step = to_int(a.pos[2], "range");
  } else {
    fail("range expected 1 to 3 arguments, got ", a.pos.size());
  }
  if (step == 0) fail("range() arg 3 must not be zero");
  List out;
  for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
    out.push_back(Value::integer(k));
    if (out.size() > 10'000'000) fail("range too big");
  }
  return Value::list(std::move(out));
}

Value make_mapping(CallArgs& a, Value out) {
  for (const Value& p : a.pos) {
    if (p.is_mapping()) {
      for (const auto& [k, v] : p.map().entries) out.map().set(k, v);
    } else {
      for (const Value& pair : iterate(p)) {
        List kv = iterate(pair);
        if (kv.size() != 2 || !kv[0].is_string()) fail("dict() needs (str, value) pairs");
        out.map().set(kv[0].str(), kv[1]);
      }
    }
  }
  for (auto& [k, v] : a.kw) out.map().set(k, v);
  return out;
}

Value fn_namespace(Evaluator&, CallArgs& a) { return make_mapping(a, Value::namespace_()); }
Value fn_dict(Evaluator&, CallArgs& a) { return make_mapping(a, Value::dict()); }

Value fn_raise(Evaluator&, CallArgs& a) { fail(a.pos.empty() ? std::string("raise_exception") : to_str(a.pos[0])); }

Value fn_strftime(Evaluator&, CallArgs& a) {
  if (a.pos.empty() || !a.pos[0].is_string()) fail("strftime_now expects a format string");
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[512];
  size_t n = std::strftime(buf, sizeof buf, a.pos[0].str().c_str(), &tm);
  return Value::string(std::string(buf, n));
}

}  // namespace

Value find_global(const std::string& name) {
  static const std::pair<const char*, Value (*)(Evaluator&, CallArgs&)> kGlobals[] = {
      {"range", fn_range},           {"namespace", fn_namespace},   {"dict", fn_dict},
      {"raise_exception", fn_raise}, {"strftime_now", fn_strftime},
  };
  for (const auto& [n, f] : kGlobals)
    if (name == n) return Value::function(n, f);
  return Value();
}

}  // namespace lmtune::jinja
