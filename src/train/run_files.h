// The files of a training run that are written as it goes: metrics.jsonl, appended one whole line
// at a time (a failed write is cut back, never left torn), and the temp files a killed save left.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace lmtune::train {

// metrics.jsonl of a run: replaced atomically by `initial` (a resumed checkpoint's lines, or
// nothing), then appended to. Each line is one write(2); when it fails (a full disk, `ulimit -f`)
// the file is truncated back to its last complete line and an Error names the file.
class MetricsLog {
 public:
  MetricsLog(std::string path, std::string_view initial);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  void append(std::string line);  // a '\n' is added
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  long long size_ = 0;  // bytes of complete lines
};

// Removes what an interrupted save left in an adapter folder: "<file>.tmp.<pid>" files whose
// process is gone (io/atomic_file.h names temp files so), in the folder and in checkpoints/, and
// checkpoints/.tmp-<iteration> folders (a checkpoint that was never renamed into place).
// Returns the paths removed.
std::vector<std::string> remove_stale_temp_files(const std::string& adapter_dir);

}  // namespace lmtune::train
