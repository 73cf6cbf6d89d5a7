// --upload-repo of convert and fuse: checked before any work (a token, an org/name id), and after
// the folder is written, the folder uploaded to the Hub (io/hub_upload.h). A failed upload keeps
// the local folder and says so.
#pragma once
#include <optional>
#include <string>

namespace lmtune::cli {

// Throws UsageError naming --upload-repo when the upload could not start (no token, HF_HUB_OFFLINE,
// not an org/name id).
void check_upload_repo(const std::optional<std::string>& repo);

// Uploads folder to repo (when set) as one commit with message; prints the result. On failure
// throws, saying the folder is kept.
void upload_output(const std::string& folder, const std::optional<std::string>& repo, const std::string& message);

}  // namespace lmtune::cli
