// The Hub's answers, as a hostile or broken endpoint could send them: revision JSON NUL file
// answer NUL file bytes. A local HTTP server (cpp-httplib, 127.0.0.1) answers the revision API
// (/api/models/org/name/revision/main) with the first part, every HEAD of a file with the status and
// headers of the second ("302" on the first line, then "Name: value" lines: ETag, X-Linked-Etag,
// X-Linked-Size, Location, ...) and every GET of a file with 200 and the third as its body. resolve_model
// then downloads into a scratch cache: file names from the listing, ETags and sizes from the
// headers must never lead outside it.
#include <httplib.h>

#include <filesystem>
#include <mutex>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "fuzz_target.h"
#include "io/hub.h"

namespace {

struct Answers {
  std::mutex mu;
  std::string revision, head, body;
};

Answers& answers() {
  static Answers a;
  return a;
}

// A HEAD of a file: the second part as a status and headers; absolute redirects are pointed back
// at this server.
void answer_head(const httplib::Request&, httplib::Response& r) {
  std::string head;
  {
    std::lock_guard<std::mutex> lock(answers().mu);
    head = answers().head;
  }
  std::istringstream lines(head);
  std::string line;
  r.status = 200;
  if (std::getline(lines, line)) {
    int status = std::atoi(line.c_str());
    if (status >= 200 && status < 600) r.status = status;
  }
  while (std::getline(lines, line)) {
    size_t colon = line.find(':');
    if (colon == std::string::npos || colon == 0) continue;
    std::string name = line.substr(0, colon), value = line.substr(colon + 1);
    while (!value.empty() && value[0] == ' ') value.erase(0, 1);
    std::string lower = name;
    for (char& c : lower) c = char(std::tolower(static_cast<unsigned char>(c)));
    // The framing is the server's; the fuzzer cannot break HTTP itself.
    if (lower == "content-length" || lower == "transfer-encoding" || lower == "connection") continue;
    if (name.find_first_of("\r\n") != std::string::npos || value.find_first_of("\r\n") != std::string::npos) continue;
    if (lower == "location" && value.rfind("http", 0) == 0) {
      size_t path = value.find('/', value.find("://") == std::string::npos ? 0 : value.find("://") + 3);
      value = path == std::string::npos ? "/" : value.substr(path);
    }
    r.set_header(name, value);
  }
}

// A GET of a file (wherever a redirect pointed): the third part (httplib answers a Range with 206).
void answer_get(const httplib::Request& q, httplib::Response& r) {
  if (q.method == "HEAD") return answer_head(q, r);  // httplib sends HEAD to the GET handlers
  std::lock_guard<std::mutex> lock(answers().mu);
  r.set_content(answers().body, "application/octet-stream");
}

struct Server {
  httplib::Server svr;
  std::thread thread;
  int port = 0;
  Server() {
    svr.Get(R"(/api/models/([^/]+)/([^/]+)/revision/(.+))", [](const httplib::Request&, httplib::Response& r) {
      std::lock_guard<std::mutex> lock(answers().mu);
      r.set_content(answers().revision, "application/json");
    });
    svr.Get(R"(/.*)", answer_get);
    port = svr.bind_to_any_port("127.0.0.1");
    if (port <= 0) std::abort();
    thread = std::thread([this] { svr.listen_after_bind(); });
    while (!svr.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ~Server() {
    svr.stop();
    thread.join();
  }
};

}  // namespace

LMTUNE_FUZZ_TARGET(hub_api) {
  static Server server;
  static const std::string cache = lmtune::fuzz::scratch_dir("hub_api") + "/cache";
  std::vector<std::string> parts = lmtune::fuzz::split(data, size, 3);
  {
    std::lock_guard<std::mutex> lock(answers().mu);
    answers().revision = parts[0];
    answers().head = parts[1];
    answers().body = parts[2];
  }
  std::error_code ec;
  std::filesystem::remove_all(cache, ec);
  lmtune::HubSettings s;
  s.endpoint = "http://127.0.0.1:" + std::to_string(server.port);
  s.cache_dir = cache;
  try {
    std::string snapshot = lmtune::resolve_model("org/name", s);
    // Whatever the answers, the snapshot is a folder inside the cache.
    std::string canon = std::filesystem::weakly_canonical(snapshot).string();
    if (canon.rfind(std::filesystem::weakly_canonical(cache).string() + "/", 0) != 0) {
      std::fprintf(stderr, "hub_api: snapshot %s is outside the cache %s\n", canon.c_str(), cache.c_str());
      std::abort();
    }
  } catch (const lmtune::Error&) {
  }
  return 0;
}
