// The HTTP side of `lmtune server` (cpp-httplib from Debian): routes, CORS, the bearer token, the
// body limit, OpenAI-shaped errors for every refusal, SSE streaming, one log line per request and
// /metrics. httplib stays inside http_server.cpp.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "server/request.h"
#include "server/session.h"

namespace lmtune::server {

enum class LogLevel { debug, info, warning, error, critical };

struct HttpConfig {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port (bind() returns it)
  std::vector<std::string> allowed_origins = {"*"};
  std::string api_key;  // "" = no token needed
  size_t max_body_bytes = 4u << 20;
  double request_timeout_s = 600;  // from arrival: waiting for the model, then decoding
  // Connections served at once, a thread each (cpp-httplib blocks a thread on a connection while it
  // reads the request): enough that hundreds of slow clients (a byte a second) leave threads for the
  // rest (tests/server's server_slowloris); idle threads cost a stack reservation, little memory.
  size_t threads = 512;
  LogLevel log_level = LogLevel::info;
};

class HttpServer {
 public:
  // session must outlive the server.
  HttpServer(Session& session, RequestDefaults defaults, HttpConfig config);
  ~HttpServer();
  // Binds host:port; returns the port. Throws Error when it cannot.
  int bind();
  // Serves until stop() (from another thread).
  void serve();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lmtune::server
