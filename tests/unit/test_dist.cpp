// The data-parallel group (dist/comm.h) with threads as ranks over loopback: sums in rank order on
// every rank, ranks out of step, a world-size mismatch, a rank that never comes, a rank that leaves,
// the environment's variables; and each rank's share of a batch (train/data_parallel.h).
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "autograd/checkpoint.h"
#include "autograd/functions.h"
#include "autograd/tape.h"
#include "core/error.h"
#include "dist/comm.h"
#include "train/data_parallel.h"
#include "train/grad_buckets.h"
#include "train/sharding.h"

using lmtune::dist::Comm;
using lmtune::dist::DistEnv;

namespace {

int free_port() {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(s);
  return ntohs(a.sin_port);
}

DistEnv env_of(int rank, int world, int port, double timeout = 20) {
  DistEnv e;
  e.rank = rank, e.local_rank = rank, e.world = world, e.master_addr = "127.0.0.1", e.master_port = port;
  e.timeout_seconds = timeout;
  return e;
}

// Runs body(rank, comm) for each rank in its own thread; returns each rank's error text ("" if none).
std::vector<std::string> run_ranks(const std::vector<DistEnv>& envs, const std::function<void(int, Comm&)>& body) {
  std::vector<std::string> errors(envs.size());
  std::vector<std::thread> threads;
  for (size_t r = 0; r < envs.size(); ++r)
    threads.emplace_back([&, r] {
      try {
        auto comm = lmtune::dist::connect_tcp(envs[r]);
        body(int(r), *comm);
      } catch (const lmtune::Error& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}

}  // namespace

TEST(Dist, SumsInRankOrderOnEveryRank) {
  const int port = free_port(), world = 3;
  std::vector<DistEnv> envs;
  for (int r = 0; r < world; ++r) envs.push_back(env_of(r, world, port));
  // f32: (1e8 + -1e8) + 1 is 1 in rank order; (1e8 + 1) + -1e8, arrival order's other sum, is 0.
  const float f[3] = {1e8f, -1e8f, 1.0f};
  std::vector<std::vector<float>> got(world);
  std::vector<std::vector<double>> got_d(world);
  auto errors = run_ranks(envs, [&](int r, Comm& c) {
    EXPECT_EQ(c.rank(), r);
    EXPECT_EQ(c.world(), world);
    std::vector<float> v = {f[r], float(r + 1), 0.5f * float(r)};
    c.all_reduce_sum(v.data(), v.size());
    got[size_t(r)] = v;
    std::vector<double> d = {double(r) * 1e10, 1.0};
    for (int k = 0; k < 3; ++k) c.all_reduce_sum(d.data(), d.size());  // three in a row stay in step
    got_d[size_t(r)] = d;
    std::vector<float> empty;
    c.all_reduce_sum(empty.data(), 0);
  });
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(errors[size_t(r)], "") << "rank " << r;
    ASSERT_EQ(got[size_t(r)].size(), 3u);
    EXPECT_EQ(got[size_t(r)][0], 1.0f);
    EXPECT_EQ(got[size_t(r)][1], 6.0f);
    EXPECT_EQ(got[size_t(r)][2], 1.5f);
    ASSERT_EQ(got_d[size_t(r)].size(), 2u);
    // Three sums of (r * 1e10, 1) in a row: 3e10, then 3 x 3e10, then 9 x 3e10; likewise 3, 9, 27.
    EXPECT_EQ(got_d[size_t(r)][0], 27e10);
    EXPECT_EQ(got_d[size_t(r)][1], 27.0);
  }
}

TEST(Dist, RanksOutOfStepAreNamed) {
  const int port = free_port();
  auto errors = run_ranks({env_of(0, 2, port), env_of(1, 2, port)}, [&](int r, Comm& c) {
    std::vector<float> v(r == 0 ? 3 : 2, 1.0f);
    c.all_reduce_sum(v.data(), v.size());
  });
  EXPECT_NE(errors[0].find("rank 1 is out of step with rank 0"), std::string::npos) << errors[0];
  EXPECT_NE(errors[0].find("of 2 values"), std::string::npos) << errors[0];
  // Rank 0 left with its error: rank 1 learns it from the closed connection, not by waiting.
  EXPECT_NE(errors[1].find("rank 0 (the sum) closed its connection"), std::string::npos) << errors[1];
}

TEST(Dist, AnotherWorldSizeIsRefused) {
  const int port = free_port();
  auto errors = run_ranks({env_of(0, 2, port, 5), env_of(1, 3, port, 5)}, [](int, Comm&) {});
  EXPECT_NE(errors[0].find("rank 1 was started with WORLD_SIZE 3; rank 0 has 2"), std::string::npos) << errors[0];
  EXPECT_NE(errors[1].find("closed its connection"), std::string::npos) << errors[1];
}

TEST(Dist, AMissingRankEndsInATimeout) {
  auto alone0 = run_ranks({env_of(0, 2, free_port(), 1)}, [](int, Comm&) {});
  EXPECT_NE(alone0[0].find("waited 1 s for 1 more rank(s) to connect"), std::string::npos) << alone0[0];
  const DistEnv e = env_of(1, 2, free_port(), 1);
  std::string err;
  try {
    lmtune::dist::connect_tcp(e);
  } catch (const lmtune::Error& x) {
    err = x.what();
  }
  EXPECT_NE(err.find("rank 1 could not connect to rank 0 at 127.0.0.1:"), std::string::npos) << err;
}

TEST(Dist, ARankThatLeavesStopsTheOthers) {
  const int port = free_port();
  auto errors = run_ranks({env_of(0, 2, port), env_of(1, 2, port)}, [](int r, Comm& c) {
    float x = 1.0f;
    c.all_reduce_sum(&x, 1);
    if (r == 0) c.all_reduce_sum(&x, 1);  // rank 1 returns instead: its connection closes
  });
  EXPECT_EQ(errors[1], "");
  EXPECT_NE(errors[0].find("rank 1 closed its connection"), std::string::npos) << errors[0];
}

TEST(Dist, StrangersOnThePortAreDropped) {
  const int port = free_port();
  std::vector<std::string> errors;
  std::thread group([&] {
    errors = run_ranks({env_of(0, 2, port), env_of(1, 2, port)}, [](int, Comm& c) {
      double x = 2;
      c.all_reduce_sum(&x, 1);
      EXPECT_EQ(x, 4.0);
    });
  });
  // Before and while the ranks meet: a client that sends garbage, and one that connects and leaves.
  for (const char* junk : {"GET / HTTP/1.0\r\n\r\n0123456789abcdef", ""}) {
    int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(uint16_t(port));
    for (int tries = 0; tries < 100 && ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0; ++tries)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (*junk) (void)::send(s, junk, std::strlen(junk), MSG_NOSIGNAL);
    ::close(s);
  }
  group.join();
  EXPECT_EQ(errors, (std::vector<std::string>{"", ""}));
}

TEST(Dist, EnvironmentVariables) {
  auto clear = [] {
    for (const char* v : {"WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LMTUNE_DIST_PORT",
                          "LMTUNE_DIST_TIMEOUT", "TORCHELASTIC_USE_AGENT_STORE"})
      ::unsetenv(v);
  };
  auto error_of = [] {
    try {
      lmtune::dist::dist_env_from_environment();
    } catch (const lmtune::Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  clear();
  EXPECT_EQ(lmtune::dist::dist_env_from_environment().world, 1);
  ::setenv("WORLD_SIZE", "4", 1), ::setenv("RANK", "3", 1), ::setenv("MASTER_PORT", "29500", 1);
  DistEnv e = lmtune::dist::dist_env_from_environment();
  EXPECT_EQ(e.world, 4);
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.local_rank, 3);  // RANK when LOCAL_RANK is unset
  EXPECT_EQ(e.master_addr, "127.0.0.1");
  EXPECT_EQ(e.master_port, 29500);
  ::setenv("TORCHELASTIC_USE_AGENT_STORE", "True", 1);  // torchrun's agent holds MASTER_PORT
  EXPECT_EQ(lmtune::dist::dist_env_from_environment().master_port, 29501);
  ::setenv("LMTUNE_DIST_PORT", "40000", 1);
  EXPECT_EQ(lmtune::dist::dist_env_from_environment().master_port, 40000);
  ::setenv("RANK", "4", 1);
  EXPECT_NE(error_of().find("RANK=4 is not a whole number from 0 to 3"), std::string::npos) << error_of();
  ::setenv("RANK", "1", 1), ::setenv("LMTUNE_DIST_TIMEOUT", "0", 1);
  EXPECT_NE(error_of().find("LMTUNE_DIST_TIMEOUT=0"), std::string::npos) << error_of();
  ::unsetenv("LMTUNE_DIST_TIMEOUT"), ::unsetenv("MASTER_PORT");
  EXPECT_NE(error_of().find("needs MASTER_PORT"), std::string::npos) << error_of();
  ::setenv("WORLD_SIZE", "0", 1);
  EXPECT_NE(error_of().find("WORLD_SIZE=0"), std::string::npos) << error_of();
  clear();
}

TEST(Dist, RankShareTakesEveryWorldthRow) {
  const int port = free_port();
  std::vector<std::vector<int>> shares(3);
  const std::vector<int> batch = {10, 11, 12, 13, 14, 15};
  std::vector<DistEnv> envs = {env_of(0, 3, port), env_of(1, 3, port), env_of(2, 3, port)};
  auto errors = run_ranks(envs, [&](int r, Comm& c) { shares[size_t(r)] = lmtune::train::rank_share(batch, &c); });
  EXPECT_EQ(shares[0], (std::vector<int>{10, 13}));
  EXPECT_EQ(shares[1], (std::vector<int>{11, 14}));
  EXPECT_EQ(shares[2], (std::vector<int>{12, 15}));
  EXPECT_EQ(lmtune::train::rank_share(batch, nullptr), batch);  // one process: the whole batch
}

// Which block a trained weight belongs to decides whether sharded training slices it (train/sharding.h).
TEST(Dist, BlockOfWeight) {
  using lmtune::train::block_of_weight;
  EXPECT_EQ(block_of_weight("model.layers.12.mlp.up_proj.weight"), 12);
  EXPECT_EQ(block_of_weight("model.layers.0.input_layernorm.weight"), 0);
  EXPECT_EQ(block_of_weight("layers.3.attention.wq.weight"), 3);
  EXPECT_EQ(block_of_weight("language_model.model.layers.7.self_attn.q_norm.weight"), 7);
  EXPECT_EQ(block_of_weight("model.layers.2.block_sparse_moe.experts.5.w1.weight"), 2);
  EXPECT_EQ(block_of_weight("model.embed_tokens.weight"), -1);
  EXPECT_EQ(block_of_weight("model.norm.weight"), -1);
  EXPECT_EQ(block_of_weight("lm_head.weight"), -1);
  EXPECT_EQ(block_of_weight("model.sublayers.4.weight"), -1);  // not "layers." after a dot
  EXPECT_EQ(block_of_weight("model.layers.x.weight"), -1);
}

// Data parallel's sums overlapped with backward (train/grad_buckets.h), 3 threads as ranks: with one
// bucket per weight, every bucket starts during backward, and the gradients end as the rank-order sums
// of the ranks' gradients. A weight used in two checkpointed blocks gets its gradient in two backward
// passes: its bucket starts after the first, so the sums are made again, and still come out right.
TEST(Dist, GradientBucketsOverlapBackward) {
  namespace ag = lmtune::ag;
  using lmtune::Tensor;
  ::setenv("LMTUNE_DIST_BUCKET_MB", "0.00001", 1);  // 2 floats: one bucket per weight
  const int world = 3, port = free_port();
  std::vector<DistEnv> envs;
  for (int r = 0; r < world; ++r) envs.push_back(env_of(r, world, port));
  // Rank r's input x_r = (r + 1) * [1, 2]: its loss sum((w1 * x_r) * w2) + sum(w3 * x_r).
  auto x_of = [](int r) { return Tensor::from_f32({float(r + 1), float(2 * (r + 1))}, {2}); };
  for (bool shared : {false, true}) {
    std::vector<std::vector<std::vector<float>>> got(world);
    std::vector<size_t> early(world), buckets(world);
    std::vector<int> resummed(world);
    auto errors = run_ranks(envs, [&](int r, Comm& comm) {
      Tensor w1 = ag::param(Tensor::from_f32({1.f, 2.f}, {2})), w2 = ag::param(Tensor::from_f32({3.f, 4.f}, {2}));
      Tensor w3 = ag::param(Tensor::from_f32({5.f, 6.f}, {2}));
      lmtune::train::GradientBuckets gb(comm, nullptr, {{"a", w1}, {"b", w2}, {"c", w3}});
      const Tensor x = x_of(r);
      gb.arm();
      Tensor loss;
      if (shared) {  // w2 in two checkpointed blocks
        auto blk = [&](const std::vector<Tensor>& in) { return ag::mul(in[0], w2); };
        Tensor h = ag::checkpoint(blk, {ag::checkpoint(blk, {ag::mul(w1, x)})});
        loss = ag::add(ag::sum(h), ag::sum(ag::mul(w3, x)));
      } else {
        loss = ag::add(ag::sum(ag::mul(ag::mul(w1, x), w2)), ag::sum(ag::mul(w3, x)));
      }
      ag::backward(loss);
      gb.finish();
      early[r] = gb.started_in_backward(), buckets[r] = gb.bucket_count(), resummed[r] = gb.resummed();
      for (const Tensor& w : {w1, w2, w3}) got[r].push_back(ag::grad(w).to_f32_vector());
    });
    for (int r = 0; r < world; ++r) ASSERT_EQ(errors[r], "") << "rank " << r;
    // x_r = k [1, 2] with k = r + 1, summed over the ranks: 6 [1, 2]; each gradient is linear in x.
    const float s = 6.f;
    std::vector<std::vector<float>> want =
        shared ? std::vector<std::vector<float>>{{s * 1 * 9, s * 2 * 16},
                                                 {s * 2 * 1 * 3, s * 2 * 2 * 2 * 4},
                                                 {s * 1, s * 2}}
               : std::vector<std::vector<float>>{{s * 1 * 3, s * 2 * 4}, {s * 1 * 1, s * 2 * 2}, {s * 1, s * 2}};
    for (int r = 0; r < world; ++r) {
      EXPECT_EQ(got[r], want) << "rank " << r << (shared ? " (shared weight)" : "");
      EXPECT_EQ(buckets[r], 3u);
      EXPECT_EQ(resummed[r], shared ? 1 : 0) << "rank " << r;
      if (!shared) {
        EXPECT_EQ(early[r], 3u) << "rank " << r << ": buckets started during backward";
      }
    }
  }
  ::unsetenv("LMTUNE_DIST_BUCKET_MB");
}
