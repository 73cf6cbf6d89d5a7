// The schema compiler: each supported keyword turned into nodes, everything else refused by path.
// Object properties come out in schema order (required ones always, optional ones may be skipped),
// so one pass over the bytes decides validity without lookahead; anyOf / type lists need
// branches that start with different characters for the same reason.
#include "runtime/json_schema.h"

#include <cctype>
#include <set>

namespace lmtune {

namespace {

using ojson = nlohmann::ordered_json;

const std::set<std::string> kAnnotations = {"title",    "description", "default",  "examples",  "$schema", "$id",
                                            "$comment", "deprecated",  "readOnly", "writeOnly", "strict"};
const std::set<std::string> kSupported = {"type",      "properties", "required", "additionalProperties",
                                          "items",     "minItems",   "maxItems", "minLength",
                                          "maxLength", "enum",       "const",    "anyOf",
                                          "oneOf"};

std::string join(const std::string& path, const std::string& key) { return path.empty() ? key : path + "." + key; }

std::string compact(const ojson& v) { return v.dump(-1, ' ', false, ojson::error_handler_t::replace); }

// A JSON value as a Python literal (strings keep JSON's quoting, which Python reads alike).
std::string python_literal(const ojson& v) {
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  if (v.is_null()) return "None";
  if (!v.is_array() && !v.is_object()) return compact(v);
  std::string out(1, v.is_array() ? '[' : '{');
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (out.size() > 1) out.push_back(',');
    if (v.is_object()) {
      out.append(compact(ojson(it.key())));
      out.push_back(':');
    }
    out.append(python_literal(*it));
  }
  out.push_back(v.is_array() ? ']' : '}');
  return out;
}

bool is_identifier(const std::string& s) {
  if (s.empty() || std::isdigit(static_cast<unsigned char>(s[0]))) return false;
  for (char c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  return true;
}

void set_first(SchemaNode& n, const char* chars) {
  for (const char* p = chars; *p; ++p) n.first[uint8_t(*p)] = true;
}

class Compiler {
 public:
  explicit Compiler(JsonGrammar& g, bool python = false) : g_(g), python_(python) {}

  const SchemaNode* any() {
    SchemaNode* n = add();
    n->kind = SchemaNode::Kind::any;
    set_first(*n, python_ ? "{[\"-0123456789TFN" : "{[\"-0123456789tfn");
    return n;
  }

  SchemaNode* add() {
    SchemaNode* n = g_.add();
    n->python = python_;
    return n;
  }

  std::string literal_text(const ojson& v) const { return python_ ? python_literal(v) : compact(v); }

  const SchemaNode* literal(std::vector<std::string> lits, const std::string& path) {
    if (lits.empty() || lits.size() > JsonGrammar::kMaxAlternatives)
      throw SchemaError(path, "'" + path + "' must list between 1 and " +
                                  std::to_string(JsonGrammar::kMaxAlternatives) + " values");
    SchemaNode* n = add();
    n->kind = SchemaNode::Kind::literal;
    for (const std::string& l : lits) n->first[uint8_t(l[0])] = true;
    n->literals = std::move(lits);
    return n;
  }

  const SchemaNode* one_of(std::vector<const SchemaNode*> branches, const std::string& path) {
    if (branches.size() == 1) return branches[0];
    SchemaNode* n = add();
    n->kind = SchemaNode::Kind::one_of;
    for (const SchemaNode* b : branches)
      for (int c = 0; c < 256; ++c) {
        if (!b->first[size_t(c)]) continue;
        if (n->first[size_t(c)])
          throw SchemaError(path, "'" + path + "': branches that can start with the same character ('" +
                                      std::string(1, char(c)) +
                                      "') are not supported by constrained decoding (e.g. two object types)");
        n->first[size_t(c)] = true;
      }
    n->parts = std::move(branches);
    return n;
  }

  const SchemaNode* compile(const ojson& s, const std::string& path, int depth) {
    const std::string where = path.empty() ? "schema" : path;
    if (depth > JsonGrammar::kMaxDepth) throw SchemaError(path, "'" + where + "' nests too deeply");
    if (s.is_boolean()) {
      if (s.get<bool>()) return any();
      throw SchemaError(path, "'" + where + "' is false: no value can match it");
    }
    if (!s.is_object()) throw SchemaError(path, "'" + where + "' must be a JSON schema object");
    for (auto it = s.begin(); it != s.end(); ++it)
      if (!kAnnotations.count(it.key()) && !kSupported.count(it.key()))
        throw SchemaError(join(path, it.key()),
                          "'" + join(path, it.key()) + "': the keyword '" + it.key() +
                              "' is not supported by lmtune's constrained decoding (supported: type, properties, "
                              "required, additionalProperties, items, minItems, maxItems, minLength, maxLength, "
                              "enum, const, anyOf, oneOf)");
    if (s.contains("const")) return literal({literal_text(s["const"])}, join(path, "const"));
    if (s.contains("enum")) {
      const ojson& e = s["enum"];
      if (!e.is_array()) throw SchemaError(join(path, "enum"), "'" + join(path, "enum") + "' must be an array");
      std::vector<std::string> lits;
      for (const auto& v : e) lits.push_back(literal_text(v));
      return literal(std::move(lits), join(path, "enum"));
    }
    for (const char* k : {"anyOf", "oneOf"}) {
      if (!s.contains(k)) continue;
      const std::string p = join(path, k);
      const ojson& a = s[k];
      if (!a.is_array() || a.empty()) throw SchemaError(p, "'" + p + "' must be a non-empty array of schemas");
      std::vector<const SchemaNode*> branches;
      for (size_t i = 0; i < a.size(); ++i) branches.push_back(compile(a[i], p + "." + std::to_string(i), depth + 1));
      return one_of(std::move(branches), p);
    }
    if (s.contains("type")) {
      const ojson& t = s["type"];
      const std::string p = join(path, "type");
      if (t.is_string()) return typed(s, t.get<std::string>(), path, depth);
      if (!t.is_array() || t.empty()) throw SchemaError(p, "'" + p + "' must be a type name or a list of them");
      std::vector<const SchemaNode*> branches;
      for (const auto& name : t) {
        if (!name.is_string()) throw SchemaError(p, "'" + p + "' must list type names");
        branches.push_back(typed(s, name.get<std::string>(), path, depth));
      }
      return one_of(std::move(branches), p);
    }
    if (s.contains("properties") || s.contains("required")) return typed(s, "object", path, depth);
    if (s.contains("items")) return typed(s, "array", path, depth);
    return any();
  }

 private:
  static int64_t count(const ojson& s, const char* key, const std::string& path, int64_t fallback) {
    if (!s.contains(key)) return fallback;
    const ojson& v = s[key];
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > (int64_t(1) << 30))
      throw SchemaError(join(path, key), "'" + join(path, key) + "' must be a non-negative integer");
    return v.get<int64_t>();
  }

  const SchemaNode* typed(const ojson& s, const std::string& type, const std::string& path, int depth) {
    SchemaNode* n = add();
    if (type == "object") {
      n->kind = SchemaNode::Kind::object;
      set_first(*n, "{");
      const ojson empty = ojson::object();
      const ojson& props = s.contains("properties") ? s["properties"] : empty;
      if (!props.is_object())
        throw SchemaError(join(path, "properties"), "'" + join(path, "properties") + "' must be an object");
      std::set<std::string> required;
      if (s.contains("required")) {
        const ojson& r = s["required"];
        const std::string p = join(path, "required");
        if (!r.is_array()) throw SchemaError(p, "'" + p + "' must be an array of property names");
        for (const auto& k : r) {
          if (!k.is_string()) throw SchemaError(p, "'" + p + "' must be an array of property names");
          if (!props.contains(k.get<std::string>()))
            throw SchemaError(p, "'" + p + "' names '" + k.get<std::string>() + "', which 'properties' lacks");
          required.insert(k.get<std::string>());
        }
      }
      if (props.size() > JsonGrammar::kMaxAlternatives)
        throw SchemaError(join(path, "properties"), "'" + join(path, "properties") + "' has more than " +
                                                        std::to_string(JsonGrammar::kMaxAlternatives) + " properties");
      for (auto it = props.begin(); it != props.end(); ++it) {
        n->keys.push_back(compact(ojson(it.key())));
        n->values.push_back(compile(it.value(), join(path, "properties." + it.key()), depth + 1));
        n->required.push_back(required.count(it.key()) > 0);
      }
      if (s.contains("additionalProperties") && !s["additionalProperties"].is_boolean() &&
          !s["additionalProperties"].is_object())
        throw SchemaError(join(path, "additionalProperties"),
                          "'" + join(path, "additionalProperties") + "' must be a boolean or a schema");
    } else if (type == "array") {
      n->kind = SchemaNode::Kind::array;
      set_first(*n, "[");
      if (s.contains("items") && s["items"].is_array())
        throw SchemaError(join(path, "items"), "'" + join(path, "items") + "': tuple items are not supported");
      n->items = s.contains("items") ? compile(s["items"], join(path, "items"), depth + 1) : any();
      n->min_items = count(s, "minItems", path, 0);
      n->max_items = count(s, "maxItems", path, -1);
      if (n->max_items >= 0 && n->max_items < n->min_items)
        throw SchemaError(join(path, "maxItems"), "'" + join(path, "maxItems") + "' is below minItems");
    } else if (type == "string") {
      n->kind = SchemaNode::Kind::string;
      set_first(*n, "\"");
      n->min_length = count(s, "minLength", path, 0);
      n->max_length = count(s, "maxLength", path, -1);
      if (n->max_length >= 0 && n->max_length < n->min_length)
        throw SchemaError(join(path, "maxLength"), "'" + join(path, "maxLength") + "' is below minLength");
    } else if (type == "number" || type == "integer") {
      n->kind = type == "number" ? SchemaNode::Kind::number : SchemaNode::Kind::integer;
      set_first(*n, "-0123456789");
    } else if (type == "boolean") {
      return literal({literal_text(true), literal_text(false)}, path);
    } else if (type == "null") {
      return literal({literal_text(nullptr)}, path);
    } else {
      throw SchemaError(join(path, "type"), "'" + join(path, "type") + "': unknown type '" + type + "'");
    }
    return n;
  }

  JsonGrammar& g_;
  bool python_;
};

// A compiled object schema turned into Python keyword arguments (keys "name=", no braces).
const SchemaNode* as_kwargs(JsonGrammar& g, const SchemaNode* node, const std::string& path) {
  SchemaNode* n = g.add();
  n->python = true;
  n->kwargs = true;
  n->kind = SchemaNode::Kind::object;
  if (node->kind == SchemaNode::Kind::object) {
    *n = *node;
    n->kwargs = true;
    for (std::string& k : n->keys) {
      const std::string name = ojson::parse(k).get<std::string>();
      if (!is_identifier(name))
        throw SchemaError(join(path, "properties." + name),
                          "'" + join(path, "properties." + name) +
                              "': a pythonic call's argument names must be identifiers");
      k = name + "=";
    }
  } else if (node->kind != SchemaNode::Kind::any) {
    throw SchemaError(path, "'" + (path.empty() ? std::string("parameters") : path) + "' must be an object schema");
  }
  n->first = {};
  for (const std::string& k : n->keys) n->first[uint8_t(k[0])] = true;
  return n;
}

}  // namespace

SchemaNode* JsonGrammar::add() {
  nodes_.push_back(std::make_unique<SchemaNode>());
  return nodes_.back().get();
}

std::shared_ptr<const JsonGrammar> JsonGrammar::from_schema(const ojson& schema) {
  auto g = std::make_shared<JsonGrammar>();
  g->root_ = Compiler(*g).compile(schema, "", 0);
  return g;
}

std::shared_ptr<const JsonGrammar> JsonGrammar::any_object() {
  auto g = std::make_shared<JsonGrammar>();
  SchemaNode* n = g->add();  // an "any" value whose first byte can only open an object
  n->kind = SchemaNode::Kind::any;
  set_first(*n, "{");
  g->root_ = n;
  return g;
}

std::shared_ptr<const JsonGrammar> JsonGrammar::wrapped_choice(
    const std::string& prefix, const std::vector<std::pair<std::string, ojson>>& choices, const std::string& suffix,
    bool python) {
  if (choices.empty() || choices.size() > kMaxAlternatives)
    throw SchemaError("", "a forced choice needs between 1 and " + std::to_string(kMaxAlternatives) + " alternatives");
  auto g = std::make_shared<JsonGrammar>();
  Compiler c(*g, python);
  SchemaNode* choice = g->add();
  choice->kind = SchemaNode::Kind::choice;
  for (size_t i = 0; i < choices.size(); ++i) {
    const std::string& lit = choices[i].first;
    if (lit.empty()) throw SchemaError(std::to_string(i), "an empty choice literal");
    for (const std::string& other : choice->literals)
      if (other.compare(0, lit.size(), lit) == 0 || lit.compare(0, other.size(), other) == 0)
        throw SchemaError(std::to_string(i), "two choices start alike: '" + lit + "' and '" + other + "'");
    choice->literals.push_back(lit);
    const SchemaNode* value = c.compile(choices[i].second, std::to_string(i), 0);
    choice->values.push_back(python ? as_kwargs(*g, value, std::to_string(i)) : value);
    choice->first[uint8_t(lit[0])] = true;
  }
  SchemaNode* seq = g->add();
  seq->kind = SchemaNode::Kind::sequence;
  for (const std::string* lit : {&prefix, static_cast<const std::string*>(nullptr), &suffix}) {
    if (lit && lit->empty()) continue;
    seq->literals.push_back(lit ? *lit : "");
    seq->parts.push_back(lit ? nullptr : choice);
  }
  seq->first = prefix.empty() ? choice->first : std::array<bool, 256>{};
  if (!prefix.empty()) seq->first[uint8_t(prefix[0])] = true;
  g->root_ = seq;
  return g;
}

}  // namespace lmtune
