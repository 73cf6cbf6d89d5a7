// HTTP for the Hub client (libcurl): small requests, resumable file downloads with a progress
// display on stderr, and SHA-256 of a file. Internal to src/io (hub.cpp, hub_cache.cpp).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lmtune::hub_detail {

struct HttpResult {
  long status = 0;                             // of the last response; 0 when no response came
  std::map<std::string, std::string> headers;  // of the last response, keys lower-cased
  std::string body;                            // small requests only
  std::string transport_error;                 // curl's message when the transfer failed
  bool transport_failed() const { return !transport_error.empty(); }
  std::string header(const std::string& lower_name) const;
};

// One request; follow_redirects=false returns the 3xx itself (its Location and X-Linked-* headers).
// method is GET or HEAD; headers are "Name: value" lines.
HttpResult http_request(const std::string& method, const std::string& url, const std::vector<std::string>& headers,
                        bool follow_redirects);

// One request with a body (POST / PUT of small JSON or ndjson; redirects not followed).
HttpResult http_send(const std::string& method, const std::string& url, const std::vector<std::string>& headers,
                     const std::string& body);

// PUTs the bytes of the file at path (size bytes) to url, streamed from disk (an LFS upload).
HttpResult http_put_file(const std::string& url, const std::vector<std::string>& headers, const std::string& path,
                         uint64_t size);

// GETs url (redirects followed) and appends the body to path, sending "Range: bytes=<size>-" when path
// already holds bytes; a 200 answer to a Range request restarts the file. Progress goes to stderr,
// labelled display_name, over expected_size bytes (0 = unknown). The body of an HTTP error is not
// written. Returns the result of the transfer; the file keeps whatever arrived.
HttpResult download_append(const std::string& url, const std::vector<std::string>& headers, const std::string& path,
                           uint64_t expected_size, const std::string& display_name);

// Lower-case hex SHA-256 of a file's bytes.
std::string sha256_file(const std::string& path);

// "%XX"-escapes everything but unreserved characters (and '/' when keep_slash).
std::string url_quote(const std::string& s, bool keep_slash);

// "1.5 GB", "312.0 kB" (decimal units, as huggingface-cli prints).
std::string human_bytes(uint64_t n);

}  // namespace lmtune::hub_detail
