// The Jinja value: undefined, none, bool, int64, double, string, list, tuple, dict (insertion
// ordered), namespace and callable. Heavy payloads sit behind shared pointers so copies are cheap;
// printing, equality and truthiness follow Python, JSON output follows json.dumps.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace lmtune::jinja {

class Evaluator;
struct Value;

enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, String, List, Tuple, Dict, Namespace, Function };

using List = std::vector<Value>;
struct Dict;
struct Function;

// Positional and keyword arguments of a call, filter or test (the filtered value excluded).
struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

using NativeFn = std::function<Value(Evaluator&, CallArgs&)>;
using MethodFn = std::function<Value(Evaluator&, const Value& self, CallArgs&)>;

struct Value {
  Kind kind = Kind::Undefined;
  union {
    bool b;
    int64_t i;
    double f;
  };
  std::shared_ptr<void> ptr;  // std::string | List | Dict | Function, by kind

  Value() : i(0) {}
  static Value none() {
    Value v;
    v.kind = Kind::None;
    return v;
  }
  static Value boolean(bool x) {
    Value v;
    v.kind = Kind::Bool;
    v.b = x;
    return v;
  }
  static Value integer(int64_t x) {
    Value v;
    v.kind = Kind::Int;
    v.i = x;
    return v;
  }
  static Value number(double x) {
    Value v;
    v.kind = Kind::Float;
    v.f = x;
    return v;
  }
  static Value string(std::string s);
  static Value list(List items = {});
  static Value tuple(List items);
  static Value dict();
  static Value namespace_();
  static Value function(std::string name, NativeFn fn);
  // A method bound to self (list.append, dict.items ...): fn gets self at each call.
  static Value bound_method(std::string name, Value self, MethodFn fn);
  static Value from_json(const nlohmann::ordered_json& j);

  bool is_undefined() const { return kind == Kind::Undefined; }
  bool is_none() const { return kind == Kind::None; }
  bool is_string() const { return kind == Kind::String; }
  bool is_number() const { return kind == Kind::Int || kind == Kind::Float || kind == Kind::Bool; }
  bool is_list_like() const { return kind == Kind::List || kind == Kind::Tuple; }
  bool is_mapping() const { return kind == Kind::Dict || kind == Kind::Namespace; }

  const std::string& str() const { return *static_cast<const std::string*>(ptr.get()); }
  List& items() const { return *static_cast<List*>(ptr.get()); }
  Dict& map() const { return *static_cast<Dict*>(ptr.get()); }
  const Function& fn() const { return *static_cast<const Function*>(ptr.get()); }
  double as_double() const { return kind == Kind::Float ? f : kind == Kind::Int ? double(i) : double(b); }

  bool truthy() const;
  std::string type_name() const;
};

struct Dict {
  std::vector<std::pair<std::string, Value>> entries;
  const Value* find(std::string_view key) const;
  void set(const std::string& key, Value v);
  bool erase(std::string_view key);
};

struct Function {
  std::string name;
  NativeFn call;
  Value self;  // a bound method's object (none for globals and macros); seen by cycles.h
};

// Python str(): what {{ x }} prints. Undefined prints as "".
std::string to_str(const Value& v);
void append_str(std::string& out, const Value& v);
// Python repr(): how elements of printed lists and dicts look.
std::string repr(const Value& v);
// Python float repr: 1.0, 0.5, 1e-05, 1e+16, inf, nan.
std::string format_float(double x);

struct JsonOptions {
  bool ensure_ascii = false;
  int indent = -1;  // < 0: single line
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool sort_keys = false;
};
// json.dumps(v, ...) with Python's spacing and escaping.
std::string to_json(const Value& v, const JsonOptions& opt);

bool equals(const Value& a, const Value& b);
// Python ordering (<0, 0, >0) for numbers, strings and sequences; other mixes fail.
int compare(const Value& a, const Value& b);

// UTF-8 helpers: strings index by code point as in Python.
size_t utf8_length(const std::string& s);
std::vector<std::string> utf8_chars(const std::string& s);

}  // namespace lmtune::jinja
