// Jinja values: construction, JSON conversion, Python-style printing (str/repr), json.dumps
// output, equality and ordering.
#include "tokenizer/jinja/value.h"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "tokenizer/jinja/cycles.h"
#include "tokenizer/jinja/limits.h"

namespace lmtune::jinja {

namespace {
// Recursion over nested values (printing, JSON, equality, ordering) counted per thread: a value
// nested past kMaxValueDepth, or a list appended to itself, fails instead of overflowing the stack.
thread_local int value_depth = 0;
struct ValueDepth {
  ValueDepth() {
    if (++value_depth > kMaxValueDepth) {
      value_depth = 0;  // the throw unwinds every level; the guards below it are not destroyed twice
      fail("value nested deeper than ", kMaxValueDepth, " levels (or a list or dict that contains itself)");
    }
  }
  ~ValueDepth() {
    if (value_depth > 0) --value_depth;
  }
  ValueDepth(const ValueDepth&) = delete;
  ValueDepth& operator=(const ValueDepth&) = delete;
};

std::atomic<int64_t> n_live_containers{0};

// Lists and dicts are freed through a per-thread queue, so a chain of 10^5 nested lists is freed
// in a loop rather than 10^5 nested destructor calls.
template <class T>
struct QueuedDelete {
  void operator()(T* p) const {
    thread_local bool draining = false;
    thread_local std::vector<T*> queue;
    if (draining) {
      queue.push_back(p);
      return;
    }
    draining = true;
    delete p;  // children's deleters queue their payloads
    n_live_containers.fetch_sub(1, std::memory_order_relaxed);
    while (!queue.empty()) {
      T* q = queue.back();
      queue.pop_back();
      delete q;
      n_live_containers.fetch_sub(1, std::memory_order_relaxed);
    }
    draining = false;
  }
};
}  // namespace

Value Value::string(std::string s) {
  Value v;
  v.kind = Kind::String;
  v.ptr = std::make_shared<std::string>(std::move(s));
  return v;
}
int64_t live_containers() { return n_live_containers.load(std::memory_order_relaxed); }

Value Value::list(List items) {
  Value v;
  v.kind = Kind::List;
  v.ptr = std::shared_ptr<List>(new List(std::move(items)), QueuedDelete<List>());
  n_live_containers.fetch_add(1, std::memory_order_relaxed);
  track_payload(v.ptr, Payload::List);
  return v;
}
Value Value::tuple(List items) {
  Value v = list(std::move(items));
  v.kind = Kind::Tuple;
  return v;
}
Value Value::dict() {
  Value v;
  v.kind = Kind::Dict;
  v.ptr = std::shared_ptr<Dict>(new Dict(), QueuedDelete<Dict>());
  n_live_containers.fetch_add(1, std::memory_order_relaxed);
  track_payload(v.ptr, Payload::Dict);
  return v;
}
Value Value::namespace_() {
  Value v = dict();
  v.kind = Kind::Namespace;
  return v;
}
Value Value::function(std::string name, NativeFn fn) {
  Value v;
  v.kind = Kind::Function;
  v.ptr = std::make_shared<Function>(Function{std::move(name), std::move(fn), Value()});
  return v;
}
Value Value::bound_method(std::string name, Value self, MethodFn fn) {
  auto f = std::make_shared<Function>(Function{std::move(name), nullptr, std::move(self)});
  // The method reads self through its Function, not a copy of its own: nothing hidden from the
  // cycle collector (cycles.h) holds self.
  const Function* raw = f.get();
  f->call = [raw, fn = std::move(fn)](Evaluator& ev, CallArgs& a) { return fn(ev, raw->self, a); };
  Value v;
  v.kind = Kind::Function;
  v.ptr = std::move(f);
  track_payload(v.ptr, Payload::Function);
  return v;
}

Value Value::from_json(const nlohmann::ordered_json& j) {
  ValueDepth guard;
  using T = nlohmann::ordered_json::value_t;
  switch (j.type()) {
    case T::null: return none();
    case T::boolean: return boolean(j.get<bool>());
    case T::number_integer: return integer(j.get<int64_t>());
    case T::number_unsigned: return integer(int64_t(j.get<uint64_t>()));
    case T::number_float: return number(j.get<double>());
    case T::string: return string(j.get_ref<const std::string&>());
    case T::array: {
      List items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(from_json(e));
      return list(std::move(items));
    }
    case T::object: {
      Value d = dict();
      auto& entries = d.map().entries;
      entries.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it) entries.emplace_back(it.key(), from_json(it.value()));
      return d;
    }
    default: return Value();
  }
}

bool Value::truthy() const {
  switch (kind) {
    case Kind::Undefined:
    case Kind::None: return false;
    case Kind::Bool: return b;
    case Kind::Int: return i != 0;
    case Kind::Float: return f != 0.0;
    case Kind::String: return !str().empty();
    case Kind::List:
    case Kind::Tuple: return !items().empty();
    case Kind::Dict: return !map().entries.empty();
    default: return true;
  }
}

std::string Value::type_name() const {
  switch (kind) {
    case Kind::Undefined: return "Undefined";
    case Kind::None: return "NoneType";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::List: return "list";
    case Kind::Tuple: return "tuple";
    case Kind::Dict: return "dict";
    case Kind::Namespace: return "Namespace";
    default: return "function";
  }
}

const Value* Dict::find(std::string_view key) const {
  for (const auto& [k, v] : entries)
    if (k == key) return &v;
  return nullptr;
}
void Dict::set(const std::string& key, Value v) {
  for (auto& [k, old] : entries)
    if (k == key) {
      old = std::move(v);
      return;
    }
  entries.emplace_back(key, std::move(v));
}
bool Dict::erase(std::string_view key) {
  for (auto it = entries.begin(); it != entries.end(); ++it)
    if (it->first == key) {
      entries.erase(it);
      return true;
    }
  return false;
}

std::string format_float(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  if (x == 0) return std::signbit(x) ? "-0.0" : "0.0";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, x, std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // shortest round-trip digits: -d.ddde±XX
  bool neg = sci[0] == '-';
  if (neg) sci.erase(0, 1);
  size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  int exp10 = std::stoi(sci.substr(e + 1));
  int decpt = exp10 + 1;  // value = 0.digits * 10^decpt
  std::string out = neg ? "-" : "";
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      out += "0." + std::string(size_t(-decpt), '0') + digits;
    } else if (size_t(decpt) >= digits.size()) {
      out += digits + std::string(decpt - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, decpt) + "." + digits.substr(decpt);
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  char eb[16];
  std::snprintf(eb, sizeof eb, "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
  return out + eb;
}

static void append_repr_string(std::string& out, const std::string& s) {
  bool has_single = s.find('\'') != std::string::npos;
  bool has_double = s.find('"') != std::string::npos;
  char q = (has_single && !has_double) ? '"' : '\'';
  out += q;
  for (unsigned char c : s) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c == (unsigned char)q) {
          out += '\\';
          out += char(c);
        } else if (c < 0x20 || c == 0x7f) {
          char b[8];
          std::snprintf(b, sizeof b, "\\x%02x", c);
          out += b;
        } else {
          out += char(c);
        }
    }
  }
  out += q;
}

static void append_repr(std::string& out, const Value& v) {
  ValueDepth guard;
  if (out.size() > kMaxStringBytes) check_string_size(double(out.size()), "printing a value");
  switch (v.kind) {
    case Kind::String: append_repr_string(out, v.str()); return;
    case Kind::List:
    case Kind::Tuple: {
      out += v.kind == Kind::List ? '[' : '(';
      const List& items = v.items();
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += ", ";
        append_repr(out, items[k]);
      }
      if (v.kind == Kind::Tuple && items.size() == 1) out += ',';
      out += v.kind == Kind::List ? ']' : ')';
      return;
    }
    case Kind::Dict:
    case Kind::Namespace: {
      if (v.kind == Kind::Namespace) out += "<Namespace ";
      out += '{';
      bool first = true;
      for (const auto& [k, e] : v.map().entries) {
        if (!first) out += ", ";
        first = false;
        append_repr_string(out, k);
        out += ": ";
        append_repr(out, e);
      }
      out += '}';
      if (v.kind == Kind::Namespace) out += '>';
      return;
    }
    default: append_str(out, v);
  }
}

void append_str(std::string& out, const Value& v) {
  switch (v.kind) {
    case Kind::Undefined: return;
    case Kind::None: out += "None"; return;
    case Kind::Bool: out += v.b ? "True" : "False"; return;
    case Kind::Int: out += std::to_string(v.i); return;
    case Kind::Float: out += format_float(v.f); return;
    case Kind::String: out += v.str(); return;
    case Kind::Function: out += "<function " + v.fn().name + ">"; return;
    default: append_repr(out, v);
  }
}

std::string to_str(const Value& v) {
  if (v.kind == Kind::String) return v.str();
  std::string out;
  append_str(out, v);
  return out;
}

std::string repr(const Value& v) {
  std::string out;
  append_repr(out, v);
  return out;
}

// Decodes one UTF-8 code point at s[k], advancing k; invalid bytes decode as themselves.
static uint32_t decode_utf8(const std::string& s, size_t& k) {
  unsigned char c = s[k];
  int n = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : 0;
  if (n && k + n >= s.size()) {
    ++k;
    return c;
  }
  uint32_t cp = n == 0 ? c : n == 1 ? (c & 0x1f) : n == 2 ? (c & 0x0f) : (c & 0x07);
  for (int m = 1; m <= n; ++m) cp = (cp << 6) | (static_cast<unsigned char>(s[k + m]) & 0x3f);
  k += n + 1;
  return cp;
}

static void append_json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  for (size_t k = 0; k < s.size();) {
    unsigned char c = s[k];
    if (c >= 0x80 && ensure_ascii) {
      uint32_t cp = decode_utf8(s, k);
      char b[16];
      if (cp >= 0x10000) {
        cp -= 0x10000;
        std::snprintf(b, sizeof b, "\\u%04x\\u%04x", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
      } else {
        std::snprintf(b, sizeof b, "\\u%04x", cp);
      }
      out += b;
      continue;
    }
    ++k;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20 || (ensure_ascii && c == 0x7f)) {
          char b[8];
          std::snprintf(b, sizeof b, "\\u%04x", c);
          out += b;
        } else {
          out += char(c);
        }
    }
  }
  out += '"';
}

static void append_json(std::string& out, const Value& v, const JsonOptions& opt, int depth) {
  ValueDepth guard;
  if (out.size() > kMaxStringBytes) check_string_size(double(out.size()), "tojson");
  auto newline = [&](int d) {
    if (opt.indent < 0) return;
    check_string_size(double(out.size()) + double(opt.indent) * d, "tojson");
    out += '\n';
    out.append(size_t(opt.indent) * d, ' ');
  };
  switch (v.kind) {
    case Kind::Undefined:
    case Kind::None: out += "null"; return;
    case Kind::Bool: out += v.b ? "true" : "false"; return;
    case Kind::Int: out += std::to_string(v.i); return;
    case Kind::Float:
      if (std::isnan(v.f))
        out += "NaN";
      else if (std::isinf(v.f))
        out += v.f > 0 ? "Infinity" : "-Infinity";
      else
        out += format_float(v.f);
      return;
    case Kind::String: append_json_string(out, v.str(), opt.ensure_ascii); return;
    case Kind::List:
    case Kind::Tuple: {
      const List& items = v.items();
      if (items.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += opt.item_sep;
        newline(depth + 1);
        append_json(out, items[k], opt, depth + 1);
      }
      newline(depth);
      out += ']';
      return;
    }
    case Kind::Dict:
    case Kind::Namespace: {
      std::vector<const std::pair<std::string, Value>*> entries;
      for (const auto& e : v.map().entries) entries.push_back(&e);
      if (entries.empty()) {
        out += "{}";
        return;
      }
      if (opt.sort_keys)
        std::stable_sort(entries.begin(), entries.end(), [](auto* a, auto* b) { return a->first < b->first; });
      out += '{';
      for (size_t k = 0; k < entries.size(); ++k) {
        if (k) out += opt.item_sep;
        newline(depth + 1);
        append_json_string(out, entries[k]->first, opt.ensure_ascii);
        out += opt.key_sep;
        append_json(out, entries[k]->second, opt, depth + 1);
      }
      newline(depth);
      out += '}';
      return;
    }
    default: fail("Object of type ", v.type_name(), " is not JSON serializable");
  }
}

std::string to_json(const Value& v, const JsonOptions& opt) {
  std::string out;
  append_json(out, v, opt, 0);
  return out;
}

bool equals(const Value& a, const Value& b) {
  ValueDepth guard;
  if (a.is_number() && b.is_number()) {
    if (a.kind != Kind::Float && b.kind != Kind::Float)
      return (a.kind == Kind::Int ? a.i : a.b) == (b.kind == Kind::Int ? b.i : b.b);
    return a.as_double() == b.as_double();
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Kind::Undefined:
    case Kind::None: return true;
    case Kind::String: return a.str() == b.str();
    case Kind::List:
    case Kind::Tuple: {
      const List& x = a.items();
      const List& y = b.items();
      if (x.size() != y.size()) return false;
      for (size_t k = 0; k < x.size(); ++k)
        if (!equals(x[k], y[k])) return false;
      return true;
    }
    case Kind::Dict:
    case Kind::Namespace: {
      const auto& x = a.map().entries;
      const auto& y = b.map().entries;
      if (x.size() != y.size()) return false;
      for (const auto& [k, v] : x) {
        const Value* o = b.map().find(k);
        if (!o || !equals(v, *o)) return false;
      }
      return true;
    }
    default: return a.ptr == b.ptr;
  }
}

int compare(const Value& a, const Value& b) {
  ValueDepth guard;
  if (a.is_number() && b.is_number()) {
    if (a.kind == Kind::Int && b.kind == Kind::Int) return a.i < b.i ? -1 : a.i > b.i ? 1 : 0;
    double x = a.as_double(), y = b.as_double();
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) {
    int c = a.str().compare(b.str());
    return c < 0 ? -1 : c > 0 ? 1 : 0;
  }
  if (a.is_list_like() && b.is_list_like() && a.kind == b.kind) {
    const List& x = a.items();
    const List& y = b.items();
    for (size_t k = 0; k < x.size() && k < y.size(); ++k) {
      if (!equals(x[k], y[k])) return compare(x[k], y[k]);
    }
    return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  }
  fail("'<' not supported between instances of '", a.type_name(), "' and '", b.type_name(), "'");
}

size_t utf8_length(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xc0) != 0x80;
  return n;
}

std::vector<std::string> utf8_chars(const std::string& s) {
  std::vector<std::string> out;
  out.reserve(s.size());
  for (size_t k = 0; k < s.size();) {
    size_t start = k;
    ++k;
    while (k < s.size() && (static_cast<unsigned char>(s[k]) & 0xc0) == 0x80) ++k;
    out.push_back(s.substr(start, k - start));
  }
  return out;
}

}  // namespace lmtune::jinja
