// Walks a parsed template against a context: a stack of variable frames (for-loops and macro
// calls push one), control flow for break/continue, and expression evaluation with Python rules.
#pragma once
#include <string>
#include <vector>

#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/lexer.h"

namespace lmtune::jinja {

class Evaluator {
 public:
  // `context` is a dict whose entries are the template's top-level variables.
  Evaluator(const SourceMap& map, Value context);

  void render(const Body& body, std::string& out);
  Value eval(const Expr& e);
  // Calls a function value (global, macro, bound method) with evaluated arguments.
  Value call(const Value& fn, CallArgs& args);
  // Applies a filter or test by name (for map/select and friends); fails when unknown.
  Value apply_filter(const std::string& name, const Value& input, CallArgs& args);
  bool apply_test(const std::string& name, const Value& input, CallArgs& args);

  [[noreturn]] void error(int pos, const std::string& msg) const;

 private:
  enum class Flow { Normal, Break, Continue };
  struct Frame {
    std::vector<std::pair<std::string, Value>> vars;
    bool barrier = false;  // macro frame: lookups skip to the root frame below it
  };

  Flow exec(const Body& body, std::string& out);
  Flow exec_for(const Stmt& s, std::string& out);
  void exec_set(const Stmt& s, std::string& out);
  Value call_macro(const Stmt& s, CallArgs& args);
  Value eval_inner(const Expr& e);
  Value defined(const Expr& e);  // eval, failing when the value is undefined
  Value eval_call(const Expr& e);
  Value binary(const Expr& e);
  void collect_args(const Expr& e, size_t first, CallArgs& args);

  Value lookup(const std::string& name) const;
  void assign(const std::string& name, Value v);
  void unpack(const std::vector<std::string>& targets, const Value& v, int pos);

  // Fails at pos when a string or container just built is over its limit or the render's
  // budget of built bytes is spent (limits.h).
  void charge(const Value& v, int pos);
  struct Depth;  // RAII counter of eval/exec nesting

  const SourceMap& map_;
  Value context_;
  std::vector<Frame> frames_;
  int depth_ = 0;        // exec + eval calls in progress
  int macro_depth_ = 0;  // macro calls in progress
  int64_t loop_iterations_ = 0, macro_calls_ = 0, built_bytes_ = 0;
};

}  // namespace lmtune::jinja
