// Atomic file replacement via a same-folder temp file, fsync and rename(2).
#include "io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "io/write_points.h"

namespace lmtune {

namespace {

constexpr size_t kBufferBytes = size_t(1) << 20;

// A full disk or a file size limit gets a hint: the old file (if any) is still the one in place.
std::string errno_str(int e) {
  std::string s = std::strerror(e);
  if (e == ENOSPC || e == EFBIG || e == EDQUOT)
    s += " (the disk is full, or a quota or file size limit such as `ulimit -f` was reached; the previous file, if "
         "any, is left as it was)";
  return s;
}

}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  LMT_CHECK(!path_.empty(), "[atomic_file] empty path");
  temp_ = str_cat(path_, ".tmp.", ::getpid());
  // O_NOFOLLOW: never write through a symlink someone planted at the temp name.
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd_ < 0) fail("[atomic_file] ", path_, ": cannot create temp file ", temp_, ": ", errno_str(errno));
  buf_.reserve(kBufferBytes);
  write_point("created", path_);
}

AtomicFile::~AtomicFile() {
  if (!committed_) abandon();
}

void AtomicFile::abandon() noexcept {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (!temp_.empty()) ::unlink(temp_.c_str());
}

void AtomicFile::write_all(const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  // Under the crash-safety hook, a point halfway: a kill there leaves a half-written temp file.
  const char* half = write_points_enabled() && n >= 2 ? p + n / 2 : nullptr;
  while (n > 0) {
    if (p == half) write_point("partial", path_);
    // Linux writes at most ~2 GiB per call; loop over partial writes and EINTR.
    ssize_t w = ::write(fd_, p, half && p < half ? size_t(half - p) : n);
    if (w < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      abandon();
      fail("[atomic_file] ", path_, ": write to ", temp_, " failed: ", errno_str(e));
    }
    p += w;
    n -= size_t(w);
  }
}

void AtomicFile::flush_buffer() {
  if (buf_.empty()) return;
  write_all(buf_.data(), buf_.size());
  buf_.clear();
}

void AtomicFile::write(const void* data, size_t n) {
  LMT_CHECK(fd_ >= 0 && !committed_, "[atomic_file] ", path_, ": write after commit or failure");
  if (n == 0) return;
  if (buf_.size() + n <= kBufferBytes) {
    buf_.append(static_cast<const char*>(data), n);
    return;
  }
  flush_buffer();
  if (n < kBufferBytes) {
    buf_.append(static_cast<const char*>(data), n);
  } else {
    write_all(data, n);
  }
}

void AtomicFile::commit() {
  LMT_CHECK(fd_ >= 0 && !committed_, "[atomic_file] ", path_, ": commit after commit or failure");
  flush_buffer();
  if (::fsync(fd_) != 0) {
    int e = errno;
    abandon();
    fail("[atomic_file] ", path_, ": fsync of ", temp_, " failed: ", errno_str(e));
  }
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) {
    int e = errno;
    abandon();
    fail("[atomic_file] ", path_, ": close of ", temp_, " failed: ", errno_str(e));
  }
  write_point("written", path_);
  if (::rename(temp_.c_str(), path_.c_str()) != 0) {
    int e = errno;
    abandon();
    fail("[atomic_file] ", path_, ": rename from ", temp_, " failed: ", errno_str(e));
  }
  committed_ = true;
  write_point("renamed", path_);
  // Make the rename itself durable. Some filesystems refuse fsync on a directory; the file is
  // already complete and in place by then, so that is not an error.
  std::filesystem::path dir = std::filesystem::path(path_).parent_path();
  if (dir.empty()) dir = ".";
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  AtomicFile f(path);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

}  // namespace lmtune
