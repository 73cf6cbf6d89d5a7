// The helpers of fuzz_target.h (linked into every fuzz target and into fuzz_replay).
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>

#include "fuzz_target.h"

namespace lmtune::fuzz {

namespace fs = std::filesystem;

std::vector<std::string> split(const uint8_t* data, size_t size, size_t n) {
  std::vector<std::string> parts;
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  while (parts.size() + 1 < n) {
    size_t at = rest.find('\0');
    if (at == std::string_view::npos) break;
    parts.emplace_back(rest.substr(0, at));
    rest.remove_prefix(at + 1);
  }
  parts.emplace_back(rest);
  parts.resize(n);
  return parts;
}

namespace {
std::string& root_dir() {
  static std::string root;
  return root;
}
void remove_root() {
  std::error_code ec;
  if (!root_dir().empty()) fs::remove_all(root_dir(), ec);
}
}  // namespace

std::string scratch_dir(const std::string& name) {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* tmp = std::getenv("TMPDIR");
    root_dir() = std::string(tmp && *tmp ? tmp : "/tmp") + "/lmtune-fuzz-" + std::to_string(getpid());
    std::atexit(remove_root);
  });
  std::string dir = root_dir() + "/" + name;
  fs::create_directories(dir);
  return dir;
}

std::string write_file(const std::string& path, std::string_view bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  f.close();
  if (!f) std::abort();  // the scratch folder itself failed: not the code under test
  return path;
}

std::string source_dir() {
  // The build's checkout, unless LMTUNE_SOURCE_DIR names another copy (binaries run elsewhere).
  const char* env = std::getenv("LMTUNE_SOURCE_DIR");
  return env && *env ? env : LMTUNE_SOURCE_DIR;
}
std::string default_model_dir() { return source_dir() + "/models/default"; }

}  // namespace lmtune::fuzz
