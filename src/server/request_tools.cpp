// Each tool field's type checked by name, as request.cpp checks the sampling fields.
#include "server/request_tools.h"

#include <cctype>

#include "server/api_error.h"

namespace lmtune::server {

using ojson = nlohmann::ordered_json;

namespace {

ApiError bad(const std::string& param, const std::string& message, const std::string& code = "invalid_value") {
  return ApiError(400, message, param, code);
}

ApiError must_be(const std::string& param, const std::string& what) {
  return bad(param, "'" + param + "' must be " + what, "invalid_type");
}

const ojson* field(const ojson& o, const char* name) {
  auto it = o.find(name);
  return it == o.end() || it->is_null() ? nullptr : &*it;
}

bool valid_function_name(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) return false;
  return true;
}

}  // namespace

void parse_tools(const ojson& body, CompletionRequest& r) {
  if (const ojson* t = field(body, "tools")) {
    if (!t->is_array()) throw must_be("tools", "an array of tools");
    for (size_t i = 0; i < t->size(); ++i) {
      const std::string p = "tools[" + std::to_string(i) + "]";
      const ojson& tool = (*t)[i];
      if (!tool.is_object()) throw must_be(p, "an object");
      const ojson* type = field(tool, "type");
      if (!type || *type != "function")
        throw bad(p + ".type", "'" + p + ".type' must be \"function\" (the only tool type)");
      const ojson* fn = field(tool, "function");
      if (!fn || !fn->is_object()) throw must_be(p + ".function", "an object");
      const ojson* name = field(*fn, "name");
      if (!name || !name->is_string() || !valid_function_name(name->get<std::string>()))
        throw bad(p + ".function.name", "'" + p + ".function.name' must be 1 to 64 letters, digits, '_', '-' or '.'");
      for (size_t k = 0; k < i; ++k)
        if ((*t)[k]["function"]["name"] == *name)
          throw bad(p + ".function.name",
                    "'" + p + ".function.name': tool " + std::to_string(k) + " has this name too");
      if (const ojson* d = field(*fn, "description"); d && !d->is_string())
        throw must_be(p + ".function.description", "a string");
      if (const ojson* ps = field(*fn, "parameters"); ps && !ps->is_object())
        throw must_be(p + ".function.parameters", "a JSON schema object");
    }
    if (!t->empty()) r.tools = *t;
  }
  const ojson* c = field(body, "tool_choice");
  if (!c) return;
  if (c->is_string()) {
    const std::string v = c->get<std::string>();
    if (v != "none" && v != "auto" && v != "required")
      throw bad("tool_choice", "'tool_choice' must be \"none\", \"auto\", \"required\" or a named function");
    r.tool_choice = v;
  } else if (c->is_object()) {
    const ojson* fn = field(*c, "function");
    const ojson* name = fn && fn->is_object() ? field(*fn, "name") : nullptr;
    if (!name || !name->is_string())
      throw bad("tool_choice.function.name",
                "'tool_choice' names a function as {\"type\": \"function\", "
                "\"function\": {\"name\": ...}}");
    r.tool_choice = "function";
    r.tool_name = name->get<std::string>();
    bool found = false;
    for (const auto& tool : r.tools.is_array() ? r.tools : ojson::array())
      found = found || tool["function"]["name"] == r.tool_name;
    if (!found) throw bad("tool_choice.function.name", "no tool named '" + r.tool_name + "' in 'tools'");
  } else {
    throw must_be("tool_choice", "a string or an object");
  }
  if ((r.tool_choice == "required" || r.tool_choice == "function") && r.tools.is_null())
    throw bad("tool_choice", "'tool_choice' " + r.tool_choice + " needs a non-empty 'tools'");
}

void parse_response_format(const ojson& body, CompletionRequest& r) {
  const ojson* f = field(body, "response_format");
  if (!f) return;
  if (!f->is_object()) throw must_be("response_format", "an object");
  const ojson* type = field(*f, "type");
  if (!type || !type->is_string())
    throw bad("response_format.type", "'response_format.type' must be \"text\", \"json_object\" or \"json_schema\"");
  const std::string t = type->get<std::string>();
  if (t == "text") return;
  if (r.tool_choice == "required" || r.tool_choice == "function")
    throw bad("response_format", "'response_format' cannot be combined with a forced 'tool_choice'");
  if (t == "json_object") {
    r.grammar = JsonGrammar::any_object();
    return;
  }
  if (t != "json_schema")
    throw bad("response_format.type", "'response_format.type' must be \"text\", \"json_object\" or \"json_schema\"");
  const ojson* js = field(*f, "json_schema");
  if (!js || !js->is_object()) throw must_be("response_format.json_schema", "an object with a 'schema'");
  const ojson* schema = field(*js, "schema");
  if (!schema)
    throw bad("response_format.json_schema.schema", "'response_format.json_schema.schema' is required",
              "missing_required_parameter");
  try {
    r.grammar = JsonGrammar::from_schema(*schema);
  } catch (const SchemaError& e) {
    const std::string where = "response_format.json_schema.schema" + (e.path.empty() ? "" : "." + e.path);
    throw bad(where, std::string(e.what()) + " (in response_format.json_schema.schema)");
  }
}

void check_message_tools(ojson& m, const std::string& p) {
  if (m.contains("tool_call_id") && !m["tool_call_id"].is_null() && !m["tool_call_id"].is_string())
    throw must_be(p + ".tool_call_id", "a string");
  if (m.value("role", "") == "tool" && !field(m, "tool_call_id"))
    throw bad(p + ".tool_call_id", "'" + p + ".tool_call_id' is required in a tool message",
              "missing_required_parameter");
  if (!field(m, "tool_calls")) return;
  ojson& calls = m["tool_calls"];
  if (!calls.is_array()) throw must_be(p + ".tool_calls", "an array");
  for (size_t j = 0; j < calls.size(); ++j) {
    const std::string q = p + ".tool_calls[" + std::to_string(j) + "]";
    ojson& call = calls[j];
    if (!call.is_object()) throw must_be(q, "an object");
    if (!call.contains("function") || !call["function"].is_object()) throw must_be(q + ".function", "an object");
    ojson& fn = call["function"];
    if (!fn.contains("name") || !fn["name"].is_string()) throw must_be(q + ".function.name", "a string");
    if (fn.contains("arguments") && fn["arguments"].is_string()) {
      try {
        fn["arguments"] = ojson::parse(fn["arguments"].get<std::string>());
      } catch (const std::exception&) {
        throw bad(q + ".function.arguments", "'" + q + ".function.arguments' is not valid JSON");
      }
    }
  }
}

}  // namespace lmtune::server
