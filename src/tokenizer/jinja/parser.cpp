// Recursive-descent parser following jinja2's parser.py: statements (if, for, set, macro,
// filter, generation, break/continue, do) and expressions from conditional down to primary.
#include "tokenizer/jinja/parser.h"

#include <algorithm>
#include <initializer_list>

#include "core/error.h"
#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/limits.h"

namespace lmtune::jinja {
namespace {

class Parser {
 public:
  Parser(const std::vector<Token>& toks, const SourceMap& map) : t_(toks), map_(map) {}

  Body parse_all() {
    std::string end;
    Body body = parse_body({}, end);
    return body;
  }

 private:
  // ---- token helpers ----
  const Token& cur() const { return t_[p_]; }
  const Token& peek(size_t n = 1) const { return t_[std::min(p_ + n, t_.size() - 1)]; }
  bool is_op(const char* op) const { return cur().type == Tok::Op && cur().text == op; }
  bool is_name(const char* name) const { return cur().type == Tok::Name && cur().text == name; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    ++p_;
    return true;
  }
  bool skip_name(const char* name) {
    if (!is_name(name)) return false;
    ++p_;
    return true;
  }

  [[noreturn]] void error(int pos, const std::string& msg) const { fail("[jinja] ", map_.where(pos), ": ", msg); }

  std::string describe(const Token& t) const {
    switch (t.type) {
      case Tok::Eof: return "end of template";
      case Tok::BlockEnd: return "end of statement block";
      case Tok::VarEnd: return "end of print statement";
      case Tok::Text: return "template data";
      default: return "'" + t.text + "'";
    }
  }

  void expect_op(const char* op) {
    if (!skip_op(op)) error(cur().pos, str_cat("expected '", op, "', got ", describe(cur())));
  }
  std::string expect_name() {
    if (cur().type != Tok::Name) error(cur().pos, "expected a name, got " + describe(cur()));
    return t_[p_++].text;
  }
  void expect_block_end() {
    if (cur().type != Tok::BlockEnd) error(cur().pos, "expected end of statement block, got " + describe(cur()));
    ++p_;
  }

  ExprPtr make(ExprKind kind, int pos) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->pos = pos;
    return e;
  }
  // Records e's depth from its children's and fails past kMaxNesting, so neither parsing, nor
  // evaluating, nor destroying the tree recurses without bound (`1+1+...` is built by a loop).
  ExprPtr fin(ExprPtr e) {
    int d = 0;
    for (const ExprPtr& a : e->args)
      if (a) d = std::max(d, a->depth);
    for (const auto& kv : e->kwargs) d = std::max(d, kv.second->depth);
    e->depth = d + 1;
    if (e->depth > kMaxNesting) error(e->pos, str_cat("expression nested deeper than ", kMaxNesting, " levels"));
    return e;
  }
  // Bounds the parser's own recursion (parentheses, `not not ...`, nested blocks).
  struct Nest {
    int& n;
    Nest(Parser& p, int pos, const char* what) : n(what[0] == 's' ? p.stmt_nest_ : p.expr_nest_) {
      if (++n > kMaxNesting) p.error(pos, str_cat(what, " nested deeper than ", kMaxNesting, " levels"));
    }
    ~Nest() { --n; }
    Nest(const Nest&) = delete;
    Nest& operator=(const Nest&) = delete;
  };

  StmtPtr make_stmt(StmtKind kind, int pos) {
    auto s = std::make_unique<Stmt>();
    s->kind = kind;
    s->pos = pos;
    return s;
  }

  // ---- statements ----
  // Parses until a block tag whose name is in `ends`; leaves the cursor after that name.
  Body parse_body(std::initializer_list<const char*> ends, std::string& which) {
    Nest nest(*this, cur().pos, "statements");
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::Eof) {
        if (ends.size() == 0) return body;
        error(t.pos, str_cat("unexpected end of template, expected '", *(ends.end() - 1), "'"));
      }
      if (t.type == Tok::Text) {
        auto s = make_stmt(StmtKind::Text, t.pos);
        s->text = t.text;
        body.push_back(std::move(s));
        ++p_;
      } else if (t.type == Tok::VarBegin) {
        ++p_;
        auto s = make_stmt(StmtKind::Output, t.pos);
        s->expr = parse_tuple();
        if (cur().type != Tok::VarEnd) error(cur().pos, "expected end of print statement, got " + describe(cur()));
        ++p_;
        body.push_back(std::move(s));
      } else if (t.type == Tok::BlockBegin) {
        const Token& name = peek();
        if (name.type != Tok::Name) error(name.pos, "expected a statement name, got " + describe(name));
        for (const char* e : ends) {
          if (name.text == e) {
            which = e;
            p_ += 2;
            return body;
          }
        }
        p_ += 2;
        body.push_back(parse_statement(name));
      } else {
        error(t.pos, "unexpected " + describe(t));
      }
    }
  }

  StmtPtr parse_statement(const Token& name) {
    const std::string& n = name.text;
    if (n == "if") return parse_if(name.pos);
    if (n == "for") return parse_for(name.pos);
    if (n == "set") return parse_set(name.pos);
    if (n == "macro") return parse_macro(name.pos);
    if (n == "break" || n == "continue") {
      expect_block_end();
      return make_stmt(n == "break" ? StmtKind::Break : StmtKind::Continue, name.pos);
    }
    if (n == "generation") {
      expect_block_end();
      auto s = make_stmt(StmtKind::Block, name.pos);
      std::string end;
      s->body = parse_body({"endgeneration"}, end);
      expect_block_end();
      return s;
    }
    if (n == "filter") {
      auto s = make_stmt(StmtKind::FilterBlock, name.pos);
      s->expr = make(ExprKind::Name, name.pos);
      s->expr->name = "\x01filter_body";
      do {
        s->expr = parse_filter(std::move(s->expr));
      } while (skip_op("|"));
      expect_block_end();
      std::string end;
      s->body = parse_body({"endfilter"}, end);
      expect_block_end();
      return s;
    }
    if (n == "do") {
      auto s = make_stmt(StmtKind::Do, name.pos);
      s->expr = parse_tuple();
      expect_block_end();
      return s;
    }
    if (n.rfind("end", 0) == 0 || n == "elif" || n == "else")
      error(name.pos, "unexpected '" + n + "' tag with no open block to close");
    error(name.pos, "unknown tag '" + n + "'");
  }

  StmtPtr parse_if(int pos) {
    auto s = make_stmt(StmtKind::If, pos);
    ExprPtr cond = parse_tuple();
    expect_block_end();
    while (true) {
      std::string end;
      Body body = parse_body({"elif", "else", "endif"}, end);
      s->branches.push_back(Branch{std::move(cond), std::move(body)});
      if (end == "elif") {
        cond = parse_tuple();
        expect_block_end();
        continue;
      }
      expect_block_end();
      if (end == "else") {
        Body else_body = parse_body({"endif"}, end);
        expect_block_end();
        s->branches.push_back(Branch{nullptr, std::move(else_body)});
      }
      return s;
    }
  }

  std::vector<std::string> parse_targets() {
    std::vector<std::string> names;
    bool paren = skip_op("(");
    do {
      names.push_back(expect_name());
    } while (skip_op(","));
    if (paren) expect_op(")");
    return names;
  }

  StmtPtr parse_for(int pos) {
    auto s = make_stmt(StmtKind::For, pos);
    s->targets = parse_targets();
    if (!skip_name("in")) error(cur().pos, "expected 'in', got " + describe(cur()));
    s->expr = parse_tuple(false);
    if (skip_name("if")) s->cond = parse_expr();
    if (is_name("recursive")) error(cur().pos, "recursive loops are not supported");
    expect_block_end();
    std::string end;
    s->body = parse_body({"else", "endfor"}, end);
    expect_block_end();
    if (end == "else") {
      s->else_body = parse_body({"endfor"}, end);
      expect_block_end();
    }
    return s;
  }

  StmtPtr parse_set(int pos) {
    auto s = make_stmt(StmtKind::Set, pos);
    int name_pos = cur().pos;
    std::string first = expect_name();
    if (skip_op(".")) {
      s->cond = make(ExprKind::Name, name_pos);
      s->cond->name = first;
      s->text = expect_name();
    } else {
      s->targets.push_back(first);
      while (skip_op(",")) s->targets.push_back(expect_name());
    }
    if (skip_op("=")) {
      s->expr = parse_tuple();
      expect_block_end();
      return s;
    }
    if (s->cond || s->targets.size() != 1) error(cur().pos, "expected '=' in set statement");
    s->kind = StmtKind::SetBlock;
    if (is_op("|")) {
      s->expr = make(ExprKind::Name, cur().pos);
      s->expr->name = "\x01filter_body";
      while (skip_op("|")) s->expr = parse_filter(std::move(s->expr));
    }
    expect_block_end();
    std::string end;
    s->body = parse_body({"endset"}, end);
    expect_block_end();
    return s;
  }

  StmtPtr parse_macro(int pos) {
    auto s = make_stmt(StmtKind::Macro, pos);
    s->text = expect_name();
    expect_op("(");
    while (!skip_op(")")) {
      if (!s->params.empty()) expect_op(",");
      if (skip_op(")")) break;
      s->params.push_back(expect_name());
      s->defaults.push_back(skip_op("=") ? parse_expr() : nullptr);
    }
    expect_block_end();
    std::string end;
    s->body = parse_body({"endmacro"}, end);
    if (cur().type == Tok::Name) ++p_;  // {% endmacro name %}
    expect_block_end();
    return s;
  }

  // ---- expressions ----
  // An expression or a bare tuple `a, b` (as in {% set a, b = ... %}).
  ExprPtr parse_tuple(bool with_cond = true) {
    int pos = cur().pos;
    ExprPtr first = parse_expr(with_cond);
    if (!is_op(",")) return first;
    auto t = make(ExprKind::Tuple, pos);
    t->args.push_back(std::move(first));
    while (skip_op(",")) {
      if (cur().type == Tok::BlockEnd || cur().type == Tok::VarEnd || is_op(")")) break;
      t->args.push_back(parse_expr(with_cond));
    }
    return fin(std::move(t));
  }

  ExprPtr parse_expr(bool with_cond = true) {
    Nest nest(*this, cur().pos, "expression");
    return with_cond ? parse_condexpr() : parse_or();
  }

  ExprPtr parse_condexpr() {
    int pos = cur().pos;
    ExprPtr e = parse_or();
    while (skip_name("if")) {
      auto c = make(ExprKind::Cond, pos);
      c->args.push_back(parse_or());
      c->args.push_back(std::move(e));
      c->args.push_back(skip_name("else") ? parse_condexpr() : nullptr);
      e = fin(std::move(c));
    }
    return e;
  }

  ExprPtr binary(ExprKind kind, ExprPtr a, ExprPtr b, int pos, BinOp op = BinOp::Add) {
    auto e = make(kind, pos);
    e->op = op;
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return fin(std::move(e));
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      int pos = t_[p_++].pos;
      e = binary(ExprKind::Or, std::move(e), parse_and(), pos);
    }
    return e;
  }
  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      int pos = t_[p_++].pos;
      e = binary(ExprKind::And, std::move(e), parse_not(), pos);
    }
    return e;
  }
  ExprPtr parse_not() {
    if (is_name("not")) {
      Nest nest(*this, cur().pos, "expression");
      auto e = make(ExprKind::Not, t_[p_++].pos);
      e->args.push_back(parse_not());
      return fin(std::move(e));
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    ExprPtr e = parse_math1();
    while (true) {
      int pos = cur().pos;
      BinOp op;
      if (skip_op("=="))
        op = BinOp::Eq;
      else if (skip_op("!="))
        op = BinOp::Ne;
      else if (skip_op("<"))
        op = BinOp::Lt;
      else if (skip_op("<="))
        op = BinOp::Le;
      else if (skip_op(">"))
        op = BinOp::Gt;
      else if (skip_op(">="))
        op = BinOp::Ge;
      else if (skip_name("in"))
        op = BinOp::In;
      else if (is_name("not") && peek().type == Tok::Name && peek().text == "in") {
        p_ += 2;
        op = BinOp::NotIn;
      } else {
        return e;
      }
      e = binary(ExprKind::Binary, std::move(e), parse_math1(), pos, op);
    }
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& t = t_[p_++];
      e = binary(ExprKind::Binary, std::move(e), parse_concat(), t.pos, t.text == "+" ? BinOp::Add : BinOp::Sub);
    }
    return e;
  }
  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      int pos = t_[p_++].pos;
      e = binary(ExprKind::Binary, std::move(e), parse_math2(), pos, BinOp::Concat);
    }
    return e;
  }
  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& t = t_[p_++];
      BinOp op = t.text == "*"    ? BinOp::Mul
                 : t.text == "/"  ? BinOp::Div
                 : t.text == "//" ? BinOp::FloorDiv
                                  : BinOp::Mod;
      e = binary(ExprKind::Binary, std::move(e), parse_pow(), t.pos, op);
    }
    return e;
  }
  ExprPtr parse_pow() {
    ExprPtr e = parse_unary();
    while (is_op("**")) {
      int pos = t_[p_++].pos;
      e = binary(ExprKind::Binary, std::move(e), parse_unary(), pos, BinOp::Pow);
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter = true) {
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      Nest nest(*this, cur().pos, "expression");
      const Token& t = t_[p_++];
      e = make(t.text == "-" ? ExprKind::Neg : ExprKind::Pos, t.pos);
      e->args.push_back(parse_unary(false));
      e = fin(std::move(e));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    auto lit = [&](Value v) {
      auto e = make(ExprKind::Literal, t.pos);
      e->literal = std::move(v);
      return e;
    };
    switch (t.type) {
      case Tok::Name: {
        ++p_;
        if (t.text == "true" || t.text == "True") return lit(Value::boolean(true));
        if (t.text == "false" || t.text == "False") return lit(Value::boolean(false));
        if (t.text == "none" || t.text == "None") return lit(Value::none());
        auto e = make(ExprKind::Name, t.pos);
        e->name = t.text;
        return e;
      }
      case Tok::String: {
        std::string s;
        while (cur().type == Tok::String) s += t_[p_++].text;
        return lit(Value::string(std::move(s)));
      }
      case Tok::Int: ++p_; return lit(Value::integer(t.i));
      case Tok::Float: ++p_; return lit(Value::number(t.f));
      case Tok::Op:
        if (t.text == "(") {
          ++p_;
          if (skip_op(")")) return make(ExprKind::Tuple, t.pos);
          ExprPtr e = parse_expr();
          if (is_op(",")) {
            auto tup = make(ExprKind::Tuple, t.pos);
            tup->args.push_back(std::move(e));
            while (skip_op(",") && !is_op(")")) tup->args.push_back(parse_expr());
            e = fin(std::move(tup));
          }
          expect_op(")");
          return e;
        }
        if (t.text == "[") {
          ++p_;
          auto e = make(ExprKind::List, t.pos);
          while (!skip_op("]")) {
            if (!e->args.empty()) expect_op(",");
            if (skip_op("]")) break;
            e->args.push_back(parse_expr());
          }
          return fin(std::move(e));
        }
        if (t.text == "{") {
          ++p_;
          auto e = make(ExprKind::Dict, t.pos);
          while (!skip_op("}")) {
            if (!e->args.empty()) expect_op(",");
            if (skip_op("}")) break;
            e->args.push_back(parse_expr());
            expect_op(":");
            e->args.push_back(parse_expr());
          }
          return fin(std::move(e));
        }
        break;
      default: break;
    }
    error(t.pos, "unexpected " + describe(t));
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      int pos = cur().pos;
      if (skip_op(".")) {
        if (cur().type == Tok::Int) {
          auto g = make(ExprKind::GetItem, pos);
          g->args.push_back(std::move(e));
          auto idx = make(ExprKind::Literal, cur().pos);
          idx->literal = Value::integer(cur().i);
          ++p_;
          g->args.push_back(std::move(idx));
          e = fin(std::move(g));
          continue;
        }
        auto g = make(ExprKind::GetAttr, pos);
        g->name = expect_name();
        g->args.push_back(std::move(e));
        e = fin(std::move(g));
      } else if (skip_op("[")) {
        e = parse_subscript(std::move(e), pos);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj, int pos) {
    ExprPtr parts[3];
    bool is_slice = false;
    if (!is_op(":")) parts[0] = parse_expr();
    if (skip_op(":")) {
      is_slice = true;
      if (!is_op(":") && !is_op("]")) parts[1] = parse_expr();
      if (skip_op(":") && !is_op("]")) parts[2] = parse_expr();
    }
    expect_op("]");
    auto e = make(is_slice ? ExprKind::Slice : ExprKind::GetItem, pos);
    e->args.push_back(std::move(obj));
    for (int k = 0; k < (is_slice ? 3 : 1); ++k) e->args.push_back(std::move(parts[k]));
    return fin(std::move(e));
  }

  // Reads "(args)" into e's args (after any already there) and kwargs.
  void parse_call_args(Expr& e) {
    expect_op("(");
    bool first = true;
    while (!skip_op(")")) {
      if (!first) expect_op(",");
      first = false;
      if (skip_op(")")) break;
      if (is_op("*") || is_op("**")) error(cur().pos, "*args and **kwargs in calls are not supported");
      if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == "=") {
        std::string key = t_[p_].text;
        p_ += 2;
        e.kwargs.emplace_back(std::move(key), parse_expr());
      } else {
        if (!e.kwargs.empty()) error(cur().pos, "positional argument follows keyword argument");
        e.args.push_back(parse_expr());
      }
    }
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto e = make(ExprKind::Call, cur().pos);
    e->args.push_back(std::move(callee));
    parse_call_args(*e);
    return fin(std::move(e));
  }

  // After '|': name [(args)].
  ExprPtr parse_filter(ExprPtr input) {
    int pos = cur().pos;
    auto e = make(ExprKind::Filter, pos);
    e->name = expect_name();
    while (skip_op(".")) e->name += "." + expect_name();
    e->filter = find_filter(e->name);
    if (!e->filter) error(pos, "unknown filter '" + e->name + "'");
    e->args.push_back(std::move(input));
    if (is_op("(")) parse_call_args(*e);
    return fin(std::move(e));
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (skip_op("|")) {
        e = parse_filter(std::move(e));
      } else if (is_name("is")) {
        int pos = t_[p_++].pos;
        auto t = make(ExprKind::Test, pos);
        t->negate = skip_name("not");
        int name_pos = cur().pos;
        t->name = expect_name();
        t->test = find_test(t->name);
        if (!t->test) error(name_pos, "unknown test '" + t->name + "'");
        t->args.push_back(std::move(e));
        const Token& n = cur();
        if (is_op("(")) {
          parse_call_args(*t);
        } else if ((n.type == Tok::Name || n.type == Tok::String || n.type == Tok::Int || n.type == Tok::Float ||
                    is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          if (is_name("is")) error(n.pos, "you cannot chain multiple tests with is");
          t->args.push_back(parse_postfix(parse_primary()));
        }
        e = fin(std::move(t));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  const std::vector<Token>& t_;
  const SourceMap& map_;
  size_t p_ = 0;
  int stmt_nest_ = 0, expr_nest_ = 0;
};

}  // namespace

Body parse_tokens(const std::vector<Token>& tokens, const SourceMap& map) { return Parser(tokens, map).parse_all(); }

}  // namespace lmtune::jinja
