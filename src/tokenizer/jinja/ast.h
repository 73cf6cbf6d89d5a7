// The parsed template: expression and statement nodes, built once by the parser and walked
// by the evaluator on every render. Filters and tests are resolved to functions at parse time.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "tokenizer/jinja/value.h"

namespace lmtune::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

// A filter gets the filtered value plus call arguments; a test answers yes or no.
using FilterFn = Value (*)(Evaluator&, const Value&, CallArgs&);
using TestFn = bool (*)(Evaluator&, const Value&, CallArgs&);

enum class ExprKind : uint8_t {
  Literal,  // value
  Name,     // name
  List,     // args
  Tuple,    // args
  Dict,     // args: key, value, key, value...
  GetAttr,  // args[0].name
  GetItem,  // args[0][args[1]]
  Slice,    // args[0][args[1]:args[2]:args[3]] (null parts allowed)
  Call,     // args[0](args[1..], kwargs)
  Filter,   // args[0] | name(args[1..], kwargs)
  Test,     // args[0] is name(args[1..], kwargs); negate for `is not`
  Not,      // not args[0]
  Neg,      // -args[0]
  Pos,      // +args[0]
  Binary,   // args[0] op args[1]
  And,
  Or,
  Cond,  // args[1] if args[0] else args[2] (args[2] may be null)
};

enum class BinOp : uint8_t { Add, Sub, Mul, Div, FloorDiv, Mod, Pow, Concat, Eq, Ne, Lt, Le, Gt, Ge, In, NotIn };

struct Expr {
  ExprKind kind;
  BinOp op = BinOp::Add;
  bool negate = false;
  int pos = 0;
  int depth = 1;  // levels of this subtree, bounded by kMaxNesting at parse time
  std::string name;
  Value literal;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  FilterFn filter = nullptr;
  TestFn test = nullptr;
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

enum class StmtKind : uint8_t {
  Text,      // text
  Output,    // {{ expr }}
  If,        // branches (expr null = else)
  For,       // targets in expr [if cond] body [else else_body]
  Set,       // targets = expr, or attr_target.attr = expr
  SetBlock,  // {% set name %}body{% endset %}
  Macro,     // name(params = defaults) body
  Break,
  Continue,
  FilterBlock,  // {% filter f %}body{% endfilter %}: filter_expr applies to a placeholder
  Block,        // {% generation %} and friends: just the body
  Do,           // {% do expr %}
};

struct Branch {
  ExprPtr cond;
  Body body;
};

struct Stmt {
  StmtKind kind;
  int pos = 0;
  std::string text;  // Text data, Macro name, Set attribute name
  ExprPtr expr;      // Output value, For iterable, Set value, Do expression, Filter chain
  ExprPtr cond;      // For filter, Set attribute target object
  std::vector<std::string> targets;
  std::vector<Branch> branches;
  Body body, else_body;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // one per param, null when none
};

}  // namespace lmtune::jinja
