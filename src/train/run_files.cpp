// metrics.jsonl appends that never leave a torn line, and the clean-up of a killed save's temp files.
#include "train/run_files.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/write_points.h"

namespace lmtune::train {

namespace fs = std::filesystem;

MetricsLog::MetricsLog(std::string path, std::string_view initial) : path_(std::move(path)) {
  write_file_atomic(path_, initial);
  fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd_ < 0) fail("[train] cannot open ", path_, " for appending: ", std::strerror(errno));
  size_ = static_cast<long long>(initial.size());
}

MetricsLog::~MetricsLog() {
  if (fd_ >= 0) ::close(fd_);
}

void MetricsLog::append(std::string line) {
  line += '\n';
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    ssize_t w = ::write(fd_, p, left);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      int e = w < 0 ? errno : ENOSPC;
      // Cut back to the last whole line so readers (resume, loss.svg) never see half a record.
      int rc = ::ftruncate(fd_, off_t(size_));
      (void)rc;  // the write error is the one to report
      std::string hint = e == ENOSPC || e == EFBIG || e == EDQUOT
                             ? " (the disk is full, or a quota or file size limit such as `ulimit -f` was reached)"
                             : "";
      fail("[train] writing ", path_, " failed: ", std::strerror(e), hint, "; the file keeps its complete lines");
    }
    p += w;
    left -= size_t(w);
  }
  size_ += static_cast<long long>(line.size());
  write_point("appended", path_);
}

namespace {

// "<name>.tmp.<digits>" -> the pid; 0 when the name is not a temp file's.
pid_t temp_pid(const std::string& name) {
  size_t at = name.rfind(".tmp.");
  if (at == std::string::npos || at == 0 || at + 5 == name.size()) return 0;
  long long pid = 0;
  for (size_t i = at + 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || pid > 1'000'000'000) return 0;
    pid = pid * 10 + (name[i] - '0');
  }
  return pid_t(pid);
}

bool process_alive(pid_t pid) {
  if (pid == ::getpid()) return false;  // a file of an earlier process that had our pid: this run writes none yet
  return ::kill(pid, 0) == 0 || errno == EPERM;
}

}  // namespace

std::vector<std::string> remove_stale_temp_files(const std::string& adapter_dir) {
  std::vector<std::string> removed;
  std::error_code ec;
  for (const fs::path& d : {fs::path(adapter_dir), fs::path(adapter_dir) / "checkpoints"}) {
    if (!fs::is_directory(d, ec)) continue;
    for (const fs::directory_entry& e : fs::directory_iterator(d, ec)) {
      const std::string name = e.path().filename().string();
      const bool dead_temp =
          e.is_regular_file(ec) && !e.is_symlink(ec) && temp_pid(name) > 0 && !process_alive(temp_pid(name));
      const bool dead_checkpoint =
          d != fs::path(adapter_dir) && name.rfind(".tmp-", 0) == 0 && e.is_directory(ec) && !e.is_symlink(ec);
      if (!dead_temp && !dead_checkpoint) continue;
      std::error_code rm;
      fs::remove_all(e.path(), rm);
      if (!rm) removed.push_back(e.path().string());
    }
  }
  return removed;
}

}  // namespace lmtune::train
