// `lmtune server`: mlx_lm.server's flags, plus an API key and request limits; loads the model
// once (and --draft-model's draft) and serves src/server's OpenAI-compatible API until SIGINT or
// SIGTERM. --pipeline (sharded serving), which this slice lacks, is accepted and reported as not
// implemented yet at startup.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "cli_commands.h"
#include "core/error.h"
#include "runtime/generate.h"
#include "runtime/prompt_cache.h"
#include "runtime_setup.h"
#include "server/http_server.h"

namespace lmtune::cli {

namespace {

volatile std::sig_atomic_t g_stop = 0;
extern "C" void on_stop_signal(int sig) { g_stop = sig; }

struct ServerOptions {
  LoadOptions load;
  SamplerOptions sampler;
  std::string host = "127.0.0.1";
  int64_t port = 8080;
  std::string allowed_origins = "*";
  std::optional<std::string> draft_model;
  int64_t num_draft_tokens = 3;
  bool trust_remote_code = false;
  std::string log_level = "INFO";
  std::string chat_template;
  bool use_default_chat_template = false;
  int64_t max_tokens = 512;
  std::string chat_template_args;
  int64_t decode_concurrency = 32, prompt_concurrency = 8, max_queued_requests = 64;
  int64_t prompt_cache_size = 10;
  std::optional<std::string> prompt_cache_bytes;
  int64_t prefill_step_size = 2048;
  bool pipeline = false;
  std::string api_key;
  int64_t max_body_bytes = 4 << 20;
  int64_t max_tokens_limit = 32768;
  int64_t max_prompt_tokens = 0;
  double request_timeout = 600;
};

void declare(Options& t, ServerOptions& o) {
  add_model_options(t, o.load, kModelHelp);
  t.add("--host", &o.host, "HOST", "address to listen on");
  t.add("--port", &o.port, "PORT", "port to listen on; 0 = any free port (printed at startup)");
  t.add("--allowed-origins", &o.allowed_origins, "ORIGINS", "CORS: '*' or a comma-separated list of origins");
  t.add("--chat-template", &o.chat_template, "TEMPLATE", "a chat template (source or name) instead of the tokenizer's");
  t.add("--use-default-chat-template", &o.use_default_chat_template, "",
        "a model without a chat template uses ChatML (transformers' former default)");
  add_sampler_options(t, o.sampler);
  t.add("--max-tokens", &o.max_tokens, "N", "tokens to generate when a request names no max_tokens");
  t.add("--chat-template-args", &o.chat_template_args, "JSON",
        "chat-template variables for every request, e.g. '{\"enable_thinking\": false}'");
  t.add("--prefill-step-size", &o.prefill_step_size, "N", "prompt tokens per prefill step");
  t.add("--decode-concurrency", &o.decode_concurrency, "N",
        "sequences batched together (continuous batching: prefilling or decoding)");
  t.add("--prompt-concurrency", &o.prompt_concurrency, "N", "of those, prompts prefilled at once (in chunks)");
  t.add("--prompt-cache-size", &o.prompt_cache_size, "N",
        "prompt cache entries (finished sequences' KV caches reused by prompts sharing a prefix); 0 = no cache");
  t.add("--prompt-cache-bytes", &o.prompt_cache_bytes, "SIZE",
        "prompt cache bytes, e.g. 2GB or 512MiB (least recently used entries go first)")
      .default_text("None");
  t.add("--log-level", &o.log_level, "", "how much the server logs (one line per request at INFO)")
      .choices({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"});
  t.add("--trust-remote-code", &o.trust_remote_code, "", "accepted for mlx-lm's sake; lmtune runs no model code");
  t.add("--draft-model", &o.draft_model, "MODEL",
        "a smaller model with the same tokenizer: a request decoding alone decodes speculatively with it")
      .default_text("None");
  t.add("--num-draft-tokens", &o.num_draft_tokens, "N", "tokens the draft model proposes per round");
  t.group("accepted, not implemented yet (a warning at startup)");
  t.add("--pipeline", &o.pipeline, "", "pipeline-parallel sharded loading");
  t.group("lmtune's additions");
  t.add("--api-key", &o.api_key, "KEY", "require 'Authorization: Bearer KEY' on /v1/ (default: none)");
  t.add("--max-body-bytes", &o.max_body_bytes, "N", "larger request bodies get 413");
  t.add("--max-tokens-limit", &o.max_tokens_limit, "N", "a request asking for more max_tokens gets 400");
  t.add("--max-prompt-tokens", &o.max_prompt_tokens, "N",
        "a longer prompt gets 400 (context_length_exceeded); 0 = the model's max_position_embeddings (no limit when "
        "the config has none)");
  t.add("--max-queued-requests", &o.max_queued_requests, "N",
        "requests waiting for a batch slot beyond --decode-concurrency; more get 503 server_busy at once");
  t.add("--request-timeout", &o.request_timeout, "SECONDS",
        "per request, from arrival: waiting for the model (then 503), and decoding (then finish_reason length)");
  add_device_options(t, o.load);
}

server::LogLevel log_level(const std::string& s) {
  if (s == "DEBUG") return server::LogLevel::debug;
  if (s == "WARNING") return server::LogLevel::warning;
  if (s == "ERROR") return server::LogLevel::error;
  if (s == "CRITICAL") return server::LogLevel::critical;
  return server::LogLevel::info;
}

std::vector<std::string> split_origins(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');)
    if (!x.empty()) out.push_back(x);
  return out;
}

void warn_not_implemented(const ServerOptions& o) {
  auto warn = [](const char* flag, const char* what) {
    std::fprintf(stderr, "lmtune server: warning: %s is not implemented yet (%s); ignored\n", flag, what);
  };
  if (o.pipeline) warn("--pipeline", "no distributed serving");
}

int serve(ServerOptions& o) {
  nlohmann::ordered_json template_args = nlohmann::ordered_json::object();
  if (!o.chat_template_args.empty()) {
    template_args = nlohmann::ordered_json::parse(o.chat_template_args, nullptr, false);
    if (!template_args.is_object())
      throw UsageError("argument --chat-template-args: must be a JSON object, got '" + o.chat_template_args + "'");
  }
  warn_not_implemented(o);
  // SIGINT / SIGTERM set a flag that a watcher thread turns into a clean stop (threads that
  // libraries started before main may take the signal, so sigwait on a blocked mask would miss it).
  g_stop = 0;
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGPIPE, SIG_IGN);  // a client that left must not end the process

  // A (model folder, adapters, draft model) triple as the session holds it: at startup, and for a
  // request naming another folder, adapters or draft (loaded on the same device and dtype; a draft
  // must have a tokenizer of the model's size).
  server::ModelLoader loader = [&o](const server::ResidentKey& key, const std::shared_ptr<server::Resident>& now) {
    auto r = std::make_shared<server::Resident>();
    if (now && now->model_dir == key.model_dir && now->adapters == key.adapters) {
      // Only the draft changes: the resident model, its tokenizer and limits are shared.
      r->model_dir = now->model_dir, r->adapters = now->adapters, r->model = now->model, r->chat = now->chat;
      r->eos_ids = now->eos_ids, r->xtc_special_tokens = now->xtc_special_tokens;
      r->max_prompt_tokens = now->max_prompt_tokens;
    } else {
      LoadOptions lo = o.load;
      lo.model = key.model_dir;
      lo.adapter_path = key.adapters;
      LoadedModel lm = load_for_generation(lo);
      r->model_dir = std::filesystem::canonical(lm.dir).string();
      r->adapters = key.adapters.empty() ? "" : std::filesystem::canonical(key.adapters).string();
      const Tokenizer& tok = lm.chat->tokenizer();
      r->eos_ids = collect_eos_ids(lm.dir, tok);
      r->xtc_special_tokens = tok.encode("\n", false);
      r->xtc_special_tokens.insert(r->xtc_special_tokens.end(), r->eos_ids.begin(), r->eos_ids.end());
      r->max_prompt_tokens = o.max_prompt_tokens > 0 ? o.max_prompt_tokens : lm.model->config().max_position_embeddings;
      r->model = std::move(lm.model);
      r->chat = std::move(lm.chat);
    }
    const Tokenizer& tok = r->chat->tokenizer();
    if (!key.draft.empty()) {
      if (now && now->draft && now->draft_dir == key.draft) {  // a request's key holds canonical folders
        r->draft_dir = now->draft_dir, r->draft = now->draft, r->draft_tokenizer_size = now->draft_tokenizer_size;
      } else {  // a draft not resident now: loaded
        LoadOptions dl = o.load;
        dl.model = key.draft;
        dl.adapter_path.clear();
        LoadedModel draft = load_for_generation(dl);
        r->draft_dir = std::filesystem::canonical(draft.dir).string();
        r->draft = std::move(draft.model);
        r->draft_tokenizer_size = draft.chat->tokenizer().vocab_size();
      }
      if (r->draft_tokenizer_size != tok.vocab_size())
        throw Error("the draft model " + key.draft + " has a tokenizer of " + std::to_string(r->draft_tokenizer_size) +
                    " tokens, the model's has " + std::to_string(tok.vocab_size()) +
                    " (a draft must share the tokenizer)");
    }
    return r;
  };
  std::shared_ptr<server::Resident> first =
      loader({o.load.model, o.load.adapter_path, o.draft_model.value_or("")}, nullptr);
  const std::string first_dir = first->model_dir;
  const int64_t first_vocab = first->model->config().n_vocab;
  server::ServedModel served;
  served.resident = first;
  served.loader = loader;
  served.id = o.load.model;
  served.chat_template = o.chat_template;
  served.use_default_chat_template = o.use_default_chat_template;
  served.prefill_step_size = o.prefill_step_size;
  served.decode_concurrency = o.decode_concurrency;
  served.prompt_concurrency = o.prompt_concurrency;
  served.max_queued = o.max_queued_requests;
  served.prompt_cache.max_entries = o.prompt_cache_size;
  served.prompt_cache.max_bytes = o.prompt_cache_bytes ? parse_size(*o.prompt_cache_bytes) : 0;
  served.num_draft_tokens = o.num_draft_tokens;
  first.reset();  // the session holds it now (and frees it when a request switches models)
  server::Session session(std::move(served));

  server::RequestDefaults d;
  d.sampler = o.sampler;  // the XTC exceptions come from the resident model's tokenizer (Session::start)
  d.max_tokens = o.max_tokens;
  d.max_tokens_limit = o.max_tokens_limit;
  d.n_vocab = first_vocab;  // logit_bias ids are checked against the startup model's vocabulary
  d.model_names = {o.load.model, first_dir};
  d.chat_template_args = template_args;

  server::HttpConfig hc;
  hc.host = o.host;
  hc.port = int(o.port);
  hc.allowed_origins = split_origins(o.allowed_origins);
  hc.api_key = o.api_key;
  hc.max_body_bytes = size_t(o.max_body_bytes);
  hc.request_timeout_s = o.request_timeout;
  hc.log_level = log_level(o.log_level);
  // A connection thread per admitted request and a few for refusals, /health and /metrics, and at
  // least HttpConfig's 512, so that slow clients (a byte a second) leave threads for the rest.
  hc.threads = std::max(hc.threads, size_t(o.decode_concurrency + o.max_queued_requests + 8));
  server::HttpServer http(session, d, hc);
  const int port = http.bind();
  std::fprintf(stderr,
               "lmtune server: serving %s on http://%s:%d (OpenAI API under /v1; continuous batching of up to %lld "
               "sequences). "
               "Not meant for production: put it behind a proxy before exposing it.\n",
               o.load.model.c_str(), o.host.c_str(), port, (long long)o.decode_concurrency);
  std::atomic<bool> done{false};
  std::thread stopper([&] {
    while (!g_stop && !done) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (g_stop) std::fprintf(stderr, "lmtune server: signal %d, stopping\n", int(g_stop));
    http.stop();
  });
  http.serve();
  done = true;
  stopper.join();
  return 0;
}

}  // namespace

int run_server(int argc, char** argv) {
  ServerOptions o;
  Options t("server", "lmtune server --model MODEL [options]",
            "Serve a model over an OpenAI-compatible HTTP API (mlx_lm.server's flags): /v1/chat/completions, "
            "/v1/completions, /v1/models, /health, /metrics.");
  declare(t, o);
  return run_with_options(t, argc, argv, [&] {
    if (o.load.model.empty()) throw UsageError("--model is required (a local model folder or a Hub repo id)");
    if (o.port < 0 || o.port > 65535)
      throw UsageError("argument --port: must be in [0, 65535], got " + std::to_string(o.port));
    if (o.max_tokens < 1) throw UsageError("argument --max-tokens: must be >= 1");
    if (o.decode_concurrency < 1) throw UsageError("argument --decode-concurrency: must be >= 1");
    if (o.prompt_concurrency < 1) throw UsageError("argument --prompt-concurrency: must be >= 1");
    if (o.max_queued_requests < 0) throw UsageError("argument --max-queued-requests: must be >= 0");
    if (o.max_tokens_limit < o.max_tokens)
      throw UsageError("argument --max-tokens-limit: must be >= --max-tokens (" + std::to_string(o.max_tokens) + ")");
    if (o.max_body_bytes < 1024) throw UsageError("argument --max-body-bytes: must be >= 1024");
    if (!(o.request_timeout > 0)) throw UsageError("argument --request-timeout: must be > 0");
    if (o.max_prompt_tokens < 0) throw UsageError("argument --max-prompt-tokens: must be >= 0");
    if (o.prefill_step_size < 1) throw UsageError("argument --prefill-step-size: must be >= 1");
    if (o.prompt_cache_size < 0) throw UsageError("argument --prompt-cache-size: must be >= 0");
    if (o.prompt_cache_bytes) {
      int64_t bytes = 0;
      try {
        bytes = parse_size(*o.prompt_cache_bytes);
      } catch (const std::exception&) {
        throw UsageError("argument --prompt-cache-bytes: '" + *o.prompt_cache_bytes +
                         "' is not a size (a number with an optional unit B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)");
      }
      if (bytes < 1) throw UsageError("argument --prompt-cache-bytes: must be >= 1 byte");
    }
    if (o.num_draft_tokens < 1)
      throw UsageError("argument --num-draft-tokens: must be >= 1, got " + std::to_string(o.num_draft_tokens));
    if (o.allowed_origins.empty()) throw UsageError("argument --allowed-origins: must not be empty");
    return serve(o);
  });
}

}  // namespace lmtune::cli
