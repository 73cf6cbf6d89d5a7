// See upload_option.h.
#include "upload_option.h"

#include <cstdio>

#include "core/error.h"
#include "io/hub_upload.h"
#include "options.h"

namespace lmtune::cli {

void check_upload_repo(const std::optional<std::string>& repo) {
  if (!repo) return;
  try {
    check_upload_ready(*repo, HubSettings::from_env(), "--upload-repo");
  } catch (const Error& e) {
    throw UsageError(e.what());
  }
}

void upload_output(const std::string& folder, const std::optional<std::string>& repo, const std::string& message) {
  if (!repo) return;
  const HubSettings s = HubSettings::from_env();
  std::printf("[INFO] Uploading %s to %s/%s\n", folder.c_str(), s.endpoint.c_str(), repo->c_str());
  std::fflush(stdout);
  UploadSummary sum;
  try {
    sum = upload_folder(folder, *repo, message, s);
  } catch (const Error& e) {
    fail(e.what(), "\nThe model is kept in ", folder, " (upload it later with `huggingface-cli upload ", *repo, " ",
         folder, "`)");
  }
  std::printf("[INFO] Uploaded %lld files (%lld through LFS, %lld sent), commit %s\n", (long long)sum.n_files,
              (long long)sum.n_lfs, (long long)sum.n_lfs_sent, sum.commit_oid.c_str());
  std::printf("Upload successful, go to %s for details.\n", sum.repo_url.c_str());
  std::fflush(stdout);
}

}  // namespace lmtune::cli
