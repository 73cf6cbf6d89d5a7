// Tokenizer encode throughput, one thread: each tokenizer folder encodes the benchmark text line by
// line (each line keeps its '\n'; no special tokens), as bench_tokenizer_peer.py does with HF
// `tokenizers`. Prints "name MB/s tokens" per tokenizer: the median of --runs passes after one warm-up.
// Usage: bench_tokenizer --text FILE [--runs N] NAME=DIR [NAME=DIR ...]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  std::string text_path;
  int runs = 5;
  std::vector<std::pair<std::string, std::string>> folders;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--text") && i + 1 < argc) {
      text_path = argv[++i];
    } else if (!std::strcmp(argv[i], "--runs") && i + 1 < argc) {
      runs = std::max(1, std::atoi(argv[++i]));
    } else if (const char* eq = std::strchr(argv[i], '='); eq && argv[i][0] != '-') {
      folders.emplace_back(std::string(argv[i], eq - argv[i]), std::string(eq + 1));
    } else {
      std::fprintf(stderr, "usage: bench_tokenizer --text FILE [--runs N] NAME=DIR [NAME=DIR ...]\n");
      return 2;
    }
  }
  if (text_path.empty() || folders.empty()) {
    std::fprintf(stderr, "usage: bench_tokenizer --text FILE [--runs N] NAME=DIR [NAME=DIR ...]\n");
    return 2;
  }
  std::ifstream f(text_path, std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "bench_tokenizer: cannot open %s\n", text_path.c_str());
    return 1;
  }
  std::ostringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  std::vector<std::string_view> lines;
  for (size_t pos = 0; pos < text.size();) {
    size_t nl = text.find('\n', pos);
    size_t end = nl == std::string::npos ? text.size() : nl + 1;
    lines.emplace_back(text.data() + pos, end - pos);
    pos = end;
  }
  try {
    for (const auto& [name, dir] : folders) {
      lmtune::Tokenizer tok = lmtune::Tokenizer::load(dir);
      size_t n_tokens = 0;
      auto pass = [&] {
        size_t n = 0;
        auto t0 = std::chrono::steady_clock::now();
        for (std::string_view line : lines) n += tok.encode(line, /*add_special_tokens=*/false).size();
        std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
        n_tokens = n;
        return dt.count();
      };
      pass();  // warm-up (fills the word cache, as HF's warm-up does)
      std::vector<double> secs;
      for (int r = 0; r < runs; ++r) secs.push_back(pass());
      std::sort(secs.begin(), secs.end());
      double med = secs[secs.size() / 2];
      std::printf("%s %.2f %zu\n", name.c_str(), text.size() / med / 1e6, n_tokens);
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
    return 1;
  }
  return 0;
}
