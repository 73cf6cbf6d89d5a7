// The fuzz targets of issue 13: each tests/fuzz/fuzz_<name>.cpp defines one target with
// LMTUNE_FUZZ_TARGET(name) { ... }. Built with LMTUNE_FUZZ=ON (clang), each file is a libFuzzer
// binary (fuzz_<name>); in every build, all of them are also linked into fuzz_replay, which runs a
// target on given files (the seed corpora and the regressions: ctest -R fuzz_replay).
//
// What counts as a finding: anything but a clean lmtune::Error (or the kind a target names as its
// clear error, e.g. the server's ApiError): a sanitizer report, a crash, a hang (-timeout), an
// allocation past -rss_limit_mb / -malloc_limit_mb, and any other exception escaping the target
// (std::bad_alloc, nlohmann's type_error: errors that name neither file nor field).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lmtune::fuzz {

using TargetFn = int (*)(const uint8_t* data, size_t size);
// Targets linked into fuzz_replay register themselves by name (fuzz_replay.cpp).
int register_target(const char* name, TargetFn fn);

// Splits the input at NUL bytes into at most n parts (the last one keeps any further NULs);
// missing parts are empty.
std::vector<std::string> split(const uint8_t* data, size_t size, size_t n);

// A folder of this process (/tmp/lmtune-fuzz-<pid>/<name>), made on first use and removed at exit.
std::string scratch_dir(const std::string& name);
// Writes bytes to path (truncating); returns path.
std::string write_file(const std::string& path, std::string_view bytes);

// The repository root (LMTUNE_SOURCE_DIR in the environment, else the build's source folder) and
// models/default in it.
std::string source_dir();
std::string default_model_dir();

}  // namespace lmtune::fuzz

#ifdef LMTUNE_FUZZ_LIBFUZZER
#define LMTUNE_FUZZ_REGISTER(name) \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) { return fuzz_target_##name(data, size); }
#else
#define LMTUNE_FUZZ_REGISTER(name) \
  [[maybe_unused]] static const int fuzz_registered_##name = lmtune::fuzz::register_target(#name, fuzz_target_##name);
#endif

#define LMTUNE_FUZZ_TARGET(name)                                   \
  static int fuzz_target_##name(const uint8_t* data, size_t size); \
  LMTUNE_FUZZ_REGISTER(name)                                       \
  static int fuzz_target_##name(const uint8_t* data, size_t size)
