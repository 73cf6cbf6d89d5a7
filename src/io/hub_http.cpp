// libcurl requests for the Hub client, resumable appends with a progress display, and SHA-256
// (OpenSSL's libcrypto).
#include "io/hub_http.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>

#include "core/error.h"

namespace lmtune::hub_detail {

namespace {

using Clock = std::chrono::steady_clock;

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

size_t on_header(char* data, size_t size, size_t n, void* user) {
  auto* r = static_cast<HttpResult*>(user);
  std::string line(data, size * n);
  if (line.rfind("HTTP/", 0) == 0) {
    r->headers.clear();  // a new response (after a redirect or a 100 Continue): keep only the last one's
  } else if (size_t colon = line.find(':'); colon != std::string::npos) {
    r->headers[lower(trim(line.substr(0, colon)))] = trim(line.substr(colon + 1));
  }
  return size * n;
}

size_t on_body(char* data, size_t size, size_t n, void* user) {
  auto* r = static_cast<HttpResult*>(user);
  if (r->body.size() < (size_t(64) << 20)) r->body.append(data, size * n);
  return size * n;
}

using CurlPtr = std::unique_ptr<CURL, void (*)(CURL*)>;
using ListPtr = std::unique_ptr<curl_slist, void (*)(curl_slist*)>;

CurlPtr make_handle(const std::string& url, const std::vector<std::string>& headers, ListPtr& list,
                    bool follow_redirects) {
  global_init();
  CurlPtr h(curl_easy_init(), curl_easy_cleanup);
  LMT_CHECK(h, "[hub] curl_easy_init failed");
  for (const std::string& line : headers) list.reset(curl_slist_append(list.release(), line.c_str()));
  curl_easy_setopt(h.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(h.get(), CURLOPT_HTTPHEADER, list.get());
  curl_easy_setopt(h.get(), CURLOPT_USERAGENT, "lmtune (libcurl)");
  curl_easy_setopt(h.get(), CURLOPT_FOLLOWLOCATION, follow_redirects ? 1L : 0L);
  curl_easy_setopt(h.get(), CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(h.get(), CURLOPT_CONNECTTIMEOUT, 10L);
  // A stalled connection (under 1 byte/s for 30 s) is a transport failure, retried with a Range.
  curl_easy_setopt(h.get(), CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(h.get(), CURLOPT_LOW_SPEED_TIME, 30L);
  curl_easy_setopt(h.get(), CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h.get(), CURLOPT_HEADERFUNCTION, on_header);
  return h;
}

// The progress display of one file: a bar redrawn in place on a terminal, a line every 10 s otherwise.
class Progress {
 public:
  Progress(std::string name, uint64_t total, uint64_t start)
      : name_(std::move(name)),
        total_(total),
        start_(start),
        tty_(::isatty(STDERR_FILENO)),
        t0_(Clock::now()),
        last_(t0_) {
    if (!tty_)
      std::fprintf(stderr, "[hub] downloading %s (%s)%s\n", name_.c_str(), human_bytes(total_).c_str(),
                   start_ ? str_cat(", resuming at ", human_bytes(start_)).c_str() : "");
  }

  void update(uint64_t now_bytes, bool final) {
    auto now = Clock::now();
    double since = std::chrono::duration<double>(now - last_).count();
    if (!final && since < (tty_ ? 0.1 : 10.0)) return;
    last_ = now;
    double elapsed = std::chrono::duration<double>(now - t0_).count();
    double rate = elapsed > 0 ? double(now_bytes - std::min(now_bytes, start_)) / elapsed : 0.0;
    std::string eta = "?";
    if (rate > 0 && total_ > now_bytes) eta = str_cat(int64_t(double(total_ - now_bytes) / rate), "s");
    if (final) eta = str_cat(int64_t(elapsed), "s");
    int pct = total_ ? int(100.0 * double(now_bytes) / double(total_)) : 0;
    if (tty_) {
      constexpr int kWidth = 24;
      int fill = total_ ? std::min(kWidth, int(kWidth * double(now_bytes) / double(total_))) : 0;
      std::string bar = std::string(size_t(fill), '#') + std::string(size_t(kWidth - fill), ' ');
      std::fprintf(stderr, "\r%-28.28s %3d%% |%s| %s/%s %s/s %s %s\033[K", name_.c_str(), pct, bar.c_str(),
                   human_bytes(now_bytes).c_str(), human_bytes(total_).c_str(), human_bytes(uint64_t(rate)).c_str(),
                   final ? "in" : "ETA", eta.c_str());
      drawn_ = !final;
      if (final) std::fputc('\n', stderr);
    } else {
      std::fprintf(stderr, "[hub] %s %d%% %s/%s %s/s %s %s\n", name_.c_str(), pct, human_bytes(now_bytes).c_str(),
                   human_bytes(total_).c_str(), human_bytes(uint64_t(rate)).c_str(), final ? "in" : "ETA", eta.c_str());
    }
  }

  // Ends a bar left mid-line by a failed transfer, so the next message starts on its own line.
  void interrupt() {
    if (drawn_) std::fputc('\n', stderr);
    drawn_ = false;
  }

 private:
  std::string name_;
  uint64_t total_, start_;
  bool tty_;
  bool drawn_ = false;  // a bar is on screen without its newline
  Clock::time_point t0_, last_;
};

struct AppendState {
  CURL* handle = nullptr;
  HttpResult* result = nullptr;
  int fd = -1;
  uint64_t offset = 0;   // bytes in the file before this transfer
  uint64_t written = 0;  // bytes in the file now
  bool decided = false;  // whether the response status was seen
  bool to_file = false;  // 200/206: the body goes to the file
  std::string io_error;
  uint64_t expected = 0;  // the announced size; 0 = unknown
  bool overrun = false;   // the body went past it: stopped there
  Progress* progress = nullptr;
};

size_t on_append(char* data, size_t size, size_t n, void* user) {
  auto* s = static_cast<AppendState*>(user);
  size_t bytes = size * n;
  if (!s->decided) {
    s->decided = true;
    long code = 0;
    curl_easy_getinfo(s->handle, CURLINFO_RESPONSE_CODE, &code);
    s->to_file = code == 200 || code == 206;
    if (code == 200 && s->offset > 0) {  // the server ignored our Range: start over
      if (::ftruncate(s->fd, 0) != 0 || ::lseek(s->fd, 0, SEEK_SET) != 0) {
        s->io_error = std::strerror(errno);
        return 0;
      }
      s->offset = s->written = 0;
    }
  }
  if (!s->to_file) return on_body(data, size, n, s->result);
  // A server that sends more than it announced is stopped at once, not after filling the disk.
  if (s->expected > 0 && s->written + bytes > s->expected) {
    s->overrun = true;
    return 0;
  }
  const char* p = data;
  size_t left = bytes;
  while (left > 0) {
    ssize_t w = ::write(s->fd, p, left);
    if (w < 0) {
      if (errno == EINTR) continue;
      s->io_error = std::strerror(errno);
      return 0;  // makes curl fail the transfer with CURLE_WRITE_ERROR
    }
    p += w;
    left -= size_t(w);
  }
  s->written += bytes;
  if (s->progress) s->progress->update(s->written, false);
  return bytes;
}

// Headers and body of the answer go into r.
void capture_into(CURL* h, HttpResult& r) {
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &r);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &r);
}

// Runs the request; the status, or the transport error, into r.
HttpResult perform(CURL* h, HttpResult& r) {
  CURLcode rc = curl_easy_perform(h);
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r.status);
  if (rc != CURLE_OK) r.transport_error = curl_easy_strerror(rc);
  return r;
}

}  // namespace

std::string HttpResult::header(const std::string& lower_name) const {
  auto it = headers.find(lower_name);
  return it == headers.end() ? std::string() : it->second;
}

HttpResult http_request(const std::string& method, const std::string& url, const std::vector<std::string>& headers,
                        bool follow_redirects) {
  ListPtr list(nullptr, curl_slist_free_all);
  CurlPtr h = make_handle(url, headers, list, follow_redirects);
  HttpResult r;
  capture_into(h.get(), r);
  curl_easy_setopt(h.get(), CURLOPT_TIMEOUT, 60L);
  if (method == "HEAD") curl_easy_setopt(h.get(), CURLOPT_NOBODY, 1L);
  return perform(h.get(), r);
}

HttpResult http_send(const std::string& method, const std::string& url, const std::vector<std::string>& headers,
                     const std::string& body) {
  std::vector<std::string> all = headers;
  all.push_back("Expect:");  // no 100-continue round trip
  ListPtr list(nullptr, curl_slist_free_all);
  CurlPtr h = make_handle(url, all, list, false);
  HttpResult r;
  capture_into(h.get(), r);
  curl_easy_setopt(h.get(), CURLOPT_CUSTOMREQUEST, method.c_str());
  curl_easy_setopt(h.get(), CURLOPT_POSTFIELDS, body.data());
  curl_easy_setopt(h.get(), CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(body.size()));
  curl_easy_setopt(h.get(), CURLOPT_TIMEOUT, 600L);
  return perform(h.get(), r);
}

namespace {
size_t on_read_file(char* buf, size_t size, size_t n, void* user) {
  return std::fread(buf, 1, size * n, static_cast<std::FILE*>(user));
}
}  // namespace

HttpResult http_put_file(const std::string& url, const std::vector<std::string>& headers, const std::string& path,
                         uint64_t size) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!f) fail("[hub] cannot open ", path, ": ", std::strerror(errno));
  std::vector<std::string> all = headers;
  all.push_back("Expect:");
  ListPtr list(nullptr, curl_slist_free_all);
  CurlPtr h = make_handle(url, all, list, false);
  HttpResult r;
  capture_into(h.get(), r);
  curl_easy_setopt(h.get(), CURLOPT_UPLOAD, 1L);
  curl_easy_setopt(h.get(), CURLOPT_READFUNCTION, on_read_file);
  curl_easy_setopt(h.get(), CURLOPT_READDATA, f.get());
  curl_easy_setopt(h.get(), CURLOPT_INFILESIZE_LARGE, curl_off_t(size));
  return perform(h.get(), r);
}

HttpResult download_append(const std::string& url, const std::vector<std::string>& headers, const std::string& path,
                           uint64_t expected_size, const std::string& display_name) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) fail("[hub] cannot open ", path, " for writing: ", std::strerror(errno));
  off_t size = ::lseek(fd, 0, SEEK_END);
  std::vector<std::string> all = headers;
  if (size > 0) all.push_back(str_cat("Range: bytes=", size, "-"));
  all.push_back("Accept-Encoding: identity");  // the size we verify is the file's, not a compressed one's
  ListPtr list(nullptr, curl_slist_free_all);
  CurlPtr h = make_handle(url, all, list, true);
  HttpResult r;
  Progress progress(display_name, expected_size, uint64_t(size));
  AppendState s;
  s.handle = h.get();
  s.result = &r;
  s.fd = fd;
  s.offset = s.written = uint64_t(size);
  s.progress = &progress;
  s.expected = expected_size;
  curl_easy_setopt(h.get(), CURLOPT_HEADERDATA, &r);
  curl_easy_setopt(h.get(), CURLOPT_WRITEFUNCTION, on_append);
  curl_easy_setopt(h.get(), CURLOPT_WRITEDATA, &s);
  CURLcode rc = curl_easy_perform(h.get());
  curl_easy_getinfo(h.get(), CURLINFO_RESPONSE_CODE, &r.status);
  bool ok_status = r.status == 200 || r.status == 206;
  if (ok_status) progress.update(s.written, rc == CURLE_OK);
  if (rc != CURLE_OK) progress.interrupt();
  if (::fsync(fd) != 0 && s.io_error.empty()) s.io_error = std::strerror(errno);
  ::close(fd);
  if (!s.io_error.empty()) fail("[hub] writing ", path, " failed: ", s.io_error);
  if (s.overrun) {
    ::unlink(path.c_str());
    fail("[hub] ", display_name, ": the server sent more than the ", expected_size,
         " bytes it announced; the download was stopped and its partial file deleted");
  }
  if (rc != CURLE_OK) r.transport_error = curl_easy_strerror(rc);
  return r;
}

std::string sha256_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("[hub] cannot open ", path, ": ", std::strerror(errno));
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  LMT_CHECK(ctx && EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) == 1, "[hub] SHA-256 init failed");
  std::vector<unsigned char> buf(size_t(1) << 20);
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      ::close(fd);
      fail("[hub] reading ", path, " failed: ", std::strerror(e));
    }
    if (n == 0) break;
    EVP_DigestUpdate(ctx.get(), buf.data(), size_t(n));
  }
  ::close(fd);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out += kHex[md[i] >> 4];
    out += kHex[md[i] & 15];
  }
  return out;
}

std::string url_quote(const std::string& s, bool keep_slash) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
      out += char(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::string human_bytes(uint64_t n) {
  const char* units[] = {"B", "kB", "MB", "GB", "TB"};
  double v = double(n);
  int u = 0;
  while (v >= 1000.0 && u < 4) {
    v /= 1000.0;
    ++u;
  }
  char buf[32];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%llu B", (unsigned long long)n);
  else
    std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
  return buf;
}

}  // namespace lmtune::hub_detail
