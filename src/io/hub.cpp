// resolve_model: a Hub repo id becomes a snapshot folder in huggingface_hub's cache layout. The steps
// are huggingface_hub's snapshot_download: repo info at a revision -> commit and file list; per file a
// HEAD of resolve/<commit>/<file> -> etag and size; GET into blobs/<etag>.incomplete (resumed with a
// Range), verified, renamed to blobs/<etag>; snapshots/<commit>/<file> -> ../../blobs/<etag>; refs/<rev>.
#include "io/hub.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/hub_http.h"

namespace fs = std::filesystem;

namespace lmtune {

using namespace hub_detail;

namespace {

constexpr int kMaxAttempts = 5;  // transfers of one file, each resuming where the last one stopped

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

std::string expand_user(const std::string& p) {
  if (p.empty() || p[0] != '~') return p;
  return env("HOME") + p.substr(1);
}

bool is_true(std::string v) {
  for (char& c : v) c = char(std::toupper(static_cast<unsigned char>(c)));
  return v == "1" || v == "ON" || v == "YES" || v == "TRUE";
}

std::string read_trimmed(const std::string& path) {
  std::ifstream f(path);
  if (!f) return {};
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

// A commit id as a cache folder name: [A-Za-z0-9._-], 1 to 128 characters, not "." or "..".
bool is_safe_commit_name(const std::string& s) {
  if (s.empty() || s.size() > 128 || s == "." || s == "..") return false;
  for (char c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') return false;
  return true;
}

// A file name of a Hub listing as a relative path inside the snapshot: no empty, "." or ".."
// component, not absolute, no backslash or NUL (the Hub never lists such names; a server that does
// is trying to write outside the cache).
bool is_safe_repo_file_name(const std::string& name) {
  if (name.empty() || name.size() > 1024 || name[0] == '/') return false;
  if (name.find('\\') != std::string::npos || name.find('\0') != std::string::npos) return false;
  size_t start = 0;
  for (;;) {
    size_t slash = name.find('/', start);
    std::string part = name.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (part.empty() || part == "." || part == "..") return false;
    if (slash == std::string::npos) return true;
    start = slash + 1;
  }
}

bool is_sha256_hex(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

// huggingface_hub's _normalize_etag: W/"x" and "x" -> x.
std::string normalize_etag(std::string e) {
  if (e.rfind("W/", 0) == 0) e = e.substr(2);
  if (e.size() >= 2 && e.front() == '"' && e.back() == '"') e = e.substr(1, e.size() - 2);
  return e;
}

uint64_t parse_size(const std::string& s) {
  if (s.empty()) return 0;
  char* end = nullptr;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  return end && *end == '\0' ? uint64_t(v) : 0;
}

uint64_t file_size_or_zero(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? uint64_t(st.st_size) : 0;
}

// An exclusive flock on <cache>/.locks/<repo folder>/<etag>.lock, as huggingface_hub's filelock takes,
// so a Python download and ours never write the same .incomplete at once.
class BlobLock {
 public:
  explicit BlobLock(const std::string& path) {
    fs::create_directories(fs::path(path).parent_path());
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("[hub] cannot open lock file ", path, ": ", std::strerror(errno));
    while (::flock(fd_, LOCK_EX) != 0) {
      if (errno != EINTR) fail("[hub] cannot lock ", path, ": ", std::strerror(errno));
    }
  }
  ~BlobLock() {
    if (fd_ >= 0) ::close(fd_);  // closing releases the lock
  }
  BlobLock(const BlobLock&) = delete;
  BlobLock& operator=(const BlobLock&) = delete;

 private:
  int fd_ = -1;
};

struct Hub {
  const HubSettings& s;
  std::string repo_id;
  std::string revision;
  std::string repo_dir;  // <cache>/models--org--name

  std::vector<std::string> auth() const {
    if (s.token.empty()) return {};
    return {"Authorization: Bearer " + s.token};
  }

  std::string where() const { return str_cat(repo_id, "@", revision); }

  [[noreturn]] void http_fail(const HttpResult& r, const std::string& url, const std::string& what) const {
    std::string code = r.header("x-error-code"), message = r.header("x-error-message");
    std::string detail = message.empty() ? std::string() : str_cat(" (Hub says: ", message, ")");
    std::string token_hint = s.token.empty() ? "set HF_TOKEN to a token of an account with access"
                                             : "the token in HF_TOKEN has no access to it";
    if (code == "GatedRepo" || (r.status == 403 && code.empty()))
      fail("[hub] ", repo_id, " is a gated or private repo (HTTP ", r.status, " for ", what, "): request access at ",
           s.endpoint, "/", repo_id, " and ", token_hint, detail);
    if (r.status == 401 || r.status == 403)
      fail("[hub] ", repo_id, ": HTTP ", r.status, " for ", what,
           ": the repo does not exist, or it is private or gated; ", token_hint, detail);
    if (r.status == 404) {
      if (code == "RevisionNotFound") fail("[hub] revision '", revision, "' not found in ", repo_id, detail);
      if (code == "EntryNotFound") fail("[hub] ", what, " not found in ", where(), detail);
      fail("[hub] ", where(), " not found (HTTP 404 for ", url, "): check the repo id and the revision", detail);
    }
    fail("[hub] HTTP ", r.status, " for ", url, detail);
  }

  [[noreturn]] void network_fail(const HttpResult& r, const std::string& url) const {
    fail("[hub] cannot reach ", s.endpoint, " (", r.transport_error, ", for ", url,
         "): check the network, or set HF_HUB_OFFLINE=1 to use models already in the cache (", s.cache_dir, ")");
  }

  // A snapshot must be a real folder under snapshots/ whose links all end inside the cache (the
  // blobs, as huggingface_hub makes them): a planted symlink would otherwise make lmtune read, and
  // `lmtune manage` or a later download write, outside it.
  void check_snapshot(const std::string& snap) const {
    std::error_code ec;
    LMT_CHECK(!fs::is_symlink(snap, ec), "[hub] ", snap,
              " is a symbolic link, not a snapshot folder: refusing to follow it out of the cache");
    const fs::path cache = fs::weakly_canonical(s.cache_dir, ec);
    auto inside = [&](const fs::path& p) {
      std::error_code pec;
      const fs::path c = fs::weakly_canonical(p, pec);
      auto [a, b] = std::mismatch(cache.begin(), cache.end(), c.begin(), c.end());
      return !pec && a == cache.end() && b != c.end();
    };
    LMT_CHECK(inside(snap), "[hub] ", snap, " resolves to ", fs::weakly_canonical(snap, ec).string(),
              ", outside the cache ", s.cache_dir);
    for (auto it = fs::recursive_directory_iterator(snap, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
      if (!it->is_symlink(ec)) continue;
      LMT_CHECK(inside(it->path()), "[hub] ", it->path().string(), " links to ",
                fs::read_symlink(it->path(), ec).string(), ", outside the cache ", s.cache_dir,
                ": refusing to load it (delete the repo with `lmtune manage --delete "
                "--pattern ",
                repo_id, "`)");
    }
  }

  // The snapshot folder of revision from the cache alone; empty when it is not there.
  std::string cached_snapshot() const {
    std::string commit = revision;
    if (!fs::is_directory(repo_dir + "/snapshots/" + commit)) {
      std::string ref = repo_dir + "/refs/" + revision;
      commit = read_trimmed(ref);
      // huggingface_hub writes a commit hash here; anything else (`../../..`, a path) could lead
      // the snapshot folder out of the cache
      LMT_CHECK(commit.empty() || is_safe_commit_name(commit), "[hub] ", ref, " holds '", commit.substr(0, 100),
                "', not a commit hash: refusing to follow it out of snapshots/ (delete the file, or the repo with "
                "`lmtune manage --delete --pattern ",
                repo_id, "`)");
    }
    if (commit.empty()) return {};
    std::string snap = repo_dir + "/snapshots/" + commit;
    if (!fs::is_directory(snap) || fs::is_empty(snap)) return {};
    check_snapshot(snap);
    return snap;
  }

  std::string resolve() {
    if (s.offline) {
      std::string snap = cached_snapshot();
      if (snap.empty())
        fail("[hub] ", where(), " is not in the cache (", repo_dir,
             ") and HF_HUB_OFFLINE=1 forbids downloading: ", "run once without HF_HUB_OFFLINE to fetch it");
      return snap;
    }
    std::string url = str_cat(s.endpoint, "/api/models/", repo_id, "/revision/", url_quote(revision, false));
    HttpResult r = http_request("GET", url, auth(), true);
    if (r.transport_failed()) {
      std::string snap = cached_snapshot();
      if (snap.empty()) network_fail(r, url);
      std::fprintf(stderr, "[hub] warning: cannot reach %s (%s); using the cached %s\n", s.endpoint.c_str(),
                   r.transport_error.c_str(), where().c_str());
      return snap;
    }
    if (r.status != 200) http_fail(r, url, "the repo info");
    nlohmann::json info;
    try {
      info = nlohmann::json::parse(r.body);
    } catch (const std::exception& e) {
      fail("[hub] ", url, " returned invalid JSON: ", e.what());
    }
    LMT_CHECK(info.is_object() && info.contains("sha") && info["sha"].is_string(), "[hub] ", url,
              " returned no commit 'sha'");
    std::string commit = info["sha"].get<std::string>();
    LMT_CHECK(is_safe_commit_name(commit), "[hub] ", url, " returned an invalid commit '", commit.substr(0, 100),
              "' (a commit hash is [A-Za-z0-9._-])");
    std::vector<std::string> files;
    if (info.contains("siblings") && info["siblings"].is_array()) {
      for (const auto& sib : info["siblings"]) {
        if (!sib.is_object() || !sib.contains("rfilename") || !sib["rfilename"].is_string()) continue;
        std::string name = sib["rfilename"].get<std::string>();
        LMT_CHECK(is_safe_repo_file_name(name), "[hub] ", url, " lists a file named '", name.substr(0, 200),
                  "', which is not a relative path inside the repo (an absolute path or a '..' component): refusing "
                  "to download from this listing");
        if (hub_file_needed(name)) files.push_back(name);
      }
    }
    LMT_CHECK(!files.empty(), "[hub] ", where(), " (commit ", commit,
              ") has no model files (config.json, *.safetensors, ", "tokenizer files)");
    std::string snap = repo_dir + "/snapshots/" + commit;
    if (fs::is_directory(snap)) check_snapshot(snap);  // before anything is written through it
    for (const std::string& f : files) {
      if (fs::is_regular_file(snap + "/" + f)) continue;  // cached: the link resolves to a blob
      fetch_file(commit, f);
    }
    if (revision != commit) {
      std::string ref = repo_dir + "/refs/" + revision;
      if (read_trimmed(ref) != commit) {
        fs::create_directories(fs::path(ref).parent_path());
        write_file_atomic(ref, commit);
      }
    }
    return snap;
  }

  void fetch_file(const std::string& commit, const std::string& file) {
    std::string url = str_cat(s.endpoint, "/", repo_id, "/resolve/", commit, "/", url_quote(file, true));
    // HEAD without following redirects: the Hub's 302 to its CDN carries X-Linked-Etag/-Size; relative
    // redirects (a renamed repo) are followed, as huggingface_hub does.
    HttpResult head;
    std::string target = url;
    for (int hop = 0;; ++hop) {
      std::vector<std::string> headers = auth();
      headers.push_back("Accept-Encoding: identity");  // the size announced must be the file's, not a gzip's
      head = http_request("HEAD", target, headers, false);
      if (head.transport_failed()) network_fail(head, target);
      std::string loc = head.header("location");
      if (head.status >= 300 && head.status < 400 && !loc.empty() && loc[0] == '/' && hop < 5) {
        size_t host_end = s.endpoint.find('/', s.endpoint.find("://") + 3);
        target = (host_end == std::string::npos ? s.endpoint : s.endpoint.substr(0, host_end)) + loc;
        continue;
      }
      break;
    }
    bool redirect = head.status >= 300 && head.status < 400;
    if (head.status != 200 && !redirect) http_fail(head, url, file);
    std::string etag = head.header("x-linked-etag");
    if (etag.empty()) etag = head.header("etag");
    etag = normalize_etag(etag);
    LMT_CHECK(!etag.empty() && etag.find('/') == std::string::npos, "[hub] ", url,
              ": no usable ETag in the answer, cannot place the file in the cache");
    uint64_t size = parse_size(head.header("x-linked-size"));
    if (size == 0 && !redirect) size = parse_size(head.header("content-length"));
    std::string download_url = redirect ? head.header("location") : target;
    LMT_CHECK(!download_url.empty(), "[hub] ", url, ": redirect without a Location");
    if (download_url[0] == '/') download_url = s.endpoint + download_url;

    std::string blob = repo_dir + "/blobs/" + etag;
    if (!fs::is_regular_file(blob)) {
      fs::create_directories(repo_dir + "/blobs");
      BlobLock lock(str_cat(s.cache_dir, "/.locks/", hub_repo_folder_name(repo_id), "/", etag, ".lock"));
      if (!fs::is_regular_file(blob)) download_blob(download_url, file, blob, etag, size);
    }
    link_snapshot(commit, file, blob);
  }

  void download_blob(const std::string& url, const std::string& file, const std::string& blob, const std::string& etag,
                     uint64_t size) {
    std::string part = blob + ".incomplete";
    // The CDN's URL is signed: the token goes only to the endpoint.
    std::vector<std::string> headers = url.rfind(s.endpoint, 0) == 0 ? auth() : std::vector<std::string>{};
    HttpResult last;
    for (int attempt = 1; attempt <= kMaxAttempts; ++attempt) {
      uint64_t have = file_size_or_zero(part);
      if (size > 0 && have == size) break;
      if (size > 0 && have > size) fs::remove(part);  // not a prefix of this file: start over
      last = download_append(url, headers, part, size, file);
      if (last.transport_failed()) {
        if (attempt == kMaxAttempts) break;  // no attempt left to announce: the error below says so
        std::fprintf(stderr, "[hub] %s: transfer interrupted (%s) at %s; resuming (attempt %d of %d)\n", file.c_str(),
                     last.transport_error.c_str(), human_bytes(file_size_or_zero(part)).c_str(), attempt + 1,
                     kMaxAttempts);
        std::this_thread::sleep_for(std::chrono::milliseconds(200 * attempt));
        continue;
      }
      if (last.status == 416) {  // our Range is past the end: the partial file is not this one's prefix
        fs::remove(part);
        continue;
      }
      if (last.status != 200 && last.status != 206) http_fail(last, url, file);
      if (size == 0 || file_size_or_zero(part) >= size) break;
    }
    uint64_t have = file_size_or_zero(part);
    if (last.transport_failed() && (size == 0 || have < size))
      fail("[hub] ", file, ": download of ", where(), " failed after ", kMaxAttempts, " attempts (", have, " of ", size,
           " bytes kept in ", part, "; run again to resume): ", last.transport_error);
    if (size > 0 && have != size) {
      fs::remove(part);
      fail("[hub] ", file, ": downloaded ", have, " bytes but the Hub announced ", size,
           "; the partial file was deleted");
    }
    if (is_sha256_hex(etag)) {
      std::string got = sha256_file(part);
      if (got != etag) {
        fs::remove(part);
        fail("[hub] ", file, " of ", where(), ": SHA-256 mismatch (expected ", etag, ", got ", got,
             "); the corrupt download was deleted, run again");
      }
    }
    fs::rename(part, blob);
  }

  void link_snapshot(const std::string& commit, const std::string& file, const std::string& blob) {
    fs::path link = fs::path(repo_dir) / "snapshots" / commit / file;
    fs::create_directories(link.parent_path());
    fs::path target = fs::path(blob).lexically_relative(link.parent_path());  // ../../blobs/<etag>
    // A link made under a temp name and renamed over: readers never see a missing or half-made entry.
    fs::path tmp = link;
    tmp += str_cat(".tmp.", ::getpid());
    std::error_code ec;
    fs::remove(tmp, ec);
    fs::create_symlink(target, tmp);
    fs::rename(tmp, link);
  }
};

}  // namespace

HubSettings HubSettings::from_env() {
  HubSettings s;
  s.endpoint = env("HF_ENDPOINT");
  if (s.endpoint.empty()) s.endpoint = "https://huggingface.co";
  while (!s.endpoint.empty() && s.endpoint.back() == '/') s.endpoint.pop_back();
  std::string home = env("HF_HOME");
  if (home.empty()) {
    std::string xdg = env("XDG_CACHE_HOME");
    home = (xdg.empty() ? env("HOME") + "/.cache" : xdg) + "/huggingface";
  }
  home = expand_user(home);
  s.cache_dir = env("HF_HUB_CACHE");
  if (s.cache_dir.empty()) s.cache_dir = env("HUGGINGFACE_HUB_CACHE");
  if (s.cache_dir.empty()) s.cache_dir = home + "/hub";
  s.cache_dir = expand_user(s.cache_dir);
  s.token = env("HF_TOKEN");
  if (s.token.empty()) s.token = env("HUGGING_FACE_HUB_TOKEN");
  if (s.token.empty()) {
    std::string token_path = env("HF_TOKEN_PATH");
    s.token = read_trimmed(token_path.empty() ? home + "/token" : expand_user(token_path));
  }
  s.offline = is_true(env("HF_HUB_OFFLINE"));
  return s;
}

bool is_hub_repo_id(const std::string& spec) {
  if (spec.empty() || spec.size() > 96 || fs::exists(spec)) return false;
  if (spec[0] == '/' || spec[0] == '.' || spec[0] == '~' || spec[0] == '-') return false;
  if (spec.find("--") != std::string::npos || spec.find("..") != std::string::npos) return false;
  size_t slash = spec.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == spec.size()) return false;
  if (spec.find('/', slash + 1) != std::string::npos) return false;
  for (char c : spec)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.' && c != '/') return false;
  char last = spec.back();
  return last != '.' && last != '-';
}

std::string hub_repo_folder_name(const std::string& repo_id) {
  std::string out = "models";
  size_t start = 0;
  for (;;) {
    size_t slash = repo_id.find('/', start);
    out += "--" + repo_id.substr(start, slash - start);
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return out;
}

bool hub_file_needed(const std::string& name) {
  // mlx-lm's allow_patterns without *.py (lmtune runs no remote code); fnmatch without FNM_PATHNAME
  // lets '*' cross '/', as huggingface_hub's filter_repo_objects does.
  static const char* kPatterns[] = {
      "*.json", "model*.safetensors", "tokenizer.model", "*.tiktoken", "tiktoken.model", "*.txt", "*.jsonl", "*.jinja"};
  for (const char* p : kPatterns)
    if (::fnmatch(p, name.c_str(), 0) == 0) return true;
  return false;
}

bool is_hub_model_name(const std::string& spec) { return is_hub_repo_id(spec.substr(0, spec.find('@'))); }

std::string resolve_model(const std::string& spec) { return resolve_model(spec, HubSettings::from_env()); }

std::string resolve_model(const std::string& spec, const HubSettings& settings) {
  if (spec.empty() || fs::exists(spec)) return spec;
  size_t at = spec.find('@');
  std::string repo_id = spec.substr(0, at);
  std::string revision = at == std::string::npos ? "main" : spec.substr(at + 1);
  if (!is_hub_repo_id(repo_id)) return spec;  // a path; loading reports it missing
  LMT_CHECK(!revision.empty() && revision.find("..") == std::string::npos && revision[0] != '/',
            "[hub] invalid revision '", revision, "' in '", spec, "'");
  Hub hub{settings, repo_id, revision, settings.cache_dir + "/" + hub_repo_folder_name(repo_id)};
  return fs::absolute(hub.resolve()).lexically_normal().string();
}

}  // namespace lmtune
