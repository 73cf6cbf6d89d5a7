// `lmtune manage --scan | --delete --pattern P`: the Hugging Face Hub cache as mlx_lm.manage and
// `huggingface-cli scan-cache` show it; deleting asks for confirmation on stdin.
#include <fnmatch.h>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <string>

#include "cli_commands.h"
#include "core/error.h"
#include "io/hub.h"
#include "options.h"

namespace lmtune::cli {

namespace {

std::string human(uint64_t n) {
  const char* units[] = {"B", "K", "M", "G", "T"};
  double v = double(n);
  int u = 0;
  while (v >= 1000.0 && u < 4) {
    v /= 1000.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f%s" : "%.1f%s", v, units[u]);
  return buf;
}

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string out;
  for (const std::string& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

std::string age(int64_t t) {
  if (t <= 0) return "-";
  int64_t d = int64_t(std::time(nullptr)) - t;
  if (d < 60) return "a few seconds ago";
  if (d < 3600) return str_cat(d / 60, " minutes ago");
  if (d < 86400) return str_cat(d / 3600, " hours ago");
  return str_cat(d / 86400, " days ago");
}

// A pattern with glob characters matches the whole repo id; otherwise a substring (mlx_lm.manage).
bool matches(const std::string& pattern, const std::string& repo_id) {
  if (pattern.find_first_of("*?[") != std::string::npos) return ::fnmatch(pattern.c_str(), repo_id.c_str(), 0) == 0;
  return repo_id.find(pattern) != std::string::npos;
}

void print_table(const std::vector<CachedRepo>& repos) {
  size_t w = 7;
  for (const CachedRepo& r : repos) w = std::max(w, r.repo_id.size());
  std::printf("%-*s %12s %8s %-18s %-40s %s\n", int(w), "REPO ID", "SIZE ON DISK", "NB FILES", "LAST_MODIFIED",
              "REVISIONS", "LOCAL PATH");
  std::printf("%s\n", std::string(w + 12 + 8 + 18 + 40 + 15, '-').c_str());
  uint64_t total = 0;
  for (const CachedRepo& r : repos) {
    std::vector<std::string> revs = r.refs;
    for (const std::string& sn : r.snapshots) revs.push_back(sn.substr(0, 8));
    std::printf("%-*s %12s %8lld %-18s %-40s %s\n", int(w), r.repo_id.c_str(), human(r.size_on_disk).c_str(),
                (long long)r.n_files, age(r.last_modified).c_str(), join(revs, ", ").c_str(), r.path.c_str());
    total += r.size_on_disk;
  }
  std::printf("\nFound %zu model repo(s) using %s on disk.\n", repos.size(), human(total).c_str());
}

struct ManageOptions {
  bool scan = false, del = false;
  std::string pattern;
};

int manage(const ManageOptions& o) {
  const bool scan = o.scan;
  const std::string& pattern = o.pattern;
  std::string cache = HubSettings::from_env().cache_dir;
  std::vector<CachedRepo> repos;
  for (CachedRepo& r : scan_hub_cache(cache))
    if (pattern.empty() || matches(pattern, r.repo_id)) repos.push_back(std::move(r));
  if (scan) {
    if (repos.empty()) {
      std::printf("No models found in %s%s.\n", cache.c_str(),
                  pattern.empty() ? "" : str_cat(" matching '", pattern, "'").c_str());
      return 0;
    }
    print_table(repos);
    return 0;
  }
  if (repos.empty()) {
    std::printf("No models matching '%s' in %s.\n", pattern.c_str(), cache.c_str());
    return 0;
  }
  print_table(repos);
  std::printf("\nDelete the %zu repo(s) above? [y/N] ", repos.size());
  std::fflush(stdout);
  std::string answer;
  std::getline(std::cin, answer);
  if (answer != "y" && answer != "Y" && answer != "yes" && answer != "YES" && answer != "Yes") {
    std::printf("\nNothing deleted.\n");
    return 0;
  }
  std::printf("\n");
  for (const CachedRepo& r : repos) {
    delete_cached_repo(cache, r);
    std::printf("Deleted %s (%s)\n", r.repo_id.c_str(), human(r.size_on_disk).c_str());
  }
  return 0;
}

}  // namespace

int run_manage(int argc, char** argv) {
  ManageOptions o;
  Options t("manage", "lmtune manage (--scan | --delete) [--pattern P]",
            "Manage models in the Hugging Face Hub cache ($HF_HUB_CACHE, else $HF_HOME/hub, else "
            "~/.cache/huggingface/hub), the cache huggingface_hub and mlx-lm share.");
  t.add("--scan", &o.scan, "", "list cached models: repo id, size on disk, files, revisions");
  t.add("--delete", &o.del, "", "delete the models matching --pattern, after confirmation on stdin");
  t.add("--pattern", &o.pattern, "P", "repo ids containing P (or matching P when it has * ? [)")
      .default_text("every model; mlx_lm.manage's is mlx");
  return run_with_options(t, argc, argv, [&] {
    if (o.scan == o.del) throw UsageError("give one of --scan or --delete");
    if (o.del && o.pattern.empty()) throw UsageError("--delete needs --pattern P");
    return manage(o);
  });
}

}  // namespace lmtune::cli
