// Models from the Hugging Face Hub: `org/name[@revision]` is fetched through the Hub HTTP API into
// huggingface_hub's cache layout (models--org--name/{blobs,snapshots/<commit>,refs}), so Python tools
// and lmtune share one copy. Settings come from HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace lmtune {

// The environment as huggingface_hub reads it (constants.py), read afresh on each call.
struct HubSettings {
  std::string endpoint;   // HF_ENDPOINT, default https://huggingface.co (no trailing '/')
  std::string cache_dir;  // HF_HUB_CACHE | HUGGINGFACE_HUB_CACHE | $HF_HOME/hub (HF_HOME: ~/.cache/huggingface)
  std::string token;      // HF_TOKEN, else the file $HF_TOKEN_PATH | $HF_HOME/token; empty = anonymous
  bool offline = false;   // HF_HUB_OFFLINE in {1, ON, YES, TRUE}
  static HubSettings from_env();
};

// A local folder (or anything that looks like a path) is returned unchanged; `org/name[@revision]`
// (revision: branch, tag or commit; default main) returns the absolute snapshot folder
// <cache>/models--org--name/snapshots/<commit>, downloading the files a model needs first.
std::string resolve_model(const std::string& spec);
std::string resolve_model(const std::string& spec, const HubSettings& settings);

// True when spec names a Hub repo rather than a folder: not an existing path, no leading '/', '.',
// '~', and the huggingface_hub repo-id grammar ([org/]name of [A-Za-z0-9_.-], no '--' or '..').
bool is_hub_repo_id(const std::string& spec);

// is_hub_repo_id of spec without an `@revision` suffix (resolve_model's grammar).
bool is_hub_model_name(const std::string& spec);

// "org/name" -> "models--org--name" (huggingface_hub's repo_folder_name).
std::string hub_repo_folder_name(const std::string& repo_id);

// True when name matches the allow patterns of the files a model needs (mlx-lm's list, without *.py).
bool hub_file_needed(const std::string& name);

// One cached model repo, as `lmtune manage --scan` shows it.
struct CachedRepo {
  std::string repo_id;                 // org/name
  std::string path;                    // <cache>/models--org--name
  uint64_t size_on_disk = 0;           // bytes of the blobs (incomplete downloads included)
  int64_t n_files = 0;                 // blobs
  std::vector<std::string> refs;       // branch/tag names from refs/
  std::vector<std::string> snapshots;  // commit hashes present under snapshots/
  int64_t last_modified = 0;           // unix seconds, newest blob or ref
};

// Cached model repos under cache_dir, sorted by repo id; a missing cache is an empty list.
std::vector<CachedRepo> scan_hub_cache(const std::string& cache_dir);

// Removes a cached repo's folder and its lock folder.
void delete_cached_repo(const std::string& cache_dir, const CachedRepo& repo);

}  // namespace lmtune
