// The tool and structured-output fields of a chat request checked into CompletionRequest: tools,
// tool_choice, response_format (its schema compiled here, so an unsupported keyword is a 400
// naming it), and the tool_calls / tool_call_id of history messages.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "server/request.h"

namespace lmtune::server {

// tools and tool_choice. Throws ApiError.
void parse_tools(const nlohmann::ordered_json& body, CompletionRequest& r);
// response_format: text, json_object or json_schema (compiled into r.grammar). Throws ApiError.
void parse_response_format(const nlohmann::ordered_json& body, CompletionRequest& r);
// An assistant message's tool_calls (arguments given as JSON text become objects, as chat templates
// expect them) and a tool message's tool_call_id. path: "messages[i]". Throws ApiError.
void check_message_tools(nlohmann::ordered_json& message, const std::string& path);

}  // namespace lmtune::server
