// Crash-safety test hook: each step of a file write (a temp file created, half written, complete,
// renamed; a metrics line appended; a checkpoint folder renamed) is a "write point" where a test
// can SIGKILL the process, reaching every on-disk state a real kill could leave. Off unless set:
//   LMTUNE_TEST_WRITE_TRACE=1     prints "[write-point] <phase> <n> <what> <path>" to stderr at each
//   LMTUNE_TEST_KILL_AT=<phase>:<n>  raises SIGKILL at the n-th point (1-based) of that phase
// The phase is "setup" until training begins (write_points_begin_training), then "train", so a
// run resumed from a checkpoint counts its training points as the uninterrupted run did after it.
#pragma once
#include <string>

namespace lmtune {

// True when either variable is set (read once); AtomicFile then splits its writes in two halves.
bool write_points_enabled();
void write_point(const char* what, const std::string& path);
void write_points_begin_training();

}  // namespace lmtune
