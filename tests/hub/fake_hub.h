// The fake Hugging Face Hub of the hub tests (cpp-httplib on 127.0.0.1, a free port): the download
// API (revision info, resolve/ with X-Linked-Etag redirects to a "CDN", gated and missing repos, a
// corrupt blob, a connection cut mid-file) and the upload API (repos/create, preupload, the LFS
// batch API with PUT and verify, ndjson commits), which stores what it receives so that uploaded
// repos can be downloaded back. Header-only, for tests/hub's test files.
#pragma once
#include <httplib.h>
#include <openssl/evp.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

namespace fake_hub {

namespace fs = std::filesystem;

inline std::string sha256(const std::string& s) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(s.data(), s.size(), md, &len, EVP_sha256(), nullptr);
  std::string out;
  const char* hex = "0123456789abcdef";
  for (unsigned i = 0; i < len; ++i) {
    out.push_back(hex[md[i] >> 4]);
    out.push_back(hex[md[i] & 15]);
  }
  return out;
}

inline std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

struct File {
  std::string content;
  bool lfs = false;
  std::string served = {};  // what the CDN sends for an LFS file (differs from content for a corrupt one)
};
struct Revision {
  std::string commit;
  std::map<std::string, File> files;
};
struct Repo {
  bool gated = false;
  std::map<std::string, Revision> revisions;  // by branch/tag name and by commit
};
struct Request {
  std::string method, path, range;
};

inline const std::string kMain = "1111111111111111111111111111111111111111";
inline const std::string kV1 = "2222222222222222222222222222222222222222";
inline const char* kConfig = R"({"model_type": "llama", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
  "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1})";

inline std::string random_bytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = char(rng() & 0xff);
  return s;
}

class FakeHub {
 public:
  FakeHub() {
    std::string weights = random_bytes(300000, 1);
    Revision main{kMain, {}};
    main.files["config.json"] = {kConfig};
    main.files["model.safetensors"] = {weights, true, weights};
    main.files["tokenizer.json"] = {R"({"model": {"type": "BPE"}})"};
    main.files["configs/generation.json"] = {R"({"eos_token_id": 2})"};
    main.files["README.md"] = {"# tiny"};
    main.files["modeling_tiny.py"] = {"print('remote code')"};
    Revision v1 = main;
    v1.commit = kV1;
    v1.files["config.json"] = {"{\"revision\": \"v1\", " + std::string(kConfig + 1)};
    add("org/tiny", false, {{"main", main}, {"v1", v1}});
    add("org/gated", true, {{"main", main}});
    Revision cut = main;
    cut.files["model.safetensors"] = {random_bytes(400000, 2), true, ""};
    cut.files["model.safetensors"].served = cut.files["model.safetensors"].content;
    add("org/cut", false, {{"main", cut}});
    Revision corrupt = main;
    std::string good = random_bytes(200000, 3), bad = good;
    bad[1234] ^= 0x5a;
    corrupt.files["model.safetensors"] = {good, true, bad};
    add("org/corrupt", false, {{"main", corrupt}});
    // Hostile servers: listings naming files outside the repo, and a CDN that sends more than announced.
    for (const auto& [repo, name] :
         std::vector<std::pair<std::string, std::string>>{{"org/dots", "../../etc/passwd.json"},
                                                          {"org/absolute", "/tmp/lmtune-absolute.json"},
                                                          {"org/inner-dots", "ok/../../../x.json"}}) {
      Revision evil = main;
      evil.files[name] = {"{}"};
      add(repo, false, {{"main", evil}});
    }
    Revision oversized = main;
    oversized.files["model.safetensors"].served = weights + random_bytes(1 << 20, 4);
    add("org/oversized", false, {{"main", oversized}});

    svr_.Get(R"(/api/models/([^/]+)/([^/]+)/revision/(.+))", [this](const httplib::Request& q, httplib::Response& r) {
      log(q);
      const Revision* rev = find(q, r, q.matches[1].str() + "/" + q.matches[2].str(), q.matches[3]);
      if (!rev) return;
      std::string siblings;
      for (const auto& [name, f] : rev->files) {
        if (!siblings.empty()) siblings += ',';
        siblings.append("{\"rfilename\":\"").append(name).append("\"}");
      }
      r.set_content("{\"id\":\"x\",\"sha\":\"" + rev->commit + "\",\"siblings\":[" + siblings + "]}",
                    "application/json");
    });
    svr_.Get(R"(/([^/]+)/([^/]+)/resolve/([^/]+)/(.+))", [this](const httplib::Request& q, httplib::Response& r) {
      log(q);
      const Revision* rev = find(q, r, q.matches[1].str() + "/" + q.matches[2].str(), q.matches[3]);
      if (!rev) return;
      auto it = rev->files.find(q.matches[4]);
      if (it == rev->files.end()) {
        r.status = 404;
        r.set_header("X-Error-Code", "EntryNotFound");
        return;
      }
      r.set_header("X-Repo-Commit", rev->commit);
      const File& f = it->second;
      if (f.lfs) {
        std::string h = sha256(f.content);
        cdn_[h] = f.served;
        r.set_header("X-Linked-Etag", "\"" + h + "\"");
        r.set_header("X-Linked-Size", std::to_string(f.content.size()));
        r.set_header("ETag", "\"pointer-etag\"");
        r.set_redirect("http://127.0.0.1:" + std::to_string(port_) + "/cdn/" + h, 302);
      } else {
        r.set_header("ETag", "\"" + sha256(f.content).substr(0, 40) + "\"");
        r.set_content(f.content, "application/octet-stream");
      }
    });
    svr_.Get(R"(/cdn/([0-9a-f]+))", [this](const httplib::Request& q, httplib::Response& r) {
      log(q);
      std::lock_guard<std::mutex> lock(mu_);
      auto it = cdn_.find(q.matches[1]);
      if (it == cdn_.end()) {
        r.status = 404;
        return;
      }
      if (cuts_left_ > 0 && q.method == "GET") {
        --cuts_left_;
        auto body = std::make_shared<std::string>(it->second);
        // Announce the whole size, send ~40%, then drop the connection.
        r.set_content_provider(body->size(), "application/octet-stream",
                               [body](size_t offset, size_t, httplib::DataSink& sink) {
                                 if (offset > 0) return false;
                                 sink.write(body->data(), body->size() * 2 / 5);
                                 return false;
                               });
        return;
      }
      r.set_content(it->second, "application/octet-stream");  // httplib answers a Range with 206
    });
    add_upload_routes();
    port_ = svr_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { svr_.listen_after_bind(); });
    while (!svr_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ~FakeHub() {
    svr_.stop();
    thread_.join();
  }

  int port() const { return port_; }
  void cut_next_downloads(int n) { cuts_left_ = n; }
  std::vector<Request> requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return log_;
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    log_.clear();
  }
  int count(const std::string& method, const std::string& path_part) {
    int n = 0;
    for (const Request& q : requests())
      if ((method.empty() || q.method == method) && q.path.find(path_part) != std::string::npos) ++n;
    return n;
  }
  const Repo& repo(const std::string& id) { return repos_.at(id); }
  bool has_repo(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    return repos_.count(id) > 0;
  }
  // preupload answers shouldIgnore for this path (as a repo's .gitignore would make the Hub do).
  void ignore_path(const std::string& path) {
    std::lock_guard<std::mutex> lock(mu_);
    ignored_.insert(path);
  }
  // The next commit is refused with HTTP 422 and this message (as the Hub refuses a bad commit).
  void refuse_next_commit(const std::string& message) {
    std::lock_guard<std::mutex> lock(mu_);
    refuse_commit_ = message;
  }
  std::vector<std::string> commit_messages() {
    std::lock_guard<std::mutex> lock(mu_);
    return commit_messages_;
  }

 private:
  void add(const std::string& id, bool gated, std::map<std::string, Revision> revs) {
    Repo r{gated, {}};
    for (auto& [name, rev] : revs) {
      r.revisions[rev.commit] = rev;
      r.revisions[name] = rev;
    }
    repos_[id] = r;
  }
  void log(const httplib::Request& q) {
    std::lock_guard<std::mutex> lock(mu_);
    log_.push_back({q.method, q.path, q.get_header_value("Range")});
  }
  const Revision* find(const httplib::Request& q, httplib::Response& r, const std::string& id, const std::string& rev) {
    auto it = repos_.find(id);
    if (it == repos_.end()) {
      r.status = q.has_header("Authorization") ? 404 : 401;  // the Hub hides private repos behind a 401
      r.set_header("X-Error-Code", "RepoNotFound");
      return nullptr;
    }
    if (it->second.gated && q.get_header_value("Authorization") != "Bearer secret") {
      r.status = 401;
      r.set_header("X-Error-Code", "GatedRepo");
      r.set_header("X-Error-Message", "Access to model " + id + " is restricted.");
      return nullptr;
    }
    auto rv = it->second.revisions.find(rev);
    if (rv == it->second.revisions.end()) {
      r.status = 404;
      r.set_header("X-Error-Code", "RevisionNotFound");
      return nullptr;
    }
    return &rv->second;
  }

  // The upload API as huggingface_hub's HfApi uses it: every call needs "Bearer secret"; *.safetensors
  // go through LFS (as a .gitattributes would say), everything else inline.
  void add_upload_routes() {
    using nlohmann::json;
    auto authorized = [](const httplib::Request& q, httplib::Response& r) {
      if (q.get_header_value("Authorization") == "Bearer secret") return true;
      r.status = 401;
      r.set_header("X-Error-Message", "Invalid credentials in Authorization header");
      return false;
    };
    auto bad = [](httplib::Response& r, int status, const std::string& why) {
      r.status = status;
      r.set_content(json({{"error", why}}).dump(), "application/json");
    };
    svr_.Post("/api/repos/create", [=, this](const httplib::Request& q, httplib::Response& r) {
      log(q);
      if (!authorized(q, r)) return;
      json j = json::parse(q.body, nullptr, false);
      if (!j.is_object() || !j.contains("name") || !j["name"].is_string()) return bad(r, 400, "no name");
      std::string id =
          (j.contains("organization") && j["organization"].is_string() ? j["organization"].get<std::string>() + "/"
                                                                       : std::string("user/")) +
          j["name"].get<std::string>();
      std::lock_guard<std::mutex> lock(mu_);
      if (repos_.count(id)) return bad(r, 409, "You already created this model repo");
      repos_[id] = Repo{};
      r.set_content(json({{"url", "http://127.0.0.1:" + std::to_string(port_) + "/" + id}}).dump(), "application/json");
    });
    // huggingface_hub checks a README.md's metadata before committing it (lmtune does not).
    svr_.Post("/api/validate-yaml", [=, this](const httplib::Request& q, httplib::Response& r) {
      log(q);
      r.set_content(R"({"warnings": []})", "application/json");
    });
    svr_.Post(R"(/api/models/([^/]+)/([^/]+)/preupload/main)",
              [=, this](const httplib::Request& q, httplib::Response& r) {
                log(q);
                if (!authorized(q, r)) return;
                if (!has_repo(q.matches[1].str() + "/" + q.matches[2].str()))
                  return bad(r, 404, "Repository not found");
                json j = json::parse(q.body, nullptr, false), out = json::array();
                if (!j.is_object() || !j.contains("files")) return bad(r, 400, "no files");
                for (const json& f : j["files"]) {
                  if (!f.contains("path") || !f.contains("size") || !f.contains("sample"))
                    return bad(r, 400, "bad file entry");
                  std::string path = f["path"];
                  bool lfs = path.size() > 12 && path.substr(path.size() - 12) == ".safetensors";
                  bool ignore = false;
                  {
                    std::lock_guard<std::mutex> lock(mu_);
                    ignore = ignored_.count(path) > 0;
                  }
                  out.push_back({{"path", path}, {"uploadMode", lfs ? "lfs" : "regular"}, {"shouldIgnore", ignore}});
                }
                r.set_content(json({{"files", out}}).dump(), "application/json");
              });
    svr_.Post(
        R"(/([^/]+)/([^/]+)\.git/info/lfs/objects/batch)", [=, this](const httplib::Request& q, httplib::Response& r) {
          log(q);
          if (!authorized(q, r)) return;
          if (q.get_header_value("Accept") != "application/vnd.git-lfs+json") return bad(r, 406, "Accept");
          json j = json::parse(q.body, nullptr, false), out = json::array();
          if (!j.is_object() || j.value("operation", "") != "upload" || j.value("hash_algo", "") != "sha256")
            return bad(r, 422, "not an upload batch");
          std::string base = "http://127.0.0.1:" + std::to_string(port_);
          std::lock_guard<std::mutex> lock(mu_);
          for (const json& o : j["objects"]) {
            std::string oid = o["oid"];
            json e = {{"oid", oid}, {"size", o["size"]}};
            auto it = lfs_.find(oid);
            if (it == lfs_.end() || it->second.size() != o["size"].get<size_t>())
              e["actions"] = {{"upload", {{"href", base + "/lfs-put/" + oid}, {"header", {{"X-Fake-Upload", "1"}}}}},
                              {"verify", {{"href", base + "/lfs-verify"}}}};
            out.push_back(e);
          }
          r.set_content(json({{"transfer", "basic"}, {"objects", out}}).dump(), "application/vnd.git-lfs+json");
        });
    svr_.Put(R"(/lfs-put/([0-9a-f]+))", [=, this](const httplib::Request& q, httplib::Response& r) {
      log(q);
      if (q.get_header_value("X-Fake-Upload") != "1") return bad(r, 403, "the batch's header is missing");
      if (sha256(q.body) != q.matches[1].str()) return bad(r, 400, "SHA-256 of the body differs from the oid");
      std::lock_guard<std::mutex> lock(mu_);
      lfs_[q.matches[1].str()] = q.body;
    });
    svr_.Post("/lfs-verify", [=, this](const httplib::Request& q, httplib::Response& r) {
      log(q);
      json j = json::parse(q.body, nullptr, false);
      std::lock_guard<std::mutex> lock(mu_);
      auto it = j.is_object() ? lfs_.find(j.value("oid", "")) : lfs_.end();
      if (it == lfs_.end() || it->second.size() != j.value("size", size_t(0))) return bad(r, 404, "not uploaded");
      r.set_content("{}", "application/json");
    });
    svr_.Post(R"(/api/models/([^/]+)/([^/]+)/commit/main)", [=, this](const httplib::Request& q, httplib::Response& r) {
      log(q);
      if (!authorized(q, r)) return;
      if (q.get_header_value("Content-Type") != "application/x-ndjson") return bad(r, 415, "want ndjson");
      const std::string id = q.matches[1].str() + "/" + q.matches[2].str();
      std::lock_guard<std::mutex> lock(mu_);
      auto repo = repos_.find(id);
      if (repo == repos_.end()) return bad(r, 404, "Repository not found");
      if (!refuse_commit_.empty()) {
        bad(r, 422, refuse_commit_);
        refuse_commit_.clear();
        return;
      }
      Revision rev = repo->second.revisions.count("main") ? repo->second.revisions["main"] : Revision{};
      std::string summary;
      size_t b = 0, n = 0;
      for (size_t e; (e = q.body.find('\n', b)) != std::string::npos; b = e + 1, ++n) {
        json line = json::parse(q.body.substr(b, e - b), nullptr, false);
        if (!line.is_object() || !line.contains("key") || !line.contains("value")) return bad(r, 400, "bad line");
        const json& v = line["value"];
        if (n == 0) {
          if (line["key"] != "header" || !v.contains("summary")) return bad(r, 400, "the first line is not the header");
          summary = v["summary"];
        } else if (line["key"] == "file") {
          if (v.value("encoding", "") != "base64") return bad(r, 400, "encoding");
          rev.files[v["path"]] = File{base64_decode(v["content"])};
        } else if (line["key"] == "lfsFile") {
          auto it = lfs_.find(v.value("oid", ""));
          if (v.value("algo", "") != "sha256" || it == lfs_.end() || it->second.size() != v["size"].get<size_t>())
            return bad(r, 422, "LFS object not uploaded: " + v.value("path", ""));
          rev.files[v["path"]] = File{it->second, true, it->second};
        } else {
          return bad(r, 400, "unknown key");
        }
      }
      if (b != q.body.size()) return bad(r, 400, "the body does not end with a newline");
      rev.commit = sha256(q.body).substr(0, 40);
      repo->second.revisions[rev.commit] = rev;
      repo->second.revisions["main"] = rev;
      commit_messages_.push_back(summary);
      r.set_content(
          json({{"commitOid", rev.commit},
                {"commitUrl", "http://127.0.0.1:" + std::to_string(port_) + "/" + id + "/commit/" + rev.commit}})
              .dump(),
          "application/json");
    });
  }

  static std::string base64_decode(const std::string& in) {
    std::string out;
    uint32_t acc = 0;
    int bits = 0;
    for (char c : in) {
      int v = c >= 'A' && c <= 'Z'   ? c - 'A'
              : c >= 'a' && c <= 'z' ? c - 'a' + 26
              : c >= '0' && c <= '9' ? c - '0' + 52
              : c == '+'             ? 62
              : c == '/'             ? 63
                                     : -1;
      if (v < 0) continue;  // '=' padding
      acc = (acc << 6) | uint32_t(v);
      bits += 6;
      if (bits >= 8) {
        bits -= 8;
        out.push_back(char((acc >> bits) & 0xff));
      }
    }
    return out;
  }

  httplib::Server svr_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::vector<Request> log_;
  std::map<std::string, Repo> repos_;
  std::map<std::string, std::string> cdn_;
  std::map<std::string, std::string> lfs_;  // uploaded LFS objects by sha256
  std::vector<std::string> commit_messages_;
  std::string refuse_commit_;
  std::set<std::string> ignored_;
  std::atomic<int> cuts_left_{0};
};

// Runs a shell command (environment inherited), returns its exit status and stdout.
inline int run(const std::string& cmd, std::string* out) {
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out->append(buf, n);
  int st = ::pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

}  // namespace fake_hub
