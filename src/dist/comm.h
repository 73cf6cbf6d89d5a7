// The process group of a data-parallel run (issue 14): WORLD_SIZE processes started the way torchrun
// starts them (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment), each with a
// share of every batch, whose gradients and loss sums are added up across the group.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace lmtune::dist {

// What the environment says about this process's place in the group. WORLD_SIZE unset: one process.
struct DistEnv {
  int world = 1;
  int rank = 0;
  int local_rank = 0;             // the device index on this node (LOCAL_RANK; RANK when unset)
  std::string master_addr;        // rank 0's address (MASTER_ADDR; 127.0.0.1 when unset)
  int master_port = 0;            // rank 0 listens there, the others connect: MASTER_PORT, the one after it
                                  // under torchrun (whose agent holds MASTER_PORT), or LMTUNE_DIST_PORT
  double timeout_seconds = 1800;  // LMTUNE_DIST_TIMEOUT: how long a rank waits for the others
};

// Reads and checks the variables; a malformed one is an error naming it and its value.
DistEnv dist_env_from_environment();

// A group's collectives. Every rank must call the same ones in the same order with the same sizes
// (a mismatch is detected and named); each blocks until all ranks have called it.
class Comm {
 public:
  virtual ~Comm() = default;
  int rank() const { return rank_; }
  int world() const { return world_; }
  // Elementwise sum over the ranks, in place; every rank gets the same values, added in rank order
  // (rank 0's + rank 1's + ...), so the result does not depend on timing.
  virtual void all_reduce_sum(float* data, size_t n) = 0;
  virtual void all_reduce_sum(double* data, size_t n) = 0;

 protected:
  Comm(int rank, int world) : rank_(rank), world_(world) {}

 private:
  int rank_, world_;
};

// The group over TCP: rank 0 listens on MASTER_PORT and the others connect (retrying until the
// timeout, since the ranks start in any order); sums are made by rank 0 and sent back. Host buffers.
std::unique_ptr<Comm> connect_tcp(const DistEnv& env);

}  // namespace lmtune::dist
