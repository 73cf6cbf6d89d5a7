// A request body of arbitrary bytes parsed as /v1/chat/completions (first byte even) or
// /v1/completions (odd) into a CompletionRequest: every field's type and range, tools,
// response_format (a JSON schema compiled into a grammar), stop strings, logit_bias. No model runs;
// the clear error is the server's ApiError (400 / 404).
#include "core/error.h"
#include "fuzz_target.h"
#include "server/api_error.h"
#include "server/request.h"

LMTUNE_FUZZ_TARGET(server_request) {
  using namespace lmtune::server;
  static const RequestDefaults defaults = [] {
    RequestDefaults d;
    d.n_vocab = 1000;
    d.model_names = {"default", "models/default"};
    return d;
  }();
  if (size == 0) return 0;
  Endpoint ep = (data[0] & 1) ? Endpoint::completions : Endpoint::chat;
  std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    CompletionRequest r = parse_request(body, ep, defaults);
    volatile size_t sink = r.messages.size() + r.prompt.size() + r.stop.size() + (r.grammar ? 1 : 0);
    (void)sink;
  } catch (const ApiError&) {
  } catch (const lmtune::Error&) {
  }
  volatile size_t depth = json_depth(body, kMaxJsonDepth);
  (void)depth;
  return 0;
}
