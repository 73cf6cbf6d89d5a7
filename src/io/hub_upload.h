// Uploading a local folder to a Hugging Face Hub model repo through the Hub's HTTP API (as
// huggingface_hub's HfApi.create_repo + create_commit talk to it): create the repo (an existing
// one is fine), ask preupload which files go through LFS, push those to the LFS batch API's
// upload URLs (sha256 oids, basic transfer), then one commit on main (application/x-ndjson: a
// header line, small files inline in base64, LFS files by oid). HF_ENDPOINT and the token as
// HubSettings reads them.
#pragma once
#include <cstdint>
#include <string>

#include "io/hub.h"

namespace lmtune {

// Throws, naming the flag, when the upload cannot start: no token (HF_TOKEN, else the token file
// $HF_TOKEN_PATH | $HF_HOME/token), HF_HUB_OFFLINE set, or repo_id not an org/name id. Call it
// before any work.
void check_upload_ready(const std::string& repo_id, const HubSettings& s, const std::string& flag);

struct UploadSummary {
  std::string repo_url;  // <endpoint>/<repo_id>
  std::string commit_oid;
  int64_t n_files = 0, n_lfs = 0;
  int64_t n_lfs_sent = 0;  // LFS files whose bytes were sent (others were on the Hub already)
  uint64_t bytes = 0;      // of every file
};

// Uploads every regular file under folder (paths relative to it, '/'-separated, dot-files and
// dot-folders skipped) as one commit. Throws with the step, URL and the Hub's message on failure.
UploadSummary upload_folder(const std::string& folder, const std::string& repo_id, const std::string& commit_message,
                            const HubSettings& s);

}  // namespace lmtune
