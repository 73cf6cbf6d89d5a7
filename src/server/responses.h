// OpenAI's response objects: chat.completion, chat.completion.chunk, text_completion (whole and
// streamed), the usage object, the model list, and SSE framing.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "server/output_parser.h"
#include "server/request.h"
#include "server/session.h"

namespace lmtune::server {

// The fields every object of one response shares.
struct ResponseHead {
  std::string id;  // chatcmpl-... / cmpl-...
  int64_t created = 0;
  std::string model;
  Endpoint endpoint = Endpoint::chat;
};

// "chatcmpl-" or "cmpl-" and 24 random hex digits.
std::string new_response_id(Endpoint endpoint);

// OpenAI's usage, with prompt_tokens_details.cached_tokens: prompt tokens the prompt cache supplied.
nlohmann::ordered_json usage_json(int64_t prompt_tokens, int64_t completion_tokens, int64_t cached_tokens);

// The non-streamed answer; with `split` (chat), its content, reasoning and tool_calls instead of
// g.text (finish_reason "tool_calls" when there are calls).
nlohmann::ordered_json completion_json(const ResponseHead& h, const CompletionRequest& r, const GenerationResult& g,
                                       const SplitOutput* split = nullptr);
// A chat chunk for one piece of a split answer: delta.content, delta.reasoning, or delta.tool_calls
// with the call's index among this answer's calls; logprobs of the tokens since the last chunk.
nlohmann::ordered_json piece_chunk_json(const ResponseHead& h, const CompletionRequest& r, const OutputPiece& p,
                                        int tool_index, const std::vector<TokenLogprob>& logprobs);
nlohmann::ordered_json tool_call_json(const ToolCall& c);

// One streamed chunk: a delta's text (and logprobs); chat's first chunk also carries the role.
nlohmann::ordered_json chunk_json(const ResponseHead& h, const CompletionRequest& r, const Delta& d, bool first);
// The chunk that ends the choice (empty delta, finish_reason).
nlohmann::ordered_json final_chunk_json(const ResponseHead& h, const CompletionRequest& r,
                                        const std::string& finish_reason);
// stream_options.include_usage's last chunk: no choices, the usage.
nlohmann::ordered_json usage_chunk_json(const ResponseHead& h, const CompletionRequest& r, int64_t prompt_tokens,
                                        int64_t completion_tokens, int64_t cached_tokens);

// "data: JSON\n\n".
std::string sse(const nlohmann::ordered_json& j);

// /v1/models' list: (id, created) per model, the served one first.
nlohmann::ordered_json models_json(const std::vector<std::pair<std::string, int64_t>>& models);

}  // namespace lmtune::server
