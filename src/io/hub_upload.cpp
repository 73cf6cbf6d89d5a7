// See hub_upload.h. The steps and payloads follow the Hub's public API as huggingface_hub uses it
// (HfApi.create_repo, preupload_lfs_files, lfs.post_lfs_batch_info, create_commit's ndjson).
#include "io/hub_upload.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/hub_http.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace lmtune {

namespace {

using hub_detail::HttpResult;

constexpr size_t kChunk = 256;  // files per preupload / LFS batch request, as huggingface_hub sends them

std::string base64(const std::string& in) {
  static const char* kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = uint32_t(uint8_t(in[i])) << 16 | uint32_t(uint8_t(in[i + 1])) << 8 | uint8_t(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += kAlphabet[(v >> s) & 63];
  }
  if (i < in.size()) {
    uint32_t v = uint32_t(uint8_t(in[i])) << 16 | (i + 1 < in.size() ? uint32_t(uint8_t(in[i + 1])) << 8 : 0);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < in.size() ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string read_bytes(const std::string& path, size_t limit = std::string::npos) {
  std::ifstream f(path, std::ios::binary);
  LMT_CHECK(f, "[hub] cannot open ", path);
  std::string s;
  if (limit == std::string::npos) {
    s.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  } else {
    s.resize(limit);
    f.read(s.data(), std::streamsize(limit));
    s.resize(size_t(f.gcount()));
  }
  return s;
}

bool valid_repo_id(const std::string& id) {
  size_t slash = id.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == id.size() ||
      id.find('/', slash + 1) != std::string::npos)
    return false;
  if (id.find("--") != std::string::npos || id.find("..") != std::string::npos) return false;
  for (const std::string& part : {id.substr(0, slash), id.substr(slash + 1)}) {
    if (part.front() == '-' || part.front() == '.' || part.back() == '-' || part.back() == '.') return false;
    for (char c : part)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) return false;
  }
  return true;
}

struct LocalFile {
  std::string path;  // in the repo, '/'-separated
  std::string full;  // on disk
  uint64_t size = 0;
  std::string sha256;
  bool lfs = false;
  bool ignored = false;  // preupload's shouldIgnore (the repo's .gitignore): left out of the commit
};

class Uploader {
 public:
  Uploader(const HubSettings& s, std::string repo_id) : s_(s), repo_(std::move(repo_id)) {}

  // The Hub's message for a failed request: X-Error-Message, else the JSON body's "error", else the body.
  [[noreturn]] void http_fail(const HttpResult& r, const std::string& url, const std::string& step) const {
    if (r.transport_failed())
      fail("[hub] cannot reach ", s_.endpoint, " (", r.transport_error, ", for ", url, ") while ", step, " for ",
           repo_);
    std::string msg = r.header("x-error-message");
    if (msg.empty()) {
      json j = json::parse(r.body, nullptr, false);
      if (j.is_object() && j.contains("error") && j["error"].is_string()) msg = j["error"].get<std::string>();
    }
    if (msg.empty()) msg = r.body.substr(0, 300);
    std::string hint = r.status == 401 || r.status == 403 ? " (check that the token may write to this repo)" : "";
    fail("[hub] ", step, " for ", repo_, " failed: HTTP ", r.status, " for ", url, ": ", msg, hint);
  }

  json post_json(const std::string& url, const json& body, const std::string& step,
                 std::vector<std::string> headers = {"Content-Type: application/json"}) const {
    headers.push_back("Authorization: Bearer " + s_.token);
    HttpResult r = hub_detail::http_send("POST", url, headers, body.dump());
    if (r.transport_failed() || r.status / 100 != 2) http_fail(r, url, step);
    json j = json::parse(r.body, nullptr, false);
    LMT_CHECK(!j.is_discarded(), "[hub] ", step, ": ", url, " returned invalid JSON: ", r.body.substr(0, 200));
    return j;
  }

  void create_repo() const {
    const std::string url = s_.endpoint + "/api/repos/create";
    size_t slash = repo_.find('/');
    json body = {{"name", repo_.substr(slash + 1)}, {"organization", repo_.substr(0, slash)}};
    HttpResult r = hub_detail::http_send(
        "POST", url, {"Content-Type: application/json", "Authorization: Bearer " + s_.token}, body.dump());
    if (r.transport_failed() || (r.status / 100 != 2 && r.status != 409)) http_fail(r, url, "creating the repo");
  }

  // preupload: which files the Hub wants through LFS.
  void upload_modes(std::vector<LocalFile>& files) const {
    const std::string url = s_.endpoint + "/api/models/" + repo_ + "/preupload/main";
    for (size_t b = 0; b < files.size(); b += kChunk) {
      json list = json::array();
      for (size_t i = b; i < std::min(files.size(), b + kChunk); ++i)
        list.push_back(
            {{"path", files[i].path}, {"sample", base64(read_bytes(files[i].full, 512))}, {"size", files[i].size}});
      json j = post_json(url, {{"files", list}}, "the preupload check");
      LMT_CHECK(j.contains("files") && j["files"].is_array(), "[hub] preupload: ", url, " answered without 'files'");
      for (const json& f : j["files"]) {
        LMT_CHECK(f.is_object() && f.contains("path") && f["path"].is_string() && f.contains("uploadMode"),
                  "[hub] preupload: malformed entry ", f.dump());
        const std::string path = f["path"].get<std::string>();
        auto it = std::find_if(files.begin(), files.end(), [&](const LocalFile& l) { return l.path == path; });
        LMT_CHECK(it != files.end(), "[hub] preupload: the Hub named a file not sent: ", f["path"].dump());
        it->lfs = f["uploadMode"].is_string() && f["uploadMode"].get<std::string>() == "lfs" &&
                  it->size > 0;  // an empty file cannot go through LFS: inline
        it->ignored = f.contains("shouldIgnore") && f["shouldIgnore"].is_boolean() && f["shouldIgnore"].get<bool>();
      }
    }
  }

  // The LFS batch API, then a PUT of each object the Hub does not have yet, then its verify call.
  int64_t upload_lfs(const std::vector<LocalFile>& files) const {
    std::vector<const LocalFile*> lfs;
    for (const LocalFile& f : files)
      if (f.lfs && !f.ignored) lfs.push_back(&f);
    const std::string url = s_.endpoint + "/" + repo_ + ".git/info/lfs/objects/batch";
    const std::vector<std::string> lfs_headers = {"Accept: application/vnd.git-lfs+json",
                                                  "Content-Type: application/vnd.git-lfs+json"};
    int64_t sent = 0;
    for (size_t b = 0; b < lfs.size(); b += kChunk) {
      json objects = json::array();
      for (size_t i = b; i < std::min(lfs.size(), b + kChunk); ++i)
        objects.push_back({{"oid", lfs[i]->sha256}, {"size", lfs[i]->size}});
      json req = {{"operation", "upload"},
                  {"transfers", {"basic"}},
                  {"objects", objects},
                  {"hash_algo", "sha256"},
                  {"ref", {{"name", "main"}}}};
      json j = post_json(url, req, "the LFS batch request", lfs_headers);
      LMT_CHECK(j.contains("objects") && j["objects"].is_array(), "[hub] LFS batch: ", url,
                " answered without 'objects'");
      for (const json& o : j["objects"]) {
        std::string oid = o.value("oid", std::string());
        auto it = std::find_if(lfs.begin(), lfs.end(), [&](const LocalFile* f) { return f->sha256 == oid; });
        LMT_CHECK(it != lfs.end(), "[hub] LFS batch: the Hub answered for an object not sent: ", oid);
        const LocalFile& f = **it;
        if (o.contains("error")) fail("[hub] LFS batch refused ", f.path, " (", oid, "): ", o["error"].dump());
        if (!o.contains("actions") || !o["actions"].contains("upload")) continue;  // already on the Hub
        const json& up = o["actions"]["upload"];
        LMT_CHECK(up.contains("href") && up["href"].is_string(), "[hub] LFS batch: no upload href for ", f.path);
        std::vector<std::string> h;
        if (up.contains("header") && up["header"].is_object())
          for (auto& [k, v] : up["header"].items()) {
            LMT_CHECK(k != "chunk_size", "[hub] ", f.path,
                      ": the Hub asked for a multipart LFS upload, which lmtune does not implement");
            h.push_back(k + ": " + (v.is_string() ? v.get<std::string>() : v.dump()));
          }
        const std::string href = up["href"].get<std::string>();
        std::fprintf(stderr, "[hub] uploading %s (%s)\n", f.path.c_str(), hub_detail::human_bytes(f.size).c_str());
        HttpResult r = hub_detail::http_put_file(href, h, f.full, f.size);
        if (r.transport_failed() || r.status / 100 != 2) http_fail(r, href, "uploading " + f.path);
        ++sent;
        if (o["actions"].contains("verify")) {
          const json& v = o["actions"]["verify"];
          std::vector<std::string> vh = lfs_headers;
          if (v.contains("header") && v["header"].is_object())
            for (auto& [k, val] : v["header"].items())
              vh.push_back(k + ": " + (val.is_string() ? val.get<std::string>() : val.dump()));
          post_json(v.value("href", std::string()), {{"oid", f.sha256}, {"size", f.size}},
                    "verifying the upload of " + f.path, vh);
        }
      }
    }
    return sent;
  }

  std::string commit(const std::vector<LocalFile>& files, const std::string& message) const {
    const std::string url = s_.endpoint + "/api/models/" + repo_ + "/commit/main";
    std::string body = json({{"key", "header"}, {"value", {{"summary", message}, {"description", ""}}}}).dump() + "\n";
    for (const LocalFile& f : files) {
      if (f.ignored) continue;
      json line =
          f.lfs
              ? json({{"key", "lfsFile"},
                      {"value", {{"path", f.path}, {"algo", "sha256"}, {"oid", f.sha256}, {"size", f.size}}}})
              : json({{"key", "file"},
                      {"value", {{"content", base64(read_bytes(f.full))}, {"path", f.path}, {"encoding", "base64"}}}});
      body += line.dump() + "\n";
    }
    HttpResult r = hub_detail::http_send(
        "POST", url, {"Content-Type: application/x-ndjson", "Authorization: Bearer " + s_.token}, body);
    if (r.transport_failed() || r.status / 100 != 2) http_fail(r, url, "the commit");
    json j = json::parse(r.body, nullptr, false);
    return j.is_object() ? j.value("commitOid", std::string()) : std::string();
  }

 private:
  const HubSettings& s_;
  std::string repo_;
};

}  // namespace

void check_upload_ready(const std::string& repo_id, const HubSettings& s, const std::string& flag) {
  LMT_CHECK(valid_repo_id(repo_id), flag, ": '", repo_id,
            "' is not a Hub repo id (org/name of letters, digits, '-', '_', '.')");
  LMT_CHECK(!s.offline, flag, ": HF_HUB_OFFLINE is set, so nothing can be uploaded to ", s.endpoint);
  LMT_CHECK(!s.token.empty(), flag, ": no Hugging Face token to upload ", repo_id,
            " with: set HF_TOKEN, or log in (`huggingface-cli login` writes $HF_HOME/token, default "
            "~/.cache/huggingface/token)");
}

UploadSummary upload_folder(const std::string& folder, const std::string& repo_id, const std::string& commit_message,
                            const HubSettings& s) {
  check_upload_ready(repo_id, s, "[hub] upload");
  std::vector<LocalFile> files;
  for (auto it = fs::recursive_directory_iterator(folder); it != fs::recursive_directory_iterator(); ++it) {
    const std::string name = it->path().filename().string();
    if (!name.empty() && name[0] == '.') {
      if (it->is_directory()) it.disable_recursion_pending();
      continue;
    }
    if (!it->is_regular_file()) continue;
    LocalFile f;
    f.full = it->path().string();
    f.path = fs::relative(it->path(), folder).generic_string();
    f.size = uint64_t(it->file_size());
    f.sha256 = hub_detail::sha256_file(f.full);
    files.push_back(std::move(f));
  }
  std::sort(files.begin(), files.end(), [](const LocalFile& a, const LocalFile& b) { return a.path < b.path; });
  LMT_CHECK(!files.empty(), "[hub] upload: ", folder, " has no files");

  Uploader up(s, repo_id);
  up.create_repo();
  up.upload_modes(files);
  UploadSummary sum;
  sum.n_lfs_sent = up.upload_lfs(files);
  sum.commit_oid = up.commit(files, commit_message);
  sum.repo_url = s.endpoint + "/" + repo_id;
  for (const LocalFile& f : files) {
    if (f.ignored) {
      std::fprintf(stderr, "[hub] %s: left out (the repo's .gitignore matches it)\n", f.path.c_str());
      continue;
    }
    sum.n_files += 1, sum.n_lfs += f.lfs, sum.bytes += f.size;
  }
  return sum;
}

}  // namespace lmtune
