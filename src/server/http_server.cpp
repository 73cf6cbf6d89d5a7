// Routes and their guards. A refusal is an ApiError turned into OpenAI's error body; httplib's own
// refusals (no route, a body over the limit) get the same shape from the error handler. A request
// takes an admission slot (or 503 at once), is handed to the session's batching engine, and its
// deltas are written from the connection's thread; a streamed answer is written as SSE from the
// content provider, and a failed write (the client left) stops its generation at the next step; a
// whole answer's client is watched on its socket (server/connection.h) with the same effect.
#include "server/http_server.h"

#include <httplib.h>
#include <sys/socket.h>
#include <cerrno>
#include <cstring>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>

#include "core/error.h"
#include "server/api_error.h"
#include "server/chat_output.h"
#include "server/connection.h"
#include "server/metrics.h"
#include "server/responses.h"

namespace lmtune::server {

using json = nlohmann::ordered_json;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void reply_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump_json(body), "application/json");
}

const char* reason_for(int status) {
  switch (status) {
    case 404: return "no such endpoint (see /v1/models, /v1/chat/completions, /v1/completions, /health, /metrics)";
    case 405: return "method not allowed";
    case 413: return "the request body is over the server's limit (--max-body-bytes)";
    case 414: return "the request URI is too long";
    default: return "the request could not be read";
  }
}

}  // namespace

struct HttpServer::Impl {
  Session& session;
  RequestDefaults defaults;
  HttpConfig cfg;
  httplib::Server svr;
  Metrics metrics;
  int port = -1;
  int listen_fd = -1;                                   // the listening socket, seen by the socket-options hook
  const int64_t started = int64_t(std::time(nullptr));  // /v1/models' created

  Impl(Session& s, RequestDefaults d, HttpConfig c) : session(s), defaults(std::move(d)), cfg(std::move(c)) {}

  bool logs(LogLevel l) const { return int(l) >= int(cfg.log_level); }

  void log_line(LogLevel l, const std::string& line) {
    if (logs(l)) std::fprintf(stderr, "[server] %s\n", line.c_str());
  }

  // The bearer token, compared without an early exit.
  void check_auth(const httplib::Request& req) const {
    if (cfg.api_key.empty()) return;
    const std::string h = req.get_header_value("Authorization");
    const std::string want = "Bearer " + cfg.api_key;
    unsigned diff = h.size() != want.size();
    for (size_t i = 0; i < std::min(h.size(), want.size()); ++i) diff |= unsigned(h[i] ^ want[i]);
    if (diff)
      throw ApiError(401, h.empty() ? "missing the API key (Authorization: Bearer KEY)" : "incorrect API key", "",
                     "invalid_api_key");
  }

  void cors(const httplib::Request& req, httplib::Response& res) const {
    const auto& o = cfg.allowed_origins;
    if (std::find(o.begin(), o.end(), "*") != o.end()) {
      res.set_header("Access-Control-Allow-Origin", "*");
    } else if (req.has_header("Origin")) {
      const std::string origin = req.get_header_value("Origin");
      if (std::find(o.begin(), o.end(), origin) != o.end()) res.set_header("Access-Control-Allow-Origin", origin);
      res.set_header("Vary", "Origin");
    }
  }

  void refuse(const httplib::Request& req, httplib::Response& res, const std::string& endpoint, const ApiError& e,
              Clock::time_point arrival) {
    reply_json(res, e.status, error_body(e));
    metrics.request_finished(endpoint, e.status, seconds_since(arrival));
    log_line(e.status >= 500 ? LogLevel::error : LogLevel::info,
             "- " + req.method + " " + endpoint + " " + std::to_string(e.status) + " " + e.code +
                 (e.param.empty() ? "" : " param=" + e.param) + ": " + std::string(e.what()).substr(0, 300));
  }

  void log_generation(const std::string& id, const std::string& endpoint, const GenerationResult& g, bool stream,
                      Clock::time_point arrival) {
    metrics.generation_finished(g.prompt_tokens, g.completion_tokens, g.ttft_s, g.cancelled, g.timed_out);
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "%s POST %s 200 in=%lld cached=%lld out=%lld ttft=%.3fs %.1f tok/s total=%.3fs finish=%s%s%s%s",
                  id.c_str(), endpoint.c_str(), (long long)g.prompt_tokens, (long long)g.cached_tokens,
                  (long long)g.completion_tokens, g.ttft_s, g.decode_tps, seconds_since(arrival),
                  g.finish_reason.c_str(), stream ? " stream" : "", g.cancelled ? " client-gone" : "",
                  g.timed_out ? " timeout" : "");
    std::string line = buf;
    if (g.drafted > 0) line += " drafted=" + std::to_string(g.drafted) + " accepted=" + std::to_string(g.accepted);
    log_line(LogLevel::info, line);
  }

  void completion(const httplib::Request& req, httplib::Response& res, Endpoint ep) {
    const Clock::time_point arrival = Clock::now();
    const auto deadline =
        arrival + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cfg.request_timeout_s));
    const std::string endpoint = ep == Endpoint::chat ? "/v1/chat/completions" : "/v1/completions";
    metrics.request_started();
    try {
      check_auth(req);
      CompletionRequest r = parse_request(req.body, ep, defaults);
      Session::Slot slot = session.admit();
      // The model (and adapters) r names: waits for a switch when another one is resident.
      Session::Lease lease = session.acquire(r, deadline);
      const Resident& m = lease.resident();
      std::vector<int32_t> ids = session.prompt_ids(m, r);
      OutputSplit split;
      if (ep == Endpoint::chat) {
        const size_t tail = std::min<size_t>(ids.size(), 8);
        split = prepare_chat_output(r, session.template_source(m, r),
                                    m.chat->tokenizer().decode(ids.data() + ids.size() - tail, tail));
      }
      ResponseHead head{new_response_id(ep), int64_t(std::time(nullptr)),
                        r.model.empty() || r.model == "default_model" ? session.served().id : r.model, ep};
      std::shared_ptr<Session::Job> job = session.start(lease, r, ids, arrival, deadline);
      if (!r.stream) {
        // Nothing is written before the answer, so the client's leaving shows only on its socket:
        // checked at each released piece and prefill step (a generation for nobody stops there).
        const int fd = find_connection_socket(req.remote_addr, req.remote_port, req.local_addr, req.local_port);
        auto here = [fd] { return fd < 0 || !peer_closed(fd); };
        GenerationResult g = session.run(
            *job, [&](const Delta&) { return here(); }, [&](int64_t, int64_t) { return here(); });
        lease.release();
        slot.release();
        const SplitOutput parts = split.active() ? split_output(split, g.text) : SplitOutput{};
        reply_json(res, 200, completion_json(head, r, g, split.active() ? &parts : nullptr));
        if (!parts.calls.empty()) g.finish_reason = "tool_calls";  // for the log line
        log_generation(head.id, endpoint, g, false, arrival);
        metrics.request_finished(endpoint, 200, seconds_since(arrival));
        return;
      }
      stream(res, std::move(r), std::move(job), head, std::move(slot), std::move(lease), arrival, endpoint, split);
    } catch (const ApiError& e) {
      refuse(req, res, endpoint, e, arrival);
    } catch (const std::exception& e) {
      refuse(req, res, endpoint,
             ApiError(500, std::string("generation failed: ") + e.what(), "", "internal_error", "server_error"),
             arrival);
    }
  }

  // SSE: the role chunk at once, a keepalive comment per prefill step, a chunk per released piece, the finish chunk,
  // the usage chunk when asked, then [DONE]. Metrics and the log line come from the releaser, which httplib runs once
  // whether or not the provider ran.
  void stream(httplib::Response& res, CompletionRequest r, std::shared_ptr<Session::Job> job, ResponseHead head,
              Session::Slot slot, Session::Lease lease, Clock::time_point arrival, const std::string& endpoint,
              OutputSplit split) {
    struct State {
      CompletionRequest r;
      std::shared_ptr<Session::Job> job;
      ResponseHead head;
      Session::Slot slot;
      Session::Lease lease;
      GenerationResult g;
      bool ran = false, failed = false;
    };
    auto st = std::make_shared<State>(
        State{std::move(r), std::move(job), std::move(head), std::move(slot), std::move(lease), {}, false, false});
    res.status = 200;
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, st, split](size_t, httplib::DataSink& sink) {
          st->ran = true;
          auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
          // A split answer (tools, reasoning): the parser's pieces, the delta's logprobs on the first.
          OutputParser parser(split);
          int n_calls = 0;
          auto write_pieces = [&](std::vector<OutputPiece> pieces, const std::vector<TokenLogprob>& lps) {
            if (pieces.empty() && !lps.empty()) pieces.push_back({});
            for (size_t i = 0; i < pieces.size(); ++i) {
              const int index = pieces[i].kind == OutputPiece::Kind::tool_call ? n_calls++ : 0;
              if (!write(sse(
                      piece_chunk_json(st->head, st->r, pieces[i], index, i == 0 ? lps : std::vector<TokenLogprob>{}))))
                return false;
            }
            return true;
          };
          const CompletionRequest& r = st->r;
          bool ok = r.endpoint != Endpoint::chat || write(sse(chunk_json(st->head, r, Delta{}, true)));
          if (ok) {
            try {
              // mlx-lm's keepalive comments during prefill (clients skip them; a failed write stops it).
              auto keepalive = [&](int64_t done, int64_t total) {
                return write(": keepalive " + std::to_string(done) + "/" + std::to_string(total) + "\n\n");
              };
              st->g = session.run(
                  *st->job,
                  [&](const Delta& d) {
                    if (split.active()) return write_pieces(parser.push(d.text), d.logprobs);
                    return write(sse(chunk_json(st->head, r, d, false)));
                  },
                  keepalive);
              ok = !st->g.cancelled && (!split.active() || write_pieces(parser.finish(), {}));
              if (n_calls > 0) st->g.finish_reason = "tool_calls";
              ok = ok && write(sse(final_chunk_json(st->head, r, st->g.finish_reason)));
              if (ok && r.include_usage)
                ok = write(sse(
                    usage_chunk_json(st->head, r, st->g.prompt_tokens, st->g.completion_tokens, st->g.cached_tokens)));
            } catch (const std::exception& e) {
              st->failed = true;
              log_line(LogLevel::error, st->head.id + " generation failed: " + e.what());
              ok = write(
                  sse(error_body(std::string("generation failed: ") + e.what(), "server_error", "", "internal_error")));
            }
          } else {
            Session::abandon(*st->job);
            st->g.cancelled = true;
          }
          st->lease.release();
          st->slot.release();
          if (ok) ok = write("data: [DONE]\n\n");
          if (ok) sink.done();
          return ok;
        },
        [this, st, arrival, endpoint](bool) {
          if (!st->ran) {  // the client left before the first byte
            Session::abandon(*st->job);
            st->g.cancelled = true;
          }
          st->lease.release();
          st->slot.release();
          if (!st->failed) log_generation(st->head.id, endpoint, st->g, true, arrival);
          metrics.request_finished(endpoint, st->failed ? 500 : 200, seconds_since(arrival));
        });
  }

  void models(const httplib::Request& req, httplib::Response& res) {
    const Clock::time_point arrival = Clock::now();
    metrics.request_started();
    try {
      check_auth(req);
      // The served model, then the Hugging Face cache's (a request's `model` may name either).
      std::vector<std::pair<std::string, int64_t>> listed{{session.served().id, started}};
      for (auto& m : hub_cache_models())
        if (m.first != listed[0].first) listed.push_back(std::move(m));
      json body = models_json(listed);
      if (req.matches.size() > 1) {
        const std::string want = req.matches[1];
        auto it = std::find_if(listed.begin(), listed.end(), [&](const auto& m) { return m.first == want; });
        if (it == listed.end())
          throw ApiError(404, "The model '" + want + "' does not exist", "model", "model_not_found");
        body = body["data"][size_t(it - listed.begin())];
      }
      reply_json(res, 200, body);
      metrics.request_finished("/v1/models", 200, seconds_since(arrival));
      log_line(LogLevel::debug, "- GET " + req.path + " 200");
    } catch (const ApiError& e) {
      refuse(req, res, "/v1/models", e, arrival);
    }
  }

  void routes() {
    using httplib::Request, httplib::Response;
    svr.set_payload_max_length(cfg.max_body_bytes);
    svr.new_task_queue = [n = cfg.threads] { return new httplib::ThreadPool(n); };
    // Debian's cpp-httplib is a shared library built with a listen backlog of 5 (the macro cannot be
    // changed from here): a burst of clients connecting at once overflowed it (resets, and SYN
    // retries seconds later; tests/server's server_backlog). The hook keeps httplib's own options and
    // notes the socket, which bind() then listens on again with a backlog of 1024.
    svr.set_socket_options([this](socket_t sock) {
      httplib::default_socket_options(sock);
      listen_fd = int(sock);
    });
    for (const char* p : {"/v1/chat/completions", "/chat/completions"})
      svr.Post(p, [this](const Request& q, Response& s) { completion(q, s, Endpoint::chat); });
    for (const char* p : {"/v1/completions", "/completions"})
      svr.Post(p, [this](const Request& q, Response& s) { completion(q, s, Endpoint::completions); });
    svr.Get("/v1/models", [this](const Request& q, Response& s) { models(q, s); });
    svr.Get("/v1/models/(.+)", [this](const Request& q, Response& s) { models(q, s); });
    svr.Get("/health", [](const Request&, Response& s) { reply_json(s, 200, {{"status", "ok"}}); });
    svr.Get("/metrics", [this](const Request&, Response& s) {
      s.set_content(metrics.render(session.batch_stats(), session.model_switches()),
                    "text/plain; version=0.0.4; charset=utf-8");
    });
    svr.Options(".*", [](const Request&, Response& s) {
      s.status = 204;
      s.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      s.set_header("Access-Control-Allow-Headers", "Content-Type, Authorization");
      s.set_header("Access-Control-Max-Age", "86400");
    });
    svr.set_post_routing_handler([this](const Request& q, Response& s) { cors(q, s); });
    svr.set_error_handler(httplib::Server::HandlerWithResponse([this](const Request& q, Response& s) {
      if (!s.body.empty()) return httplib::Server::HandlerResponse::Unhandled;  // already an OpenAI error
      const std::string code = s.status == 413 ? "request_too_large" : s.status == 404 ? "not_found" : "bad_request";
      reply_json(s, s.status, error_body(reason_for(s.status), "invalid_request_error", "", code));
      log_line(LogLevel::info,
               "- " + q.method + " " + q.path.substr(0, 200) + " " + std::to_string(s.status) + " " + code);
      return httplib::Server::HandlerResponse::Handled;
    }));
    svr.set_exception_handler([](const Request&, Response& s, std::exception_ptr) {
      reply_json(s, 500, error_body("internal error", "server_error", "", "internal_error"));
    });
  }
};

HttpServer::HttpServer(Session& session, RequestDefaults defaults, HttpConfig config)
    : impl_(std::make_unique<Impl>(session, std::move(defaults), std::move(config))) {
  impl_->routes();
}

HttpServer::~HttpServer() = default;

int HttpServer::bind() {
  Impl& m = *impl_;
  if (m.cfg.port == 0) {
    m.port = m.svr.bind_to_any_port(m.cfg.host);
  } else {
    m.port = m.svr.bind_to_port(m.cfg.host, m.cfg.port) ? m.cfg.port : -1;
  }
  LMT_CHECK(m.port > 0, "[server] cannot listen on ", m.cfg.host, ":", m.cfg.port, " (in use, or not an address here)");
  // Linux takes a second listen() on a listening socket as a new backlog (capped at somaxconn).
  if (m.listen_fd >= 0 && ::listen(m.listen_fd, 1024) != 0)
    std::fprintf(stderr, "lmtune server: warning: could not raise the listen backlog (%s)\n", std::strerror(errno));
  return m.port;
}

void HttpServer::serve() { impl_->svr.listen_after_bind(); }

void HttpServer::stop() { impl_->svr.stop(); }

}  // namespace lmtune::server
