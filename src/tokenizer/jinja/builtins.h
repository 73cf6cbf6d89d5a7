// Registries of built-in filters, tests, global functions and value methods (str, list, dict),
// looked up by name; the parser resolves filters and tests through them at parse time.
#pragma once
#include <string>

#include "tokenizer/jinja/ast.h"

namespace lmtune::jinja {

FilterFn find_filter(const std::string& name);  // nullptr when unknown
TestFn find_test(const std::string& name);      // nullptr when unknown
// Global functions (range, namespace, dict, raise_exception, strftime_now); Undefined if unknown.
Value find_global(const std::string& name);

// obj.name(args) for built-in types; sets found=false when the type has no such method.
Value call_method(Evaluator& ev, const Value& obj, const std::string& name, CallArgs& args, bool& found);
bool has_method(const Value& obj, const std::string& name);

// Argument helpers shared by filters, tests, methods and globals.
// The argument at position `index` or keyword `name`, or `fallback` when absent (a copy:
// fallbacks are often temporaries).
Value arg(const CallArgs& a, size_t index, const char* name, const Value& fallback);
int64_t to_int(const Value& v, const char* what);

// Python-style sequence views used by iteration, `in`, length and slicing.
List iterate(const Value& v);  // list/tuple items, dict keys, string characters; fails otherwise
int64_t length(const Value& v);
Value get_item(const Value& obj, const Value& key);  // obj[key]; Undefined when missing
Value get_attr(const Value& obj, const std::string& name);
Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step);
bool contains(const Value& container, const Value& item);

}  // namespace lmtune::jinja
