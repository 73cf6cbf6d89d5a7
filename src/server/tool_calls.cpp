// Parsers for each tool-call format and the forced-call grammars. Arguments always leave as a
// compact JSON object text; anything else (a list of arguments, a missing name) fails the parse.
#include "server/tool_calls.h"

#include <cctype>
#include <random>
#include <stdexcept>

namespace lmtune::server {

using ojson = nlohmann::ordered_json;

namespace {

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

std::string strip_all(std::string s, const std::string& marker) {
  for (size_t p; (p = s.find(marker)) != std::string::npos;) s.erase(p, marker.size());
  return s;
}

std::optional<ojson> parse_json(const std::string& text) {
  try {
    return ojson::parse(text);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::string compact(const ojson& j) { return j.dump(-1, ' ', false, ojson::error_handler_t::replace); }

// {"name": "...", "arguments" | "parameters": {...} or a JSON text of an object}.
std::optional<ToolCall> call_from_object(const ojson& o) {
  if (!o.is_object() || !o.contains("name") || !o["name"].is_string() || o["name"].get<std::string>().empty())
    return std::nullopt;
  ojson args = ojson::object();
  for (const char* k : {"arguments", "parameters"}) {
    if (!o.contains(k)) continue;
    args = o[k];
    if (args.is_string()) {
      auto parsed = parse_json(args.get<std::string>());
      if (!parsed) return std::nullopt;
      args = *parsed;
    }
    break;
  }
  if (!args.is_object()) return std::nullopt;
  return ToolCall{new_call_id(), o["name"].get<std::string>(), compact(args)};
}

// Python literals and calls, by recursive descent.
class Pythonic {
 public:
  explicit Pythonic(const std::string& s) : s_(s) {}

  std::optional<std::vector<ToolCall>> calls() {
    std::vector<ToolCall> out;
    if (!eat('[')) return std::nullopt;
    if (eat(']')) return std::nullopt;  // no call at all is not a tool call
    do {
      auto c = call();
      if (!c) return std::nullopt;
      out.push_back(std::move(*c));
    } while (eat(','));
    if (!eat(']')) return std::nullopt;
    skip();
    if (i_ != s_.size()) return std::nullopt;
    return out;
  }

 private:
  void skip() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  bool eat(char c) {
    skip();
    if (i_ < s_.size() && s_[i_] == c) return ++i_, true;
    return false;
  }
  std::string ident(bool dotted) {
    skip();
    size_t a = i_;
    while (i_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[i_])) || s_[i_] == '_' ||
                              (dotted && (s_[i_] == '.' || s_[i_] == '-'))))
      ++i_;
    if (a < i_ && std::isdigit(static_cast<unsigned char>(s_[a]))) return "";
    return s_.substr(a, i_ - a);
  }
  std::optional<ToolCall> call() {
    const std::string name = ident(true);
    if (name.empty() || !eat('(')) return std::nullopt;
    ojson args = ojson::object();
    if (!eat(')')) {
      do {
        const std::string key = ident(false);
        if (key.empty() || !eat('=')) return std::nullopt;
        auto v = value(0);
        if (!v) return std::nullopt;
        args[key] = std::move(*v);
      } while (eat(','));
      if (!eat(')')) return std::nullopt;
    }
    return ToolCall{new_call_id(), name, compact(args)};
  }
  std::optional<ojson> value(int depth) {
    if (depth > 32) return std::nullopt;
    skip();
    if (i_ >= s_.size()) return std::nullopt;
    const char c = s_[i_];
    if (c == '"' || c == '\'') return string(c);
    if (c == '[' || c == '(') {
      const char close = c == '[' ? ']' : ')';
      ++i_;
      ojson a = ojson::array();
      if (eat(close)) return a;
      do {
        auto v = value(depth + 1);
        if (!v) return std::nullopt;
        a.push_back(std::move(*v));
      } while (eat(','));
      if (!eat(close)) return std::nullopt;
      return a;
    }
    if (c == '{') {
      ++i_;
      ojson o = ojson::object();
      if (eat('}')) return o;
      do {
        auto k = value(depth + 1);
        if (!k || !k->is_string() || !eat(':')) return std::nullopt;
        auto v = value(depth + 1);
        if (!v) return std::nullopt;
        o[k->get<std::string>()] = std::move(*v);
      } while (eat(','));
      if (!eat('}')) return std::nullopt;
      return o;
    }
    size_t a = i_;
    while (i_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[i_])) || s_[i_] == '.' || s_[i_] == '-' ||
                              s_[i_] == '+' || s_[i_] == '_'))
      ++i_;
    const std::string word = s_.substr(a, i_ - a);
    if (word == "True") return ojson(true);
    if (word == "False") return ojson(false);
    if (word == "None") return ojson(nullptr);
    auto num = parse_json(word);
    if (num && num->is_number()) return num;
    return std::nullopt;
  }
  std::optional<ojson> string(char quote) {
    ++i_;
    std::string out;
    while (i_ < s_.size() && s_[i_] != quote) {
      char c = s_[i_++];
      if (c == '\\') {
        if (i_ >= s_.size()) return std::nullopt;
        const char e = s_[i_++];
        c = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e == 'b' ? '\b' : e == 'f' ? '\f' : e;
      }
      out += c;
    }
    if (i_ >= s_.size()) return std::nullopt;
    ++i_;
    return ojson(out);
  }

  const std::string& s_;
  size_t i_ = 0;
};

}  // namespace

const char* tool_format_name(ToolFormat f) {
  switch (f) {
    case ToolFormat::hermes: return "hermes";
    case ToolFormat::mistral: return "mistral";
    case ToolFormat::pythonic: return "pythonic";
    case ToolFormat::llama_json: return "llama_json";
    default: return "none";
  }
}

ToolFormat detect_tool_format(const std::string& src) {
  auto has = [&](const char* s) { return src.find(s) != std::string::npos; };
  if (has("<tool_call>")) return ToolFormat::hermes;
  if (has("[TOOL_CALLS]")) return ToolFormat::mistral;
  if (has("func_name1(") || has("<|tool_call_start|>")) return ToolFormat::pythonic;
  if (has("<|python_tag|>") || has("ipython")) return ToolFormat::llama_json;
  if (has("tools")) return ToolFormat::hermes;
  return ToolFormat::none;
}

std::string new_call_id() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char kHex[] = "0123456789abcdef";
  std::string id = "call_";
  for (int i = 0; i < 24; ++i) id += kHex[rng() % 16];
  return id;
}

std::optional<ToolCall> parse_hermes_call(const std::string& body) {
  auto j = parse_json(trim(body));
  if (!j) return std::nullopt;
  return call_from_object(*j);
}

std::optional<std::vector<ToolCall>> parse_mistral_calls(const std::string& text) {
  std::vector<ToolCall> out;
  const std::string marker = "[TOOL_CALLS]";
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t next = text.find(marker, pos);
    const std::string seg = trim(text.substr(pos, next == std::string::npos ? std::string::npos : next - pos));
    pos = next == std::string::npos ? text.size() + 1 : next + marker.size();
    if (seg.empty()) continue;
    if (seg[0] == '[') {  // the older form: a JSON list of calls
      auto j = parse_json(seg);
      if (!j || !j->is_array() || j->empty()) return std::nullopt;
      for (const auto& o : *j) {
        auto c = call_from_object(o);
        if (!c) return std::nullopt;
        out.push_back(std::move(*c));
      }
      continue;
    }
    const size_t a = seg.find("[ARGS]");  // the newer form: name[ARGS]{...}
    if (a == std::string::npos) return std::nullopt;
    std::string name = trim(seg.substr(0, a));
    if (size_t id = name.find("[CALL_ID]"); id != std::string::npos) name = trim(name.substr(0, id));
    auto args = parse_json(trim(seg.substr(a + 6)));
    if (name.empty() || !args || !args->is_object()) return std::nullopt;
    out.push_back({new_call_id(), name, compact(*args)});
  }
  if (out.empty()) return std::nullopt;
  return out;
}

std::optional<std::vector<ToolCall>> parse_pythonic_calls(const std::string& text) {
  std::string t = text;
  for (const char* m : {"<|tool_call_start|>", "<|tool_call_end|>", "<|python_start|>", "<|python_end|>"})
    t = strip_all(t, m);
  t = trim(t);
  return Pythonic(t).calls();
}

std::optional<std::vector<ToolCall>> parse_llama_json_calls(const std::string& text) {
  const std::string t = trim(strip_all(text, "<|python_tag|>"));
  std::vector<ToolCall> out;
  if (auto j = parse_json(t)) {
    auto c = call_from_object(*j);
    if (!c) return std::nullopt;
    out.push_back(std::move(*c));
    return out;
  }
  size_t pos = 0;  // several calls separated by ';'
  while (pos <= t.size()) {
    size_t next = t.find(';', pos);
    auto j = parse_json(t.substr(pos, next == std::string::npos ? std::string::npos : next - pos));
    if (!j) return std::nullopt;
    auto c = call_from_object(*j);
    if (!c) return std::nullopt;
    out.push_back(std::move(*c));
    pos = next == std::string::npos ? t.size() + 1 : next + 1;
  }
  return out;
}

std::shared_ptr<const JsonGrammar> forced_call_grammar(ToolFormat f, const ojson& tools, const std::string& only_name) {
  std::string prefix, suffix, args_key = "arguments";
  switch (f) {
    case ToolFormat::hermes: prefix = "<tool_call>\n", suffix = "}\n</tool_call>"; break;
    case ToolFormat::mistral: prefix = "[TOOL_CALLS][", suffix = "}]"; break;
    case ToolFormat::llama_json: suffix = "}", args_key = "parameters"; break;
    case ToolFormat::pythonic: prefix = "[", suffix = ")]"; break;
    default:
      throw std::invalid_argument(std::string("forcing a tool call is not supported for the ") + tool_format_name(f) +
                                  " tool-call format of this chat template");
  }
  std::vector<std::pair<std::string, ojson>> choices;
  std::vector<size_t> index;
  for (size_t i = 0; i < tools.size(); ++i) {
    const ojson& fn = tools[i]["function"];
    const std::string name = fn["name"].get<std::string>();
    if (!only_name.empty() && name != only_name) continue;
    const ojson params = fn.contains("parameters") && !fn["parameters"].is_null()
                             ? fn["parameters"]
                             : ojson{{"type", "object"}, {"properties", ojson::object()}};
    const std::string head =
        f == ToolFormat::pythonic ? name + "(" : "{\"name\":" + compact(ojson(name)) + ",\"" + args_key + "\":";
    choices.push_back({head, params});
    index.push_back(i);
  }
  if (choices.empty()) throw std::invalid_argument("no tool named '" + only_name + "' in 'tools'");
  try {
    return JsonGrammar::wrapped_choice(prefix, choices, suffix, f == ToolFormat::pythonic);
  } catch (const SchemaError& e) {
    // The compiler's path starts with the choice's number: name the tool instead.
    if (e.path.empty() || !std::isdigit(static_cast<unsigned char>(e.path[0]))) throw SchemaError("tools", e.what());
    const size_t dot = e.path.find('.');
    const size_t k = size_t(std::stoul(e.path.substr(0, dot)));
    const std::string where = "tools[" + std::to_string(index[k]) + "].function.parameters" +
                              (dot == std::string::npos ? "" : e.path.substr(dot));
    std::string msg = e.what();
    if (size_t q = msg.find("'" + e.path); q != std::string::npos) msg.replace(q + 1, e.path.size(), where);
    throw SchemaError(where, msg);
  }
}

}  // namespace lmtune::server
