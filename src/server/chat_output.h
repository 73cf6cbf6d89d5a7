// What a chat request's answer is split into, decided from the chat template that rendered it: the
// tool-call format (and, for a forced tool_choice, the grammar that makes the model call), and
// whether thinking text is split off into `reasoning`.
#pragma once
#include <string>

#include "server/output_parser.h"
#include "server/request.h"

namespace lmtune::server {

// template_source: the template that rendered the prompt ("" when none); prompt_tail: the prompt's
// last characters. Sets r.grammar for tool_choice required / a named function. Throws ApiError
// when the tools cannot be forced (a schema keyword, a format without a forced form).
OutputSplit prepare_chat_output(CompletionRequest& r, const std::string& template_source,
                                const std::string& prompt_tail);

}  // namespace lmtune::server
