// `lmtune lora --gpus N`: the launcher of a data-parallel run on one node (issue 14). It starts N
// copies of this very command line (this binary, the same arguments) with torchrun's variables set
// (WORLD_SIZE N, RANK and LOCAL_RANK i, MASTER_ADDR 127.0.0.1, a free MASTER_PORT), waits for them,
// and, when one fails, stops the others and returns its exit status. The copies see WORLD_SIZE and
// run as ranks (cli_commands.h: run_lora); rank 0 prints, the others only report errors.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cli_commands.h"
#include "core/error.h"

namespace lmtune::cli {

namespace {

std::vector<pid_t> g_children;

void forward_signal(int sig) {
  for (pid_t p : g_children)
    if (p > 0) ::kill(p, sig);
}

// A port nothing listens on now (the kernel's choice for port 0); the ranks take it a moment later.
int free_port() {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  LMT_CHECK(s >= 0, "[launch] socket: ", std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  const bool ok = ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  ::close(s);
  LMT_CHECK(ok, "[launch] no free port: ", std::strerror(errno));
  return ntohs(a.sin_port);
}

}  // namespace

int launch_local_ranks(int n, int argc, char** argv) {
  LMT_CHECK(n >= 2 && n <= 1024, "[launch] --gpus ", n, " is not a number of processes from 2 to 1024");
  const std::string port = std::to_string(free_port());
  std::fflush(stdout);
  std::fflush(stderr);
  for (int r = 0; r < n; ++r) {
    pid_t pid = ::fork();
    LMT_CHECK(pid >= 0, "[launch] fork: ", std::strerror(errno));
    if (pid == 0) {
      ::setenv("WORLD_SIZE", std::to_string(n).c_str(), 1);
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(n).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", port.c_str(), 1);
      std::vector<char*> args{const_cast<char*>("lmtune")};  // then "lora" and its arguments
      args.insert(args.end(), argv, argv + argc);
      args.push_back(nullptr);
      ::execv("/proc/self/exe", args.data());
      std::fprintf(stderr, "lmtune lora: error: [launch] cannot start rank %d: %s\n", r, std::strerror(errno));
      ::_exit(127);
    }
    g_children.push_back(pid);
  }
  struct sigaction sa {};
  sa.sa_handler = forward_signal;
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGHUP, &sa, nullptr);
  ::signal(SIGINT, SIG_IGN);  // a terminal's Ctrl-C reaches the ranks themselves (same process group)
  int result = 0, left = n;
  while (left > 0) {
    int status = 0;
    pid_t p = ::waitpid(-1, &status, 0);
    if (p < 0) {
      if (errno == EINTR) continue;
      break;
    }
    int rank = -1;
    for (int r = 0; r < n; ++r)
      if (g_children[size_t(r)] == p) rank = r, g_children[size_t(r)] = -1;
    if (rank < 0) continue;
    --left;
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    if (code != 0 && result == 0) {
      result = code;
      std::fprintf(stderr, "lmtune lora: error: [launch] rank %d of %d stopped (exit %d); stopping the others\n", rank,
                   n, code);
      forward_signal(SIGTERM);
    }
  }
  return result;
}

}  // namespace lmtune::cli
