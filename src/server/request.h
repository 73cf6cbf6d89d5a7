// A /v1/chat/completions or /v1/completions request body parsed and checked into a typed request:
// every field's type and range, the model name, limits (body depth, stop strings, max_tokens);
// any mistake throws ApiError (400, or 404 for an unknown model) naming the field.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/json_schema.h"
#include "runtime/sampler.h"

namespace lmtune::server {

enum class Endpoint { chat, completions };

// What the server's flags set for every request (a request's fields override the samplers and
// the length), and the names by which clients may ask for the served model.
struct RequestDefaults {
  SamplerOptions sampler;
  int64_t max_tokens = 512;          // when a request names none
  int64_t max_tokens_limit = 32768;  // a request asking for more is refused
  int64_t n_vocab = 0;               // logit_bias ids must be below it
  std::vector<std::string> model_names;
  nlohmann::ordered_json chat_template_args = nlohmann::ordered_json::object();
};

// The limits no request may pass.
constexpr size_t kMaxJsonDepth = 64;
constexpr size_t kMaxStopStrings = 16;
constexpr size_t kMaxStopBytes = 512;
constexpr int kMaxTopLogprobs = 20;
constexpr int64_t kMaxDraftTokens = 64;

struct CompletionRequest {
  Endpoint endpoint = Endpoint::chat;
  std::string model;                    // as the client named it ("" = the served model)
  std::optional<std::string> adapters;  // an adapter folder ("" = none); absent: the model's default
  // mlx-lm's per-request draft model (a folder or Hub id; "" = none); absent or "default_model":
  // --draft-model's.
  std::optional<std::string> draft_model;
  nlohmann::ordered_json messages;  // chat: [{role, content: string}, ...]; text parts joined
  std::string prompt;               // completions: the text
  std::vector<int32_t> prompt_ids;  // completions: a prompt given as token ids (then prompt is "")
  nlohmann::ordered_json template_kwargs = nlohmann::ordered_json::object();  // flags', then the request's
  int64_t max_tokens = 0;
  SamplerOptions sampler;
  std::optional<uint64_t> seed;
  // mlx-lm's per-request num_draft_tokens (with --draft-model): 0 = no speculative decoding; absent:
  // --num-draft-tokens. Ignored without a draft model.
  std::optional<int64_t> num_draft_tokens;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;
  bool logprobs = false;
  int top_logprobs = 0;
  // Tools (chat): OpenAI's list as sent (null = none) and tool_choice: "auto", "none", "required"
  // or "function" (then tool_name names it).
  nlohmann::ordered_json tools = nullptr;
  std::string tool_choice = "auto";
  std::string tool_name;
  // The grammar every answer must follow: response_format's json_object / json_schema, or a forced
  // tool call (set once the chat template's call format is known). nullptr = free text.
  std::shared_ptr<const JsonGrammar> grammar;
};

// Throws ApiError. The body must be valid UTF-8 JSON (nlohmann checks while parsing), an object,
// nested at most kMaxJsonDepth deep; fields OpenAI defines but this server does not implement yet
// (n > 1, tools, response_format other than text, ...) and fields nobody defines are refused.
CompletionRequest parse_request(std::string_view body, Endpoint endpoint, const RequestDefaults& defaults);

// The nesting depth of a JSON text ([ and { outside strings), stopping early past `limit`.
size_t json_depth(std::string_view text, size_t limit);

}  // namespace lmtune::server
