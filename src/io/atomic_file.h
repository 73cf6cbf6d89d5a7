// Atomic file replacement: bytes go to "<path>.tmp.<pid>" in the same folder, are fsync'd, then
// renamed over path, so readers see the old file or the complete new one, never a torn one.
// Any failure removes the temp file and throws lmtune::Error naming the path.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace lmtune {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);  // creates the temp file (truncating a stale one)
  ~AtomicFile();                          // removes the temp file unless commit() succeeded
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);  // buffered; throws on a short or failed write
  void commit();                           // flush, fsync, close, rename over path, fsync the folder

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_; }

 private:
  void flush_buffer();
  void write_all(const void* data, size_t n);
  void abandon() noexcept;  // close and unlink the temp file

  std::string path_;
  std::string temp_;
  int fd_ = -1;
  bool committed_ = false;
  std::string buf_;  // small writes are gathered here to keep the syscall count low
};

// Writes bytes to path atomically (see AtomicFile).
void write_file_atomic(const std::string& path, std::string_view bytes);

}  // namespace lmtune
