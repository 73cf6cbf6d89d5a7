// The option table: argparse's command-line rules, typed YAML reads, --help and JSON from the rows.
#include "options.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <regex>

#include <yaml-cpp/yaml.h>

#include "core/error.h"

namespace lmtune::cli {

using json = nlohmann::json;

namespace {

// argparse's type names on the command line, and the same types as a config file's error says them.
std::string config_phrase(const std::string& type) {
  if (type == "int") return "an integer";
  if (type == "float") return "a number";
  if (type == "bool") return "true or false";
  if (type == "list") return "a list of strings";
  return "a string";
}

bool parse_int(const std::string& s, int64_t& out) {
  try {
    size_t pos = 0;
    long long v = std::stoll(s, &pos);
    while (pos < s.size() && std::isspace(static_cast<unsigned char>(s[pos]))) ++pos;  // int(" 8 ") is 8
    if (pos != s.size()) return false;
    out = v;
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

bool parse_float(const std::string& s, double& out) {
  try {
    size_t pos = 0;
    double v = std::stod(s, &pos);
    while (pos < s.size() && std::isspace(static_cast<unsigned char>(s[pos]))) ++pos;
    if (pos != s.size()) return false;
    out = v;
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

// A quoted (or !!str-tagged) scalar is a string whatever its text.
bool quoted(const YAML::Node& n) { return n.Tag() == "!" || n.Tag() == "tag:yaml.org,2002:str"; }

bool yaml_null(const YAML::Node& n) {
  if (!n || n.IsNull()) return true;
  if (!n.IsScalar() || quoted(n)) return false;
  const std::string& s = n.Scalar();
  return s == "~" || s == "null" || s == "Null" || s == "NULL";
}

// YAML 1.1's booleans (PyYAML's resolver): -1 when the scalar is none.
int yaml_bool(const YAML::Node& n) {
  if (!n.IsScalar() || quoted(n)) return -1;
  const std::string& s = n.Scalar();
  for (const char* t : {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"})
    if (s == t) return 1;
  for (const char* f : {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"})
    if (s == f) return 0;
  return -1;
}

// A plain scalar that is a number (not a bool, null or quoted text).
bool plain_scalar(const YAML::Node& n) { return n.IsScalar() && !quoted(n) && !yaml_null(n) && yaml_bool(n) < 0; }

// The offending value as the file wrote it.
std::string show_yaml(const YAML::Node& n) {
  if (yaml_null(n)) return "null (no value)";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  if (quoted(n)) return json(n.Scalar()).dump() + " (quoted, so a string)";
  return n.Scalar();
}

std::string join(const std::vector<std::string>& v, const std::string& sep, const std::string& q = "") {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + q + v[i] + q;
  return out;
}

std::string snake_case(std::string s) {
  s.erase(0, s.find_first_not_of('-'));
  std::replace(s.begin(), s.end(), '-', '_');
  return s;
}

// Word-wraps text to `width` columns, later lines indented by `indent` spaces.
std::string wrap(const std::string& text, size_t indent, size_t width) {
  std::string out, line;
  size_t col = indent;
  size_t i = 0;
  while (i < text.size()) {
    size_t j = text.find(' ', i);
    if (j == std::string::npos) j = text.size();
    std::string word = text.substr(i, j - i);
    if (!line.empty() && col + 1 + word.size() > width) {
      out += line + "\n" + std::string(indent, ' ');
      line.clear();
      col = indent;
    }
    if (!line.empty()) {
      line += ' ';
      ++col;
    }
    line += word;
    col += word.size();
    i = j + 1;
  }
  return out + line;
}

}  // namespace

// --- converters ---

Arity arity_of(const bool*) { return Arity::none; }
Arity arity_of(const std::vector<std::string>*) { return Arity::some; }

void from_text(const std::vector<std::string>& v, bool& out) {
  if (v.empty()) {
    out = true;
    return;
  }
  std::string s = v[0];
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  if (s == "yes" || s == "true" || s == "t" || s == "y" || s == "1") {
    out = true;
  } else if (s == "no" || s == "false" || s == "f" || s == "n" || s == "0") {
    out = false;
  } else {
    throw BadValue{"bool"};
  }
}

void from_text(const std::vector<std::string>& v, int64_t& out) {
  if (!parse_int(v.at(0), out)) throw BadValue{"int"};
}

void from_text(const std::vector<std::string>& v, int& out) {
  int64_t x;
  if (!parse_int(v.at(0), x) || x < INT32_MIN || x > INT32_MAX) throw BadValue{"int"};
  out = int(x);
}

void from_text(const std::vector<std::string>& v, double& out) {
  if (!parse_float(v.at(0), out)) throw BadValue{"float"};
}

void from_text(const std::vector<std::string>& v, float& out) {
  double x;
  if (!parse_float(v.at(0), x)) throw BadValue{"float"};
  out = float(x);
}

void from_text(const std::vector<std::string>& v, std::string& out) { out = v.at(0); }
void from_text(const std::vector<std::string>& v, std::optional<std::string>& out) { out = v.at(0); }
void from_text(const std::vector<std::string>& v, std::vector<std::string>& out) { out = v; }
void from_text(const std::vector<std::string>& v, json& out) { out = v.at(0); }

void from_text(const std::vector<std::string>& v, std::optional<int64_t>& out) {
  int64_t x;
  from_text(v, x);
  out = x;
}

void from_yaml(const YAML::Node& n, bool& out) {
  int b = yaml_bool(n);
  if (b < 0) throw BadValue{"bool"};
  out = b == 1;
}

void from_yaml(const YAML::Node& n, int64_t& out) {
  if (!plain_scalar(n) || !parse_int(n.Scalar(), out)) throw BadValue{"int"};
}

void from_yaml(const YAML::Node& n, int& out) {
  int64_t x;
  from_yaml(n, x);
  if (x < INT32_MIN || x > INT32_MAX) throw BadValue{"int"};
  out = int(x);
}

void from_yaml(const YAML::Node& n, double& out) {
  if (!plain_scalar(n) || !parse_float(n.Scalar(), out)) throw BadValue{"float"};
}

void from_yaml(const YAML::Node& n, float& out) {
  double x;
  from_yaml(n, x);
  out = float(x);
}

void from_yaml(const YAML::Node& n, std::string& out) {
  if (!n.IsScalar() || yaml_null(n)) throw BadValue{"str"};
  out = n.Scalar();
}

void from_yaml(const YAML::Node& n, std::optional<std::string>& out) {
  if (yaml_null(n)) {
    out.reset();
    return;
  }
  std::string s;
  from_yaml(n, s);
  out = s;
}

void from_yaml(const YAML::Node& n, std::optional<int64_t>& out) {
  if (yaml_null(n)) {
    out.reset();
    return;
  }
  int64_t x;
  from_yaml(n, x);
  out = x;
}

void from_yaml(const YAML::Node& n, std::vector<std::string>& out) {
  if (yaml_null(n)) {
    out.clear();
    return;
  }
  if (!n.IsSequence()) throw BadValue{"list"};
  std::vector<std::string> v;
  for (const auto& x : n) {
    if (!x.IsScalar() || yaml_null(x)) throw BadValue{"list"};
    v.push_back(x.Scalar());
  }
  out = std::move(v);
}

void from_yaml(const YAML::Node& n, json& out) { out = yaml_to_json(n); }

namespace {
struct YamlBudget {
  const std::string& source;
  int64_t nodes = 0, bytes = 0;
  void walk(const YAML::Node& n, int depth) {
    if (depth > kMaxYamlDepth) fail("[config] ", source, ": YAML nested deeper than ", kMaxYamlDepth, " levels");
    if (++nodes > kMaxYamlNodes)
      fail("[config] ", source, ": YAML document expands to more than ", kMaxYamlNodes,
           " nodes (aliases of aliases, as in a 'billion laughs' document?)");
    if (n.IsScalar()) {
      bytes += int64_t(n.Scalar().size());
      if (bytes > kMaxYamlBytes)
        fail("[config] ", source, ": YAML document expands to more than ", kMaxYamlBytes,
             " bytes of values (aliases of aliases, as in a 'billion laughs' document?)");
    } else if (n.IsSequence()) {
      for (const auto& x : n) walk(x, depth + 1);
    } else if (n.IsMap()) {
      for (const auto& kv : n) {
        walk(kv.first, depth + 1);
        walk(kv.second, depth + 1);
      }
    }
  }
};
}  // namespace

void check_yaml_size(const YAML::Node& root, const std::string& source) {
  YamlBudget b{source};
  b.walk(root, 0);
}

json yaml_to_json(const YAML::Node& n) {
  if (yaml_null(n)) return nullptr;
  if (n.IsSequence()) {
    json a = json::array();
    for (const auto& x : n) a.push_back(yaml_to_json(x));
    return a;
  }
  if (n.IsMap()) {
    json o = json::object();
    for (const auto& kv : n) {
      if (!kv.first.IsScalar())  // yaml-cpp's own kind of error: the caller names the file, the mark the place
        throw YAML::ParserException(kv.first.Mark(),
                                    std::string("a mapping key must be text, not a ") + (kv.first.IsSequence() ? "list"
                                                                                         : kv.first.IsMap() ? "mapping"
                                                                                                            : "null"));
      o[kv.first.Scalar()] = yaml_to_json(kv.second);
    }
    return o;
  }
  const std::string& s = n.Scalar();
  if (quoted(n)) return s;
  if (int b = yaml_bool(n); b >= 0) return b == 1;
  int64_t i;
  if (parse_int(s, i)) return i;
  double d;
  if (parse_float(s, d)) return d;  // mlx-lm's loader reads 1e-5 as a float (PyYAML alone would not)
  return s;
}

std::string show_default(const json& v) {
  if (v.is_null()) return "";
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  if (v.is_number_integer()) return v.dump();
  if (v.is_number_float()) {  // Python's repr: 0.0, 20.0, 1e-05
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v.get<double>());
    std::string s = buf;
    if (s.find_first_of(".eni") == std::string::npos) s += ".0";
    return s;
  }
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array()) {
    std::vector<std::string> parts;
    for (const json& x : v) parts.push_back(x.is_string() ? x.get<std::string>() : x.dump());
    return join(parts, " ");
  }
  return "";
}

// --- Row ---

Row& Row::choices(std::vector<std::string> c) {
  choices_ = std::move(c);
  return *this;
}

Row& Row::key(std::string k) {
  key_ = std::move(k);
  return *this;
}

Row& Row::str2bool() {
  arity_ = Arity::one;
  default_text_ = show_default(get_json_());
  return *this;
}

Row& Row::cli_only() {
  in_config_ = false;
  return *this;
}

Row& Row::unrecorded() {
  record_ = Record::never;
  return *this;
}

Row& Row::record_when_set() {
  record_ = Record::when_set;
  return *this;
}

Row& Row::default_text(std::string t) {
  default_text_ = std::move(t);
  return *this;
}

Row& Row::on_yaml(std::function<void(const YAML::Node&, const std::string&)> f) {
  set_yaml_ = [f = std::move(f)](const YAML::Node& n, const std::string& source, bool) { f(n, source); };
  return *this;
}

// --- Options ---

Options::Options(std::string command, std::string usage, std::string description)
    : command_(std::move(command)), usage_(std::move(usage)), description_(std::move(description)) {}

void Options::group(std::string title) { group_ = std::move(title); }

Row& Options::new_row(const std::string& names, std::string metavar, std::string help, Arity arity) {
  Row& r = rows_.emplace_back();
  for (size_t i = 0; i < names.size();) {
    size_t j = names.find(", ", i);
    if (j == std::string::npos) j = names.size();
    r.names_.push_back(names.substr(i, j - i));
    i = j + 2;
  }
  for (const std::string& n : r.names_) {
    if (n == "-h" || n == "--help" || std::count_if(rows_.begin(), rows_.end() - 1, [&](const Row& o) {
          return std::find(o.names_.begin(), o.names_.end(), n) != o.names_.end();
        }))
      throw std::logic_error("option " + n + " declared twice in lmtune " + command_);
  }
  for (const std::string& n : r.names_)
    if (n.rfind("--", 0) == 0 && r.key_.empty()) r.key_ = snake_case(n);
  r.metavar_ = std::move(metavar);
  r.help_ = std::move(help);
  r.group_ = group_;
  r.arity_ = arity;
  return r;
}

Row& Options::add_config_key(const std::string& key, std::string metavar, std::string help,
                             std::function<json()> to_json) {
  Row& r = new_row("", std::move(metavar), std::move(help), Arity::one);
  r.key_ = key;
  r.get_json_ = std::move(to_json);
  return r;
}

Row* Options::find_flag(const std::string& name) {
  for (Row& r : rows_)
    if (std::find(r.names_.begin(), r.names_.end(), name) != r.names_.end()) return &r;
  return nullptr;
}

Row* Options::find_key(const std::string& key) {
  for (Row& r : rows_)
    if (r.key_ == key) return &r;
  return nullptr;
}

bool Options::parse(int argc, char** argv) {
  static const std::regex negative_number("^-[0-9]+$|^-[0-9]*\\.[0-9]+$");
  std::vector<std::string> unrecognized;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(help().c_str(), stdout);
      return false;
    }
    if (a.size() < 2 || a[0] != '-' || std::regex_match(a, negative_number)) {
      unrecognized.push_back(a);  // no command takes positional arguments
      continue;
    }
    Row* r = find_flag(a);
    std::optional<std::string> inline_value;
    if (!r && a.find('=') != std::string::npos) {  // --flag=value, -p=value
      size_t eq = a.find('=');
      if ((r = find_flag(a.substr(0, eq)))) inline_value = a.substr(eq + 1);
    }
    if (!r || !r->set_text_) {
      unrecognized.push_back(a);
      continue;
    }
    const std::string shown = "argument " + join(r->names_, "/");
    std::vector<std::string> values;
    if (r->arity_ == Arity::none) {
      if (inline_value) throw UsageError(shown + ": ignored explicit argument '" + *inline_value + "'");
    } else if (inline_value) {
      values.push_back(*inline_value);
    } else if (r->arity_ == Arity::one) {
      // The next argument whatever it looks like, so that -p - and --num-layers -1 work.
      if (i + 1 >= argc) throw UsageError(shown + ": expected one argument", UsageError::missing_value, a);
      values.push_back(argv[++i]);
    }
    if (r->arity_ == Arity::some) {
      while (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) values.push_back(argv[++i]);
      if (values.empty()) throw UsageError(shown + ": expected at least one argument", UsageError::missing_value, a);
    }
    for (const std::string& v : values)
      if (!r->choices_.empty() && std::find(r->choices_.begin(), r->choices_.end(), v) == r->choices_.end())
        throw UsageError(shown + ": invalid choice: '" + v + "' (choose from " + join(r->choices_, ", ", "'") + ")");
    try {
      r->set_text_(values);
    } catch (const BadValue& b) {
      if (b.expected == "bool") throw UsageError(shown + ": Boolean value expected, got '" + values.at(0) + "'");
      throw UsageError(shown + ": invalid " + b.expected + " value: '" + values.at(0) + "'");
    }
    r->source_ = Row::Source::cli;
  }
  if (!unrecognized.empty())
    throw UsageError("unrecognized arguments: " + join(unrecognized, " "), UsageError::unknown_argument,
                     unrecognized[0]);
  return true;
}

json Options::read_yaml(const YAML::Node& map, const std::string& source, const std::string& path_prefix) {
  json unknown = json::object();
  if (yaml_null(map)) return unknown;
  if (!map.IsMap()) {
    if (path_prefix.empty()) fail("[config] ", source, " is not a mapping of keys to values");
    fail("[config] ", source, ": key '", path_prefix.substr(0, path_prefix.size() - 1), "' must be a mapping, got ",
         show_yaml(map));
  }
  for (const auto& kv : map) {
    const std::string k = kv.first.as<std::string>();
    const std::string path = path_prefix + k;
    Row* r = find_key(k);
    if (!r || !r->in_config_ || !r->set_yaml_) {
      unknown[k] = yaml_to_json(kv.second);
      continue;
    }
    const YAML::Node& v = kv.second;
    if (!r->choices_.empty() && v.IsScalar() && !yaml_null(v) &&
        std::find(r->choices_.begin(), r->choices_.end(), v.Scalar()) == r->choices_.end())
      fail("[config] ", source, ": key '", path, "' must be one of ", join(r->choices_, ", ", "'"), ", got ",
           show_yaml(v));
    try {
      r->set_yaml_(v, source, r->source_ != Row::Source::cli);  // validated even where the command line wins
    } catch (const BadValue& b) {
      fail("[config] ", source, ": key '", path, "' must be ", config_phrase(b.expected), ", got ", show_yaml(v));
    }
    if (r->source_ == Row::Source::none) r->source_ = Row::Source::config;
  }
  return unknown;
}

json Options::to_json() const {
  json j = json::object();
  for (const Row& r : rows_) {
    if (r.record_ == Row::Record::never || r.key_.empty() || !r.get_json_) continue;
    if (r.record_ == Row::Record::when_set && r.source_ == Row::Source::none) continue;
    j[r.key_] = r.get_json_();
  }
  return j;
}

std::string Options::help() const {
  constexpr size_t kColumn = 32, kWidth = 100;
  std::string out = "usage: " + usage_ + "\n\n" + wrap(description_, 0, kWidth) + "\n";
  std::vector<std::string> groups;  // in order of first appearance; -h heads the first
  for (const Row& r : rows_)
    if (std::find(groups.begin(), groups.end(), r.group_) == groups.end()) groups.push_back(r.group_);
  if (groups.empty()) groups.push_back("");
  auto line = [&](std::string left, std::string text) {
    left = "  " + left;
    if (left.size() + 2 > kColumn) {
      left += "\n" + std::string(kColumn, ' ');
    } else {
      left.resize(kColumn, ' ');
    }
    out += left + wrap(text, kColumn, kWidth) + "\n";
  };
  for (const std::string& g : groups) {
    out += "\n" + (g.empty() ? std::string("options") : g) + ":\n";
    if (g == groups[0]) line("-h, --help", "show this help and exit");
    for (const Row& r : rows_) {
      if (r.group_ != g) continue;
      std::string metavar = r.metavar_.empty() && !r.choices_.empty() ? join(r.choices_, "|") : r.metavar_;
      if (r.arity_ == Arity::some) metavar += " [" + metavar + " ...]";
      std::string left = r.names_.empty() ? r.key_ + ":" : join(r.names_, ", ");
      if (!metavar.empty() && (r.arity_ != Arity::none || r.names_.empty())) left += " " + metavar;
      std::string text = r.help_;
      if (!r.default_text_.empty()) text += (text.empty() ? "(default: " : " (default: ") + r.default_text_ + ")";
      line(left, text);
    }
  }
  return out;
}

int run_with_options(Options& opts, int argc, char** argv, const std::function<int()>& body) {
  try {
    if (!opts.parse(argc, argv)) return 0;
    return body();
  } catch (const UsageError& e) {
    std::fprintf(stderr, "lmtune %s: error: %s (see lmtune %s --help)\n", opts.command().c_str(), e.what(),
                 opts.command().c_str());
    return 2;
  }
}

}  // namespace lmtune::cli
