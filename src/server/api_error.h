// ApiError: a request the server refuses, with the HTTP status and OpenAI's error object
// {"error": {"message", "type", "param", "code"}}; thrown by validation, caught at the HTTP boundary.
#pragma once
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace lmtune::server {

struct ApiError : std::runtime_error {
  ApiError(int status_, const std::string& message, std::string param_ = "", std::string code_ = "invalid_value",
           std::string type_ = "invalid_request_error")
      : std::runtime_error(message),
        status(status_),
        type(std::move(type_)),
        param(std::move(param_)),
        code(std::move(code_)) {}
  int status;
  std::string type, param, code;  // param "" and code "" are written as null
};

// OpenAI's error body (keys in OpenAI's order).
inline nlohmann::ordered_json error_body(const std::string& message, const std::string& type, const std::string& param,
                                         const std::string& code) {
  nlohmann::ordered_json e = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) e["param"] = param;
  if (!code.empty()) e["code"] = code;
  return {{"error", e}};
}
inline nlohmann::ordered_json error_body(const ApiError& e) { return error_body(e.what(), e.type, e.param, e.code); }

// JSON text that never throws on odd bytes (invalid UTF-8 becomes U+FFFD).
template <class Json>
std::string dump_json(const Json& j) {
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace lmtune::server
