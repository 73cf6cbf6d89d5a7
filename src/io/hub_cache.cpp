// The Hub cache as `lmtune manage` sees it: model repos (models--org--name folders), their blobs,
// refs and snapshots, like huggingface_hub's scan_cache_dir; and removing one repo.
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "io/hub.h"

namespace fs = std::filesystem;

namespace lmtune {

namespace {

int64_t mtime_of(const fs::path& p) {
  struct stat st;
  return ::lstat(p.c_str(), &st) == 0 ? int64_t(st.st_mtime) : 0;
}

// "models--org--name" -> "org/name"
std::string repo_id_of(const std::string& folder) {
  std::string rest = folder.substr(std::string("models--").size()), out;
  size_t start = 0;
  for (;;) {
    size_t sep = rest.find("--", start);
    if (!out.empty()) out += '/';
    out += rest.substr(start, sep - start);
    if (sep == std::string::npos) break;
    start = sep + 2;
  }
  return out;
}

}  // namespace

std::vector<CachedRepo> scan_hub_cache(const std::string& cache_dir) {
  std::vector<CachedRepo> repos;
  std::error_code ec;
  if (!fs::is_directory(cache_dir, ec)) return repos;
  for (const fs::directory_entry& e : fs::directory_iterator(cache_dir, ec)) {
    std::string name = e.path().filename().string();
    if (!e.is_directory() || name.rfind("models--", 0) != 0) continue;
    CachedRepo r;
    r.repo_id = repo_id_of(name);
    r.path = e.path().string();
    if (fs::is_directory(e.path() / "blobs")) {
      for (const fs::directory_entry& b : fs::directory_iterator(e.path() / "blobs", ec)) {
        if (!b.is_regular_file()) continue;
        struct stat st;
        if (::stat(b.path().c_str(), &st) != 0) continue;
        r.size_on_disk += uint64_t(st.st_size);
        if (b.path().extension() != ".incomplete") ++r.n_files;
        r.last_modified = std::max(r.last_modified, int64_t(st.st_mtime));
      }
    }
    if (fs::is_directory(e.path() / "refs")) {
      for (const fs::directory_entry& f : fs::recursive_directory_iterator(e.path() / "refs", ec)) {
        if (!f.is_regular_file()) continue;
        r.refs.push_back(f.path().lexically_relative(e.path() / "refs").string());
        r.last_modified = std::max(r.last_modified, mtime_of(f.path()));
      }
    }
    if (fs::is_directory(e.path() / "snapshots")) {
      for (const fs::directory_entry& sn : fs::directory_iterator(e.path() / "snapshots", ec))
        if (sn.is_directory()) r.snapshots.push_back(sn.path().filename().string());
    }
    std::sort(r.refs.begin(), r.refs.end());
    std::sort(r.snapshots.begin(), r.snapshots.end());
    repos.push_back(std::move(r));
  }
  std::sort(repos.begin(), repos.end(), [](const CachedRepo& a, const CachedRepo& b) { return a.repo_id < b.repo_id; });
  return repos;
}

void delete_cached_repo(const std::string& cache_dir, const CachedRepo& repo) {
  std::error_code ec;
  fs::remove_all(repo.path, ec);
  if (ec) fail("[hub] cannot delete ", repo.path, ": ", ec.message());
  fs::remove_all(fs::path(cache_dir) / ".locks" / fs::path(repo.path).filename(), ec);  // best effort
}

}  // namespace lmtune
