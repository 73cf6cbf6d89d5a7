// Options declared once: a command's flags and config-file keys are the rows of one table, each
// bound to a field of the command's typed options struct (the field's type is the option's type,
// its initial value the default). The table parses argv with argparse's rules and messages, reads
// a YAML config (CLI > config > default) with errors naming key and value, prints --help, and
// records the values as JSON.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace YAML {
class Node;
}

namespace lmtune::cli {

// A command-line mistake: the command prints "lmtune CMD: error: MSG (see ...)" and exits 2.
// kind and arg let a command keep an older wording (tokenize).
struct UsageError : std::runtime_error {
  enum Kind { other, unknown_argument, missing_value };
  explicit UsageError(const std::string& msg, Kind k = other, std::string a = "")
      : std::runtime_error(msg), kind(k), arg(std::move(a)) {}
  Kind kind;
  std::string arg;  // unknown_argument: the first unrecognized argument; missing_value: the flag
};

// A value that does not fit a field; the table adds the flag or key and the value.
struct BadValue {
  std::string expected;  // "int", "float", "bool", "str" or "list" (argparse's names; a config's error says
                         // "an integer", "a number", ...)
};

// How many command-line values an option takes: none (store_true), one, or one or more (nargs='+').
enum class Arity { none, one, some };

// The converters, one overload per field type. from_text reads command-line values as argparse's
// type functions do; from_yaml wants the scalar's YAML type (a quoted "8" is a string, not an int,
// and is refused rather than passed through as mlx-lm's loader does).
Arity arity_of(const bool*);
Arity arity_of(const std::vector<std::string>*);
template <class V>
Arity arity_of(const V*) {
  return Arity::one;
}

void from_text(const std::vector<std::string>& v, bool& out);  // none: true; one: argparse's str2bool
void from_text(const std::vector<std::string>& v, int& out);
void from_text(const std::vector<std::string>& v, int64_t& out);
void from_text(const std::vector<std::string>& v, float& out);
void from_text(const std::vector<std::string>& v, double& out);
void from_text(const std::vector<std::string>& v, std::string& out);
void from_text(const std::vector<std::string>& v, std::optional<std::string>& out);
void from_text(const std::vector<std::string>& v, std::optional<int64_t>& out);
void from_text(const std::vector<std::string>& v, std::vector<std::string>& out);
void from_text(const std::vector<std::string>& v, nlohmann::json& out);  // the text, as a string

void from_yaml(const YAML::Node& n, bool& out);
void from_yaml(const YAML::Node& n, int& out);
void from_yaml(const YAML::Node& n, int64_t& out);
void from_yaml(const YAML::Node& n, float& out);
void from_yaml(const YAML::Node& n, double& out);
void from_yaml(const YAML::Node& n, std::string& out);
void from_yaml(const YAML::Node& n, std::optional<std::string>& out);  // null: None
void from_yaml(const YAML::Node& n, std::optional<int64_t>& out);      // null: None
void from_yaml(const YAML::Node& n, std::vector<std::string>& out);
void from_yaml(const YAML::Node& n, nlohmann::json& out);  // any value, converted as yaml_to_json

// Any YAML value as JSON: plain scalars typed as YAML 1.1 reads them (plus 1e-5 as a float, as
// mlx-lm's loader adds), quoted scalars strings.
nlohmann::json yaml_to_json(const YAML::Node& n);

// Fails ("[config] SOURCE: ...") when the document, with its aliases expanded as every reader
// walks it, exceeds kMaxYamlNodes nodes, kMaxYamlBytes bytes of scalars or kMaxYamlDepth levels:
// a "billion laughs" of nested aliases would otherwise hang the reader. Bounded work itself.
inline constexpr int64_t kMaxYamlNodes = 1'000'000;
inline constexpr int64_t kMaxYamlBytes = int64_t(64) << 20;
inline constexpr int kMaxYamlDepth = 256;
void check_yaml_size(const YAML::Node& root, const std::string& source);

template <class V>
nlohmann::json to_json_value(const V& v) {
  return nlohmann::json(v);
}
template <class V>
nlohmann::json to_json_value(const std::optional<V>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

// The default as --help shows it (Python's repr for numbers: 0.0, 1e-05); "" shows none.
std::string show_default(const nlohmann::json& v);

class Options;

// One option. The setters return the row so that a declaration reads as one statement.
class Row {
 public:
  Row& choices(std::vector<std::string> c);  // argparse's choices, checked on the command line and in configs
  Row& key(std::string k);                   // the config / JSON key (default: the long flag in snake_case)
  Row& str2bool();                           // a bool that takes a value (mlx-lm's --verbose) instead of store_true
  Row& cli_only();                           // not read from a config file
  Row& record_when_set();                    // in to_json() only when a flag or the config set it
  Row& unrecorded();                         // never in to_json()
  Row& default_text(std::string t);          // the default --help shows ("" = none)
  // A config-only key read by a custom function (nested tables, merges); `path` is the key's
  // dotted path for messages.
  Row& on_yaml(std::function<void(const YAML::Node&, const std::string& path)> f);

 private:
  friend class Options;
  enum class Record { always, when_set, never };
  enum class Source { none, config, cli };
  std::vector<std::string> names_;  // "-m", "--max-tokens"; empty: a config-file key only
  std::string key_, metavar_, help_, group_, default_text_;
  std::vector<std::string> choices_;
  Arity arity_ = Arity::one;
  bool in_config_ = true;
  Record record_ = Record::always;
  Source source_ = Source::none;
  std::function<void(const std::vector<std::string>&)> set_text_;  // throws BadValue
  std::function<void(const YAML::Node&, const std::string& path, bool assign)> set_yaml_;
  std::function<nlohmann::json()> get_json_;
};

class Options {
 public:
  // command: "lora"; usage: the line after "usage: "; description: a paragraph under it.
  Options(std::string command, std::string usage, std::string description);
  Options(const Options&) = delete;  // rows point into the bound struct and at each other
  Options& operator=(const Options&) = delete;

  // Rows added after this go under `title` in --help ("" = the first group, "options:").
  void group(std::string title);

  // A row bound to *field. names: "-m, --max-tokens", or "" for a key read only from a config
  // file (then `key()` names it); metavar: "N" ("" with choices: a|b|c).
  template <class V>
  Row& add(const std::string& names, V* field, std::string metavar, std::string help);
  // A config-only key without a field of its own: on_yaml reads it, to_json writes it.
  Row& add_config_key(const std::string& key, std::string metavar, std::string help,
                      std::function<nlohmann::json()> to_json);

  // Parses argv (argv[0] is the command name) into the bound fields. Returns false when -h or
  // --help printed the help. Throws UsageError with argparse's messages.
  bool parse(int argc, char** argv);

  // Reads a YAML mapping into the rows whose keys it holds, except rows the command line set
  // (it wins); type errors throw Error "[config] SOURCE: key 'K' must be ..., got V" (every
  // key is checked, overridden or not). Returns the keys no row reads, as JSON, for the caller
  // to warn about and keep. path_prefix: "lora_parameters." when reading a nested mapping.
  nlohmann::json read_yaml(const YAML::Node& map, const std::string& source, const std::string& path_prefix = "");

  // The recorded rows' values by key.
  nlohmann::json to_json() const;
  std::string help() const;
  const std::string& command() const { return command_; }

 private:
  Row& new_row(const std::string& names, std::string metavar, std::string help, Arity arity);
  Row* find_flag(const std::string& name);
  Row* find_key(const std::string& key);
  void check_choice(const Row& r, const std::string& v, const std::string& context) const;

  std::string command_, usage_, description_, group_;
  std::deque<Row> rows_;  // a deque: rows keep their addresses as more are added
};

template <class V>
Row& Options::add(const std::string& names, V* field, std::string metavar, std::string help) {
  Row& r = new_row(names, std::move(metavar), std::move(help), arity_of(field));
  r.set_text_ = [field](const std::vector<std::string>& v) { from_text(v, *field); };
  r.set_yaml_ = [field](const YAML::Node& n, const std::string&, bool assign) {
    V x = *field;
    from_yaml(n, x);
    if (assign) *field = std::move(x);
  };
  r.get_json_ = [field] { return to_json_value(*field); };
  if (r.arity_ != Arity::none) r.default_text_ = show_default(r.get_json_());
  return r;
}

// Runs a command: parses argv with `opts` (--help prints the help and returns 0), then body().
// A UsageError from either prints "lmtune CMD: error: MSG (see lmtune CMD --help)" and returns 2.
int run_with_options(Options& opts, int argc, char** argv, const std::function<int()>& body);

}  // namespace lmtune::cli
