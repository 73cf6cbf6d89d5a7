// CPU microbenchmarks of the op front ends (f32, the CPU's compute type): matmul / linear,
// attention forward and forward+backward, rms_norm. Names match bench/bench_cpu_peer.py so
// bench/run_cpu.sh can join the two; counters give FLOP/s (matrix work) or B/s (rms_norm).
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

#include "ops/ops.h"

namespace {

using lmtune::Device;
using lmtune::DType;
using lmtune::Tensor;
namespace ops = lmtune::ops;

// Each benchmark runs for at least this long per repetition; three repetitions, median reported.
constexpr double kMinTime = 0.2;
constexpr int kRepetitions = 3;

void set_counters(benchmark::State& state, double flops, double bytes) {
  if (flops > 0) state.counters["flops"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  if (bytes > 0) state.counters["bytes"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
}

// c (M, N) = a (M, K) @ b (K, N).
void bm_matmul(benchmark::State& state, int64_t M, int64_t K, int64_t N) {
  Tensor a = ops::randn({M, K}, 1, 1.f);  // f32 (M, K)
  Tensor b = ops::randn({K, N}, 2, 1.f);  // f32 (K, N)
  for (auto _ : state) benchmark::DoNotOptimize(ops::matmul(a, b).raw());
  set_counters(state, 2.0 * M * K * N, 4.0 * (M * K + K * N + M * N));
}

// y (M, N) = x (M, K) @ w (N, K)^T: the layout of every projection (and, with M = 1, of decode).
void bm_linear(benchmark::State& state, int64_t M, int64_t K, int64_t N) {
  Tensor x = ops::randn({M, K}, 3, 1.f);    // f32 (M, K)
  Tensor w = ops::randn({N, K}, 4, 0.02f);  // f32 (N, K)
  for (auto _ : state) benchmark::DoNotOptimize(ops::linear(x, w).raw());
  set_counters(state, 2.0 * M * K * N, 4.0 * (M * K + K * N + M * N));
}

// LoRA's rank-r products, as ag::lora_add runs them: c (M, N) = op(a) @
// op(b) into an existing c, a stored (K, M) when ta, b stored (N, K) when tb.
void bm_gemm_into(benchmark::State& state, int64_t M, int64_t K, int64_t N, bool ta, bool tb) {
  Tensor a = ops::randn(ta ? lmtune::Shape{K, M} : lmtune::Shape{M, K}, 11, 1.f);
  Tensor b = ops::randn(tb ? lmtune::Shape{N, K} : lmtune::Shape{K, N}, 12, 1.f);
  Tensor c = ops::randn({M, N}, 13, 1.f);
  for (auto _ : state) ops::gemm_into(c, a, b, ta, tb, 1.f, 0.f);
  set_counters(state, 2.0 * M * K * N, 4.0 * (M * K + K * N + M * N));
}

// Causal attention, B = 1: forward FLOPs 4 B H T T D / 2; backward counted as 2.5x forward.
double attention_flops(int64_t B, int64_t T, int64_t H, int64_t D) { return 4.0 * B * H * T * T * D / 2; }

void bm_attention(benchmark::State& state, int64_t T, int64_t H, int64_t Hkv, int64_t D, bool backward) {
  const int64_t B = 1;
  Tensor q = ops::randn({B, T, H, D}, 5, 1.f);    // f32 (B, T, n_head, head_dim)
  Tensor k = ops::randn({B, T, Hkv, D}, 6, 1.f);  // f32 (B, T, n_kv_head, head_dim)
  Tensor v = ops::randn({B, T, Hkv, D}, 7, 1.f);  // f32 (B, T, n_kv_head, head_dim)
  Tensor dout = ops::randn({B, T, H, D}, 8, 1.f);
  float scale = 1.f / std::sqrt(float(D));
  for (auto _ : state) {
    ops::AttentionOut f = ops::attention(q, k, v, scale, true, 0, 0);
    if (backward) {
      ops::AttentionGrads g = ops::attention_backward(q, k, v, f, dout, scale, true, 0, 0);
      benchmark::DoNotOptimize(g.dq.raw());
    }
    benchmark::DoNotOptimize(f.out.raw());
  }
  double fwd = attention_flops(B, T, H, D);
  set_counters(state, backward ? 3.5 * fwd : fwd, 0);
}

// out (rows, dim) = x * rsqrt(mean(x^2) + eps) * w. Minimum bytes: read x and w, write out and rstd.
void bm_rms_norm(benchmark::State& state, int64_t rows, int64_t dim) {
  Tensor x = ops::randn({rows, dim}, 9, 1.f);  // f32 (rows, dim)
  Tensor w = ops::randn({dim}, 10, 1.f);       // f32 (dim)
  for (auto _ : state) benchmark::DoNotOptimize(ops::rms_norm(x, w, 1e-5f).out.raw());
  set_counters(state, 0, 4.0 * (2 * rows * dim + dim + rows));
}

std::string mkn(int64_t m, int64_t k, int64_t n) {
  return std::to_string(m) + "x" + std::to_string(k) + "x" + std::to_string(n);
}

void configure(benchmark::internal::Benchmark* b) {
  b->MinTime(kMinTime)
      ->Repetitions(kRepetitions)
      ->ReportAggregatesOnly(true)
      ->UseRealTime()  // OpenBLAS runs on several threads: CPU time of this one would mislead
      ->Unit(benchmark::kMillisecond);
}

void register_all() {
  struct Mm {
    int64_t m, k, n;
  };
  for (Mm s : {Mm{512, 512, 512}, Mm{256, 1024, 2816}})
    configure(benchmark::RegisterBenchmark(("matmul/" + mkn(s.m, s.k, s.n)).c_str(), bm_matmul, s.m, s.k, s.n));
  for (Mm s : {Mm{256, 1024, 2816}, Mm{1, 4096, 4096}})
    configure(benchmark::RegisterBenchmark(("linear/" + mkn(s.m, s.k, s.n)).c_str(), bm_linear, s.m, s.k, s.n));
  struct Thin {
    int64_t m, k, n;
    bool ta, tb;
    const char* what;
  };
  for (Thin s : {Thin{960, 512, 8, false, false, "x A"}, Thin{960, 1536, 8, false, true, "dY B^T"},
                 Thin{8, 960, 1536, true, false, "(x A)^T dY"}, Thin{512, 960, 8, true, false, "x^T (dY B^T)"}})
    configure(benchmark::RegisterBenchmark(("lora_product/" + mkn(s.m, s.k, s.n) + " " + s.what).c_str(), bm_gemm_into,
                                           s.m, s.k, s.n, s.ta, s.tb));
  struct Att {
    int64_t T, H, Hkv, D;
  };
  for (Att s : {Att{256, 8, 2, 64}, Att{512, 8, 2, 64}, Att{512, 8, 4, 64}}) {
    char shape[64];
    std::snprintf(shape, sizeof shape, "T%lld H%lld KV%lld D%lld", (long long)s.T, (long long)s.H, (long long)s.Hkv,
                  (long long)s.D);
    for (bool backward : {false, true}) {
      std::string name = std::string(backward ? "attention_fwd_bwd/" : "attention_fwd/") + shape;
      configure(benchmark::RegisterBenchmark(name.c_str(), bm_attention, s.T, s.H, s.Hkv, s.D, backward));
    }
  }
  for (int64_t dim : {1024, 4096})
    configure(benchmark::RegisterBenchmark(("rms_norm/512x" + std::to_string(dim)).c_str(), bm_rms_norm, 512, dim));
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
