// fuzz_replay TARGET PATH...: runs a fuzz target (tests/fuzz/fuzz_*.cpp, linked in) once on each
// file, or on each file of each folder, as libFuzzer replays a corpus; a finding aborts (with the
// sanitizers' report in LMTUNE_SANITIZE builds). ctest's fuzz_replay_* replay the seed corpora and
// the regressions of every target in every build.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>

#include "fuzz_target.h"

namespace lmtune::fuzz {

static std::map<std::string, TargetFn>& registry() {
  static std::map<std::string, TargetFn> r;
  return r;
}

int register_target(const char* name, TargetFn fn) {
  registry()[name] = fn;
  return 0;
}

}  // namespace lmtune::fuzz

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  auto& reg = lmtune::fuzz::registry();
  if (argc < 3 || !reg.count(argv[1])) {
    std::fprintf(stderr, "usage: fuzz_replay TARGET FILE_OR_FOLDER...\ntargets:");
    for (const auto& [name, fn] : reg) std::fprintf(stderr, " %s", name.c_str());
    std::fprintf(stderr, "\n");
    return 2;
  }
  lmtune::fuzz::TargetFn fn = reg[argv[1]];
  std::vector<fs::path> files;
  for (int i = 2; i < argc; ++i) {
    fs::path p = argv[i];
    if (fs::is_directory(p)) {
      for (const auto& e : fs::recursive_directory_iterator(p))
        if (e.is_regular_file()) files.push_back(e.path());
    } else if (fs::is_regular_file(p)) {
      files.push_back(p);
    } else {
      std::fprintf(stderr, "fuzz_replay: %s: no such file or folder\n", p.c_str());
      return 2;
    }
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) {
    std::fprintf(stderr, "fuzz_replay: no input files under the given paths\n");
    return 2;
  }
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::fprintf(stderr, "fuzz_replay %s: %s (%zu bytes)\n", argv[1], f.c_str(), bytes.size());
    fn(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  }
  std::printf("fuzz_replay %s: %zu inputs, no finding\n", argv[1], files.size());
  return 0;
}
