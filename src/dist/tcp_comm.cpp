// The data-parallel group over TCP sockets (dist/comm.h): a star around rank 0. A worker sends its
// buffer with a header (which collective, its sequence number, element type and count); rank 0 checks
// that every rank is at the same collective, adds the buffers in rank order and sends the sum back.
// Deterministic, and simple enough for gradients of adapters; every wait is bounded by the timeout.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "core/error.h"
#include "dist/comm.h"

namespace lmtune::dist {

namespace {

using Clock = std::chrono::steady_clock;

constexpr uint32_t kMagic = 0x444d4c31;  // "1LMD": a connection of this protocol, version 1

// The header of every message.
struct Header {
  uint32_t magic = kMagic;
  uint32_t kind = 0;   // 1 hello, 2 sum of f32, 3 sum of f64
  uint64_t seq = 0;    // the collective's number (hello: the sender's rank)
  uint64_t count = 0;  // elements (hello: the world size)
};

long env_long(const char* name, long fallback, long lo, long hi) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  errno = 0;
  long x = std::strtol(v, &end, 10);
  LMT_CHECK(errno == 0 && end && *end == '\0' && x >= lo && x <= hi, "[dist] ", name, "=", v,
            " is not a whole number from ", lo, " to ", hi);
  return x;
}

class Socket {
 public:
  explicit Socket(int fd = -1) : fd_(fd) {}
  Socket(Socket&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Socket& operator=(Socket&& o) noexcept {
    std::swap(fd_, o.fd_);
    return *this;
  }
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  int fd() const { return fd_; }

 private:
  int fd_;
};

class TcpComm final : public Comm {
 public:
  TcpComm(const DistEnv& env) : Comm(env.rank, env.world), timeout_(env.timeout_seconds) {
    if (env.rank == 0)
      listen_and_accept(env);
    else
      connect_to_root(env);
  }

  void all_reduce_sum(float* data, size_t n) override { reduce(data, n, 2); }
  void all_reduce_sum(double* data, size_t n) override { reduce(data, n, 3); }

 private:
  double timeout_;
  uint64_t seq_ = 0;
  std::vector<Socket> peers_;  // rank 0: peers_[r - 1] is rank r; others: peers_[0] is rank 0

  // Waits until fd is readable (or writable), failing after the timeout with what was awaited.
  void wait(int fd, short events, const std::string& what) const {
    pollfd p{fd, events, 0};
    const int ms = int(std::min(timeout_ * 1000.0, 2e9));
    for (;;) {
      int r = ::poll(&p, 1, ms);
      if (r > 0) return;
      if (r < 0 && errno == EINTR) continue;
      LMT_CHECK(r != 0, "[dist] rank ", rank(), " waited ", timeout_, " s for ", what,
                " (LMTUNE_DIST_TIMEOUT sets the limit; is every rank still running?)");
      fail("[dist] poll: ", std::strerror(errno));
    }
  }

  [[noreturn]] void closed(const std::string& peer) const {
    fail("[dist] rank ", rank(), ": ", peer, " closed its connection: it stopped; its own output says why");
  }

  void send_all(int fd, const void* buf, size_t n, const std::string& peer) const {
    const char* p = static_cast<const char*>(buf);
    while (n > 0) {
      wait(fd, POLLOUT, peer + " to take data");
      ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
      if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (k < 0 && (errno == EPIPE || errno == ECONNRESET)) closed(peer);
      LMT_CHECK(k > 0, "[dist] rank ", rank(), ": sending to ", peer, " failed: ", std::strerror(errno));
      p += k, n -= size_t(k);
    }
  }

  // One recv of up to n bytes once data comes within ms: the bytes read, 0 when the peer closed, -1
  // on an error (errno says which), kTimedOut. Interrupted calls are retried.
  static constexpr ssize_t kTimedOut = -2;
  static ssize_t recv_within(int fd, void* p, size_t n, int ms) {
    for (;;) {
      pollfd q{fd, POLLIN, 0};
      int r = ::poll(&q, 1, ms);
      if (r < 0 && errno == EINTR) continue;
      if (r == 0) return kTimedOut;
      if (r < 0) return -1;
      ssize_t k = ::recv(fd, p, n, 0);
      if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      return k;
    }
  }

  void recv_all(int fd, void* buf, size_t n, const std::string& peer) const {
    char* p = static_cast<char*>(buf);
    const int ms = int(std::min(timeout_ * 1000.0, 2e9));
    while (n > 0) {
      ssize_t k = recv_within(fd, p, n, ms);
      LMT_CHECK(k != kTimedOut, "[dist] rank ", rank(), " waited ", timeout_, " s for ", peer,
                " (LMTUNE_DIST_TIMEOUT sets the limit; is every rank still running?)");
      if (k == 0 || (k < 0 && errno == ECONNRESET)) closed(peer);
      LMT_CHECK(k > 0, "[dist] rank ", rank(), ": receiving from ", peer, " failed: ", std::strerror(errno));
      p += k, n -= size_t(k);
    }
  }

  static std::string rank_name(int r) { return "rank " + std::to_string(r); }

  // A connecting rank's hello, within 5 s; false when it does not come whole.
  static bool read_hello(int fd, Header& h) {
    constexpr int kHelloMs = 5000;
    char* p = reinterpret_cast<char*>(&h);
    for (size_t n = sizeof h; n > 0;) {
      ssize_t k = recv_within(fd, p, n, kHelloMs);
      if (k <= 0) return false;  // closed, failed or silent: not an lmtune rank
      p += k, n -= size_t(k);
    }
    return true;
  }

  void listen_and_accept(const DistEnv& env) {
    Socket s(::socket(AF_INET, SOCK_STREAM, 0));
    LMT_CHECK(s.fd() >= 0, "[dist] socket: ", std::strerror(errno));
    int one = 1;
    ::setsockopt(s.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = htons(uint16_t(env.master_port));
    LMT_CHECK(::bind(s.fd(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0, "[dist] rank 0 cannot listen on port ",
              env.master_port,
              " (MASTER_PORT; under torchrun the one after it; LMTUNE_DIST_PORT): ", std::strerror(errno));
    LMT_CHECK(::listen(s.fd(), env.world) == 0, "[dist] listen: ", std::strerror(errno));
    std::vector<Socket> by_rank(size_t(env.world));
    for (int got = 1; got < env.world;) {
      wait(s.fd(), POLLIN, str_cat(env.world - got, " more rank(s) to connect to port ", env.master_port));
      Socket c(::accept(s.fd(), nullptr, nullptr));
      if (c.fd() < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        fail("[dist] accept: ", std::strerror(errno));
      }
      ::setsockopt(c.fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      // Anything else that connects to the port (a scanner, a health check, a stale client) is
      // dropped: only a well-formed hello within a few seconds counts.
      Header h;
      if (!read_hello(c.fd(), h) || h.magic != kMagic || h.kind != 1) {
        std::fprintf(stderr, "[dist] rank 0: dropped a connection to port %d that is not an lmtune rank\n",
                     env.master_port);
        continue;
      }
      LMT_CHECK(h.count == uint64_t(env.world), "[dist] rank ", h.seq, " was started with WORLD_SIZE ", h.count,
                "; rank 0 has ", env.world);
      LMT_CHECK(h.seq >= 1 && h.seq < uint64_t(env.world) && by_rank[h.seq].fd() < 0, "[dist] rank 0: rank ", h.seq,
                h.seq >= 1 && h.seq < uint64_t(env.world) ? " connected twice (two processes with the same RANK?)"
                                                          : " is outside WORLD_SIZE");
      by_rank[h.seq] = std::move(c);
      ++got;
    }
    for (int r = 1; r < env.world; ++r) peers_.push_back(std::move(by_rank[size_t(r)]));
    Header ok;  // every rank is there: the group starts
    ok.kind = 1;
    for (int r = 1; r < env.world; ++r) send_all(peers_[size_t(r - 1)].fd(), &ok, sizeof ok, rank_name(r));
  }

  void connect_to_root(const DistEnv& env) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    const std::string port = std::to_string(env.master_port);
    int rc = ::getaddrinfo(env.master_addr.c_str(), port.c_str(), &hints, &res);
    LMT_CHECK(rc == 0 && res, "[dist] MASTER_ADDR=", env.master_addr, " does not resolve: ", gai_strerror(rc));
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_);
    Socket c;
    for (;;) {
      Socket t(::socket(res->ai_family, res->ai_socktype, res->ai_protocol));
      if (t.fd() >= 0 && ::connect(t.fd(), res->ai_addr, res->ai_addrlen) == 0) {
        c = std::move(t);
        break;
      }
      if (Clock::now() > deadline) {
        ::freeaddrinfo(res);
        fail("[dist] rank ", env.rank, " could not connect to rank 0 at ", env.master_addr, ":", env.master_port,
             " within ", timeout_, " s (MASTER_ADDR, MASTER_PORT; is rank 0 running?)");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));  // rank 0 may not listen yet
    }
    ::freeaddrinfo(res);
    int one = 1;
    ::setsockopt(c.fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    Header h;
    h.kind = 1, h.seq = uint64_t(env.rank), h.count = uint64_t(env.world);
    send_all(c.fd(), &h, sizeof h, "rank 0");
    Header ok;
    recv_all(c.fd(), &ok, sizeof ok, "rank 0 (waiting for every rank to connect)");
    LMT_CHECK(ok.magic == kMagic && ok.kind == 1, "[dist] rank ", env.rank, ": rank 0 answered with something else");
    peers_.push_back(std::move(c));
  }

  template <class T>
  void reduce(T* data, size_t n, uint32_t kind) {
    const uint64_t seq = ++seq_;
    Header mine;
    mine.kind = kind, mine.seq = seq, mine.count = n;
    if (rank() != 0) {
      const int fd = peers_[0].fd();
      send_all(fd, &mine, sizeof mine, "rank 0");
      send_all(fd, data, n * sizeof(T), "rank 0");
      Header back;
      recv_all(fd, &back, sizeof back, "rank 0 (the sum)");
      LMT_CHECK(back.magic == kMagic && back.kind == kind && back.seq == seq && back.count == n, "[dist] rank ", rank(),
                ": rank 0 answered collective ", back.seq, " while this rank is at ", seq);
      recv_all(fd, data, n * sizeof(T), "rank 0 (the sum)");
      return;
    }
    // Rank 0: the sum in rank order, each buffer as it arrives after the ones before it.
    std::vector<T> part(n);
    for (int r = 1; r < world(); ++r) {
      const int fd = peers_[size_t(r - 1)].fd();
      Header h;
      recv_all(fd, &h, sizeof h, rank_name(r));
      LMT_CHECK(h.magic == kMagic && h.kind == kind && h.seq == seq && h.count == n, "[dist] rank ", r,
                " is out of step with rank 0: it sent collective ", h.seq, " of ", h.count, " values (",
                h.kind == 2 ? "f32" : "f64", ") where rank 0 is at ", seq, " of ", n,
                " (were the ranks started with the same flags and data?)");
      recv_all(fd, part.data(), n * sizeof(T), rank_name(r));
      for (size_t i = 0; i < n; ++i) data[i] += part[i];
    }
    for (int r = 1; r < world(); ++r) {
      const int fd = peers_[size_t(r - 1)].fd();
      send_all(fd, &mine, sizeof mine, rank_name(r));
      send_all(fd, data, n * sizeof(T), rank_name(r));
    }
  }
};

}  // namespace

DistEnv dist_env_from_environment() {
  DistEnv e;
  e.world = int(env_long("WORLD_SIZE", 1, 1, 1 << 16));
  if (e.world == 1) return e;
  LMT_CHECK(std::getenv("RANK"), "[dist] WORLD_SIZE=", e.world, " needs RANK (0 to ", e.world - 1,
            "), as torchrun sets it");
  e.rank = int(env_long("RANK", 0, 0, e.world - 1));
  e.local_rank = int(env_long("LOCAL_RANK", e.rank, 0, 1 << 16));
  const char* addr = std::getenv("MASTER_ADDR");
  e.master_addr = addr && *addr ? addr : "127.0.0.1";
  LMT_CHECK(std::getenv("MASTER_PORT"), "[dist] WORLD_SIZE=", e.world,
            " needs MASTER_PORT (the port rank 0 listens on), as torchrun sets it");
  e.master_port = int(env_long("MASTER_PORT", 0, 1, 65535));
  // Under torchrun, its agent's store holds MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE=True): the group
  // meets on the next port. LMTUNE_DIST_PORT names another.
  const char* agent = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
  if (agent && std::string(agent) == "True") e.master_port = e.master_port % 65535 + 1;
  e.master_port = int(env_long("LMTUNE_DIST_PORT", e.master_port, 1, 65535));
  e.timeout_seconds = double(env_long("LMTUNE_DIST_TIMEOUT", 1800, 1, 7 * 24 * 3600));
  return e;
}

std::unique_ptr<Comm> connect_tcp(const DistEnv& env) {
  LMT_CHECK(env.world >= 2 && env.rank >= 0 && env.rank < env.world, "[dist] connect_tcp: rank ", env.rank,
            " of world ", env.world);
  return std::make_unique<TcpComm>(env);
}

}  // namespace lmtune::dist
