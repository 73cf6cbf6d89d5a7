// The crash-safety test hook of write_points.h: a counter per phase, read from two variables once.
#include "io/write_points.h"

#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace lmtune {

namespace {

struct Points {
  bool trace = false;
  std::string kill_phase;  // "" when no kill is asked for
  long long kill_at = 0;
  bool training = false;
  long long count = 0;  // points so far in the current phase

  Points() {
    const char* t = std::getenv("LMTUNE_TEST_WRITE_TRACE");
    trace = t && *t && std::strcmp(t, "0") != 0;
    const char* k = std::getenv("LMTUNE_TEST_KILL_AT");
    if (!k || !*k) return;
    const char* colon = std::strchr(k, ':');
    char* end = nullptr;
    if (colon) kill_at = std::strtoll(colon + 1, &end, 10);
    kill_phase = colon ? std::string(k, colon) : "";
    LMT_CHECK(colon && end && *end == '\0' && kill_at >= 1 && (kill_phase == "setup" || kill_phase == "train"),
              "LMTUNE_TEST_KILL_AT is '", k, "'; expected setup:<n> or train:<n> with n >= 1");
  }
};

Points& points() {
  static Points p;
  return p;
}

}  // namespace

bool write_points_enabled() {
  const Points& p = points();
  return p.trace || !p.kill_phase.empty();
}

void write_point(const char* what, const std::string& path) {
  Points& p = points();
  if (!p.trace && p.kill_phase.empty()) return;
  ++p.count;
  const char* phase = p.training ? "train" : "setup";
  if (p.trace) std::fprintf(stderr, "[write-point] %s %lld %s %s\n", phase, p.count, what, path.c_str());
  if (p.kill_phase == phase && p.count == p.kill_at) ::raise(SIGKILL);
}

void write_points_begin_training() {
  Points& p = points();
  p.training = true;
  p.count = 0;
}

}  // namespace lmtune
