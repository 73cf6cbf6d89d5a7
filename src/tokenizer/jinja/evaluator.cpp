// Template execution: statements write to an output string; expressions follow Python
// semantics (int/float arithmetic, string and list concatenation, and/or returning operands).
#include "tokenizer/jinja/evaluator.h"

#include <cmath>

#include "core/error.h"
#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/limits.h"

namespace lmtune::jinja {

namespace {
const char kFilterBody[] = "\x01filter_body";

bool is_int_like(const Value& v) { return v.kind == Kind::Int || v.kind == Kind::Bool; }
int64_t int_of(const Value& v) { return v.kind == Kind::Int ? v.i : int64_t(v.b); }

[[noreturn]] void bad_operands(const char* op, const Value& a, const Value& b) {
  if (a.is_undefined() || b.is_undefined()) fail("undefined value used with '", op, "'");
  fail("unsupported operand type(s) for ", op, ": '", a.type_name(), "' and '", b.type_name(), "'");
}

Value repeat(const Value& seq, int64_t n) {
  if (n <= 0) return seq.is_string() ? Value::string("") : seq.kind == Kind::Tuple ? Value::tuple({}) : Value::list();
  if (seq.is_string()) {
    check_string_size(double(seq.str().size()) * double(n), "'*'");
    std::string out;
    for (int64_t k = 0; k < n; ++k) out += seq.str();
    return Value::string(std::move(out));
  }
  check_item_count(double(seq.items().size()) * double(n), "'*'");
  List out;
  for (int64_t k = 0; k < n; ++k) out.insert(out.end(), seq.items().begin(), seq.items().end());
  return seq.kind == Kind::Tuple ? Value::tuple(std::move(out)) : Value::list(std::move(out));
}

// Python's printf-style `fmt % args` for %s, %r, %d, %i, %f and %%.
Value percent_format(const std::string& fmt, const Value& args) {
  List vals = args.kind == Kind::Tuple ? args.items() : List{args};
  std::string out;
  size_t next = 0;
  for (size_t k = 0; k < fmt.size(); ++k) {
    if (fmt[k] != '%') {
      out += fmt[k];
      continue;
    }
    if (++k >= fmt.size()) fail("incomplete format");
    char c = fmt[k];
    if (c == '%') {
      out += '%';
      continue;
    }
    if (next >= vals.size()) fail("not enough arguments for format string");
    const Value& v = vals[next++];
    if (c == 's')
      out += to_str(v);
    else if (c == 'r')
      out += repr(v);
    else if (c == 'd' || c == 'i')
      out += std::to_string(v.kind == Kind::Float ? int64_t(v.f) : to_int(v, "%d"));
    else if (c == 'f') {
      char b[64];
      std::snprintf(b, sizeof b, "%f", v.as_double());
      out += b;
    } else
      fail("unsupported format character '", c, "'");
  }
  return Value::string(std::move(out));
}
}  // namespace

Evaluator::Evaluator(const SourceMap& map, Value context) : map_(map), context_(std::move(context)) {
  frames_.emplace_back();
}

struct Evaluator::Depth {
  Evaluator& ev;
  Depth(Evaluator& e, int pos) : ev(e) {
    if (++ev.depth_ > kMaxEvalDepth) {
      --ev.depth_;
      ev.error(pos, str_cat("evaluation nested deeper than ", kMaxEvalDepth, " levels"));
    }
  }
  ~Depth() { --ev.depth_; }
  Depth(const Depth&) = delete;
  Depth& operator=(const Depth&) = delete;
};

void Evaluator::charge(const Value& v, int pos) {
  int64_t bytes = 0;
  if (v.is_string()) {
    bytes = int64_t(v.str().size());
    if (size_t(bytes) > kMaxStringBytes)
      error(pos, str_cat("built a string of ", bytes, " bytes, over the limit of ", kMaxStringBytes, " bytes"));
  } else if (v.is_list_like() || v.is_mapping()) {
    size_t n = v.is_list_like() ? v.items().size() : v.map().entries.size();
    if (n > kMaxItems) error(pos, str_cat("built ", n, " items, over the limit of ", kMaxItems, " items"));
    bytes = int64_t(n * sizeof(Value));
  }
  built_bytes_ += bytes;
  if (built_bytes_ > kMaxBuiltBytes)
    error(pos, str_cat("the template built more than ", kMaxBuiltBytes, " bytes of strings and lists in one render"));
}

void Evaluator::error(int pos, const std::string& msg) const { fail("[jinja] ", map_.where(pos), ": ", msg); }

void Evaluator::render(const Body& body, std::string& out) { exec(body, out); }

Value Evaluator::lookup(const std::string& name) const {
  for (size_t k = frames_.size(); k-- > 0;) {
    for (auto it = frames_[k].vars.rbegin(); it != frames_[k].vars.rend(); ++it)
      if (it->first == name) return it->second;
    if (frames_[k].barrier) k = 1;  // continue with the root frame
  }
  if (const Value* v = context_.map().find(name)) return *v;
  return find_global(name);
}

void Evaluator::assign(const std::string& name, Value v) {
  auto& vars = frames_.back().vars;
  for (auto& [k, old] : vars)
    if (k == name) {
      old = std::move(v);
      return;
    }
  vars.emplace_back(name, std::move(v));
}

void Evaluator::unpack(const std::vector<std::string>& targets, const Value& v, int pos) {
  if (targets.size() == 1) {
    assign(targets[0], v);
    return;
  }
  List items = iterate(v);
  if (items.size() != targets.size())
    error(pos, str_cat("cannot unpack ", items.size(), " values into ", targets.size(), " names"));
  for (size_t k = 0; k < targets.size(); ++k) assign(targets[k], items[k]);
}

Evaluator::Flow Evaluator::exec(const Body& body, std::string& out) {
  Depth depth(*this, body.empty() ? 0 : body.front()->pos);
  for (const StmtPtr& sp : body) {
    const Stmt& s = *sp;
    if (out.size() > kMaxStringBytes)
      error(s.pos, str_cat("output grew past the limit of ", kMaxStringBytes, " bytes"));
    switch (s.kind) {
      case StmtKind::Text: out += s.text; break;
      case StmtKind::Output: {
        Value v = eval(*s.expr);
        try {
          append_str(out, v);  // printing a nested value can fail (limits.h)
        } catch (const Error& e) {
          error(s.pos, e.what());
        }
        break;
      }
      case StmtKind::If:
        for (const Branch& b : s.branches) {
          if (!b.cond || eval(*b.cond).truthy()) {
            Flow f = exec(b.body, out);
            if (f != Flow::Normal) return f;
            break;
          }
        }
        break;
      case StmtKind::For: {
        exec_for(s, out);
        break;
      }
      case StmtKind::Set:
      case StmtKind::SetBlock: exec_set(s, out); break;
      case StmtKind::Macro: {
        const Stmt* macro = &s;
        assign(s.text,
               Value::function(s.text, [macro](Evaluator& ev, CallArgs& a) { return ev.call_macro(*macro, a); }));
        break;
      }
      case StmtKind::Break: return Flow::Break;
      case StmtKind::Continue: return Flow::Continue;
      case StmtKind::FilterBlock: {
        std::string inner;
        exec(s.body, inner);
        frames_.emplace_back();
        assign(kFilterBody, Value::string(std::move(inner)));
        Value v = eval(*s.expr);
        frames_.pop_back();
        append_str(out, v);
        break;
      }
      case StmtKind::Block: {
        Flow f = exec(s.body, out);
        if (f != Flow::Normal) return f;
        break;
      }
      case StmtKind::Do: eval(*s.expr); break;
    }
  }
  return Flow::Normal;
}

Evaluator::Flow Evaluator::exec_for(const Stmt& s, std::string& out) {
  Value iterable = eval(*s.expr);
  List items;
  try {
    items = iterate(iterable);
  } catch (const Error& e) {
    error(s.expr->pos, e.what());
  }
  frames_.emplace_back();
  if (s.cond) {
    List kept;
    for (const Value& item : items) {
      unpack(s.targets, item, s.pos);
      if (eval(*s.cond).truthy()) kept.push_back(item);
    }
    items = std::move(kept);
  }
  const int64_t n = int64_t(items.size());
  for (int64_t k = 0; k < n; ++k) {
    if (++loop_iterations_ > kMaxLoopIterations)
      error(s.pos, str_cat("more than ", kMaxLoopIterations, " loop iterations in one render"));
    frames_.back().vars.clear();  // jinja2: assignments in the body do not carry to the next iteration
    unpack(s.targets, items[k], s.pos);
    Value loop = Value::dict();
    auto& e = loop.map().entries;
    e.reserve(12);
    e.emplace_back("index", Value::integer(k + 1));
    e.emplace_back("index0", Value::integer(k));
    e.emplace_back("revindex", Value::integer(n - k));
    e.emplace_back("revindex0", Value::integer(n - k - 1));
    e.emplace_back("first", Value::boolean(k == 0));
    e.emplace_back("last", Value::boolean(k == n - 1));
    e.emplace_back("length", Value::integer(n));
    e.emplace_back("depth", Value::integer(1));
    e.emplace_back("depth0", Value::integer(0));
    e.emplace_back("previtem", k > 0 ? items[k - 1] : Value());
    e.emplace_back("nextitem", k + 1 < n ? items[k + 1] : Value());
    e.emplace_back("cycle", Value::function("cycle", [k](Evaluator&, CallArgs& a) {
                     if (a.pos.empty()) fail("no items for cycling given");
                     return a.pos[size_t(k) % a.pos.size()];
                   }));
    assign("loop", std::move(loop));
    if (exec(s.body, out) == Flow::Break) break;
  }
  frames_.pop_back();
  if (n == 0 && !s.else_body.empty()) return exec(s.else_body, out);
  return Flow::Normal;
}

void Evaluator::exec_set(const Stmt& s, std::string& out) {
  Value v;
  if (s.kind == StmtKind::SetBlock) {
    std::string inner;
    exec(s.body, inner);
    v = Value::string(std::move(inner));
    if (s.expr) {
      frames_.emplace_back();
      assign(kFilterBody, v);
      v = eval(*s.expr);
      frames_.pop_back();
    }
  } else {
    v = eval(*s.expr);
  }
  if (s.cond) {
    Value obj = eval(*s.cond);
    if (obj.kind != Kind::Namespace) error(s.cond->pos, "cannot assign attribute on non-namespace object");
    obj.map().set(s.text, std::move(v));
    return;
  }
  unpack(s.targets, v, s.pos);
}

Value Evaluator::call_macro(const Stmt& s, CallArgs& args) {
  if (macro_depth_ >= kMaxMacroDepth)
    error(s.pos, str_cat("macro '", s.text, "' called at a depth over ", kMaxMacroDepth, " (recursion without end?)"));
  if (++macro_calls_ > kMaxMacroCalls)
    error(s.pos, str_cat("more than ", kMaxMacroCalls, " macro calls in one render"));
  struct MacroDepth {
    int& d;
    explicit MacroDepth(int& depth) : d(++depth) {}
    ~MacroDepth() { --d; }
  } macro_depth(macro_depth_);
  if (args.pos.size() > s.params.size())
    fail("macro '", s.text, "' takes not more than ", s.params.size(), " argument(s)");
  Frame frame;
  frame.barrier = true;
  frames_.push_back(std::move(frame));
  for (size_t k = 0; k < s.params.size(); ++k) {
    const std::string& p = s.params[k];
    Value v;
    bool set = false;
    if (k < args.pos.size()) {
      v = args.pos[k];
      set = true;
    }
    for (auto& [name, kv] : args.kw)
      if (name == p) {
        v = kv;
        set = true;
      }
    if (!set && s.defaults[k]) v = eval(*s.defaults[k]);
    assign(p, std::move(v));
  }
  for (auto& [name, kv] : args.kw) {
    bool known = false;
    for (const auto& p : s.params) known = known || p == name;
    if (!known) fail("macro '", s.text, "' takes no keyword argument '", name, "'");
  }
  std::string out;
  exec(s.body, out);
  frames_.pop_back();
  if (out.size() > kMaxStringBytes)
    error(s.pos, str_cat("macro '", s.text, "' output over ", kMaxStringBytes, " bytes"));
  return Value::string(std::move(out));
}

void Evaluator::collect_args(const Expr& e, size_t first, CallArgs& args) {
  args.pos.reserve(e.args.size() - first);
  for (size_t k = first; k < e.args.size(); ++k) args.pos.push_back(eval(*e.args[k]));
  for (const auto& [name, ex] : e.kwargs) args.kw.emplace_back(name, eval(*ex));
}

Value Evaluator::call(const Value& fn, CallArgs& args) {
  if (fn.kind != Kind::Function) {
    if (fn.is_undefined()) fail("undefined value is not callable");
    fail("'", fn.type_name(), "' object is not callable");
  }
  return fn.fn().call(*this, args);
}

Value Evaluator::apply_filter(const std::string& name, const Value& input, CallArgs& args) {
  FilterFn f = find_filter(name);
  if (!f) fail("unknown filter '", name, "'");
  return f(*this, input, args);
}

bool Evaluator::apply_test(const std::string& name, const Value& input, CallArgs& args) {
  TestFn t = find_test(name);
  if (!t) fail("unknown test '", name, "'");
  return t(*this, input, args);
}

Value Evaluator::eval(const Expr& e) {
  Depth depth(*this, e.pos);
  try {
    Value v = eval_inner(e);
    switch (e.kind) {  // the kinds that build new values; names and lookups share existing ones
      case ExprKind::List:
      case ExprKind::Tuple:
      case ExprKind::Dict:
      case ExprKind::Slice:
      case ExprKind::Call:
      case ExprKind::Filter:
      case ExprKind::Binary: charge(v, e.pos); break;
      default: break;
    }
    return v;
  } catch (const Error& err) {
    std::string msg = err.what();
    if (msg.rfind("[jinja]", 0) == 0) throw;
    error(e.pos, msg);
  }
}

Value Evaluator::eval_call(const Expr& e) {
  const Expr& callee = *e.args[0];
  CallArgs args;
  if (callee.kind == ExprKind::GetAttr) {
    Value obj = eval(*callee.args[0]);
    if (has_method(obj, callee.name)) {
      collect_args(e, 1, args);
      bool found = false;
      return call_method(*this, obj, callee.name, args, found);
    }
    Value fn = get_attr(obj, callee.name);
    if (fn.is_undefined()) fail("'", obj.type_name(), "' object has no attribute '", callee.name, "'");
    collect_args(e, 1, args);
    return call(fn, args);
  }
  Value fn = eval(callee);
  if (fn.is_undefined() && callee.kind == ExprKind::Name) fail("'", callee.name, "' is undefined");
  collect_args(e, 1, args);
  return call(fn, args);
}

// jinja2's default Undefined: printing, testing and iterating are fine, but looking inside
// fails ("'foo' is undefined"), so `foo.bar is defined` raises when foo is missing.
Value Evaluator::defined(const Expr& e) {
  Value v = eval(e);
  if (!v.is_undefined()) return v;
  if (e.kind == ExprKind::Name) error(e.pos, "'" + e.name + "' is undefined");
  if (e.kind == ExprKind::GetAttr) error(e.pos, "undefined attribute '" + e.name + "' has no attributes or items");
  error(e.pos, "undefined value has no attributes or items");
}

Value Evaluator::eval_inner(const Expr& e) {
  switch (e.kind) {
    case ExprKind::Literal: return e.literal;
    case ExprKind::Name: return lookup(e.name);
    case ExprKind::List:
    case ExprKind::Tuple: {
      List items;
      items.reserve(e.args.size());
      for (const auto& a : e.args) items.push_back(eval(*a));
      return e.kind == ExprKind::List ? Value::list(std::move(items)) : Value::tuple(std::move(items));
    }
    case ExprKind::Dict: {
      Value d = Value::dict();
      for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
        Value key = eval(*e.args[k]);
        if (!key.is_string()) error(e.args[k]->pos, "dict keys must be strings, got " + key.type_name());
        d.map().set(key.str(), eval(*e.args[k + 1]));
      }
      return d;
    }
    case ExprKind::GetAttr: return get_attr(defined(*e.args[0]), e.name);
    case ExprKind::GetItem: {
      Value obj = defined(*e.args[0]);
      return get_item(obj, eval(*e.args[1]));
    }
    case ExprKind::Slice: {
      Value obj = defined(*e.args[0]);
      Value parts[3];
      for (int k = 0; k < 3; ++k)
        if (e.args[k + 1]) parts[k] = eval(*e.args[k + 1]);
      return slice(obj, parts[0], parts[1], parts[2]);
    }
    case ExprKind::Call: return eval_call(e);
    case ExprKind::Filter: {
      Value input = eval(*e.args[0]);
      CallArgs args;
      collect_args(e, 1, args);
      return e.filter(*this, input, args);
    }
    case ExprKind::Test: {
      Value input = eval(*e.args[0]);
      CallArgs args;
      collect_args(e, 1, args);
      return Value::boolean(e.test(*this, input, args) != e.negate);
    }
    case ExprKind::Not: return Value::boolean(!eval(*e.args[0]).truthy());
    case ExprKind::Neg:
    case ExprKind::Pos: {
      Value v = eval(*e.args[0]);
      bool neg = e.kind == ExprKind::Neg;
      if (is_int_like(v)) return Value::integer(neg ? -int_of(v) : int_of(v));
      if (v.kind == Kind::Float) return Value::number(neg ? -v.f : v.f);
      fail("bad operand type for unary ", neg ? "-" : "+", ": '", v.type_name(), "'");
    }
    case ExprKind::Binary: return binary(e);
    case ExprKind::And: {
      Value a = eval(*e.args[0]);
      return a.truthy() ? eval(*e.args[1]) : a;
    }
    case ExprKind::Or: {
      Value a = eval(*e.args[0]);
      return a.truthy() ? a : eval(*e.args[1]);
    }
    case ExprKind::Cond:
      if (eval(*e.args[0]).truthy()) return eval(*e.args[1]);
      return e.args[2] ? eval(*e.args[2]) : Value();
  }
  return Value();
}

Value Evaluator::binary(const Expr& e) {
  Value a = eval(*e.args[0]);
  Value b = eval(*e.args[1]);
  const bool ints = is_int_like(a) && is_int_like(b);
  const bool nums = a.is_number() && b.is_number();
  switch (e.op) {
    case BinOp::Add:
      if (ints) return Value::integer(int_of(a) + int_of(b));
      if (nums) return Value::number(a.as_double() + b.as_double());
      if (a.is_string() && b.is_string()) {
        check_string_size(double(a.str().size()) + double(b.str().size()), "'+'");
        return Value::string(a.str() + b.str());
      }
      if (a.is_list_like() && a.kind == b.kind) {
        check_item_count(double(a.items().size()) + double(b.items().size()), "'+'");
        List out = a.items();
        out.insert(out.end(), b.items().begin(), b.items().end());
        return a.kind == Kind::List ? Value::list(std::move(out)) : Value::tuple(std::move(out));
      }
      bad_operands("+", a, b);
    case BinOp::Sub:
      if (ints) return Value::integer(int_of(a) - int_of(b));
      if (nums) return Value::number(a.as_double() - b.as_double());
      bad_operands("-", a, b);
    case BinOp::Mul:
      if (ints) return Value::integer(int_of(a) * int_of(b));
      if (nums) return Value::number(a.as_double() * b.as_double());
      if ((a.is_string() || a.is_list_like()) && is_int_like(b)) return repeat(a, int_of(b));
      if ((b.is_string() || b.is_list_like()) && is_int_like(a)) return repeat(b, int_of(a));
      bad_operands("*", a, b);
    case BinOp::Div:
      if (!nums) bad_operands("/", a, b);
      if (b.as_double() == 0) fail("division by zero");
      return Value::number(a.as_double() / b.as_double());
    case BinOp::FloorDiv:
    case BinOp::Mod: {
      bool div = e.op == BinOp::FloorDiv;
      if (!div && a.is_string()) return percent_format(a.str(), b);
      if (!nums) bad_operands(div ? "//" : "%", a, b);
      if (b.as_double() == 0) fail(div ? "integer division or modulo by zero" : "modulo by zero");
      if (ints) {
        int64_t x = int_of(a), y = int_of(b);
        int64_t q = x / y, r = x % y;
        if (r != 0 && ((r < 0) != (y < 0))) {
          --q;
          r += y;
        }
        return Value::integer(div ? q : r);
      }
      double x = a.as_double(), y = b.as_double();
      double q = std::floor(x / y);
      double r = x - q * y;
      if (!div && r != 0 && ((r < 0) != (y < 0))) r += y;
      return Value::number(div ? q : r);
    }
    case BinOp::Pow:
      if (ints && int_of(b) >= 0) {
        // by squaring: the same wrapped int64 as repeated multiplication, in log(b) steps
        uint64_t r = 1, base = uint64_t(int_of(a));
        for (uint64_t n = uint64_t(int_of(b)); n; n >>= 1, base *= base)
          if (n & 1) r *= base;
        return Value::integer(int64_t(r));
      }
      if (nums) return Value::number(std::pow(a.as_double(), b.as_double()));
      bad_operands("**", a, b);
    case BinOp::Concat: {
      std::string s = to_str(a);
      append_str(s, b);
      return Value::string(std::move(s));
    }
    case BinOp::Eq: return Value::boolean(equals(a, b));
    case BinOp::Ne: return Value::boolean(!equals(a, b));
    case BinOp::Lt: return Value::boolean(compare(a, b) < 0);
    case BinOp::Le: return Value::boolean(compare(a, b) <= 0);
    case BinOp::Gt: return Value::boolean(compare(a, b) > 0);
    case BinOp::Ge: return Value::boolean(compare(a, b) >= 0);
    case BinOp::In: return Value::boolean(contains(b, a));
    case BinOp::NotIn: return Value::boolean(!contains(b, a));
  }
  return Value();
}

}  // namespace lmtune::jinja
