// How fast can one kernel stream a decode product's weights, and does the order of the reads
// matter? Reads only (no arithmetic but a running sum), at the byte counts of Mistral-7B's 4-bit
// group-64 products, with the same warps, bytes in flight and instruction counts in two orders:
//   tile: as qgemv.cu / qgemv_async.cu read MLX's row-major layout: a warp owns a 16-row tile and
//         a 1/S slice of its columns, and each step reads CB bytes from each of the 16 rows (rows
//         row_bytes apart);
//   seq:  the same bytes a warp per step, but contiguous (a tile-major repack of the weights).
// Plus the cost of an empty kernel a launch in a CUDA graph (the fixed cost of a kernel boundary).
// Time per call from a CUDA graph of many calls cycling copies of the buffer so that L2 holds none.
//   bench_stream [--calls N]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define CK(x)                                                                          \
  do {                                                                                 \
    cudaError_t e_ = (x);                                                              \
    if (e_ != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

namespace {

constexpr int kWarps = 8;

// SEQ = false: tile order; true: contiguous. CB bytes of each of 16 rows a step (CB / 16 pieces
// of 16 bytes a row, 16 * CB / 16 / 32 a lane), U steps in flight.
template <bool SEQ, int CB, int U>
__global__ void __launch_bounds__(kWarps * 32)
    stream_kernel(const uint8_t* base, int64_t row_bytes, int S, int64_t tiles, uint32_t* sink) {
  constexpr int kPer = 16 * CB / 16 / 32;  // 16-byte pieces a lane a step
  static_assert(kPer >= 1, "chunk");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t w = int64_t(blockIdx.x) * kWarps + warp, tile = w / S;
  if (tile >= tiles) return;
  const int piece = int(w % S);
  const int64_t span = row_bytes / S;  // bytes of each row this warp reads
  const int64_t steps = span / CB;
  const uint8_t* tbase = base + tile * 16 * row_bytes;
  uint32_t acc = 0;
  for (int64_t s0 = 0; s0 < steps; s0 += U) {
    uint4 v[U][kPer];
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int k = 0; k < kPer; ++k) {
        const int pc = lane + 32 * k;  // piece of this step: row pc / (CB / 16), column pc % (CB / 16)
        const int64_t s = s0 + u < steps ? s0 + u : steps - 1;
        const uint8_t* src;
        if (SEQ) {
          src = tbase + piece * 16 * span + s * 16 * CB + pc * 16;
        } else {
          const int row = pc / (CB / 16), col = pc % (CB / 16);
          src = tbase + row * row_bytes + piece * span + s * CB + col * 16;
        }
        v[u][k] = __ldg(reinterpret_cast<const uint4*>(src));
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int k = 0; k < kPer; ++k) acc += v[u][k].x ^ v[u][k].y ^ v[u][k].z ^ v[u][k].w;
  }
  if (acc == 0x12345678u) sink[0] = acc;  // keeps the loads
}

__global__ void empty_kernel(uint32_t* sink) {
  if (threadIdx.x == 1023) sink[1] = 1;
}

struct Case {
  const char* name;
  int64_t rows, row_bytes;
};

template <typename F>
double time_graph(cudaStream_t st, F&& body, int calls) {
  for (int i = 0; i < 3; ++i) body(i);
  CK(cudaStreamSynchronize(st));
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
  for (int i = 0; i < calls; ++i) body(i);
  CK(cudaStreamEndCapture(st, &g));
  CK(cudaGraphInstantiate(&ge, g, 0));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  CK(cudaGraphLaunch(ge, st));
  std::vector<double> t;
  for (int r = 0; r < 7; ++r) {
    CK(cudaEventRecord(a, st));
    CK(cudaGraphLaunch(ge, st));
    CK(cudaEventRecord(b, st));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(double(ms) * 1e3 / calls);
  }
  CK(cudaGraphExecDestroy(ge));
  CK(cudaGraphDestroy(g));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int calls = 200;
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--calls") && i + 1 < argc) calls = std::atoi(argv[++i]);
  int sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  uint32_t* sink;
  CK(cudaMalloc(&sink, 64));
  // Mistral-7B 4-bit group 64: packed bytes of a row (K / 2) and rows; scales and biases left out.
  const Case cases[] = {{"k_proj", 1024, 2048}, {"q_proj", 4096, 2048},   {"gate", 14336, 2048},
                        {"down", 4096, 7168},   {"gate+up", 28672, 2048}, {"lm_head", 32768, 2048}};
  const int64_t pool = int64_t(1) << 30;  // copies cycled: at least 1 GiB in all
  uint8_t* buf;
  CK(cudaMalloc(&buf, pool + (int64_t(64) << 20)));
  CK(cudaMemset(buf, 1, pool + (int64_t(64) << 20)));
  std::printf("# bench_stream: %d multiprocessors; us a call (GB/s of the bytes read), graph of %d calls\n", sms,
              calls);
  {
    const double us = time_graph(
        st, [&](int) { empty_kernel<<<sms * 4, 256, 0, st>>>(sink); }, calls);
    std::printf("empty kernel, %d blocks: %.2f us a launch\n", sms * 4, us);
  }
  std::printf(
      "| product | MB | S | tile CB64 U4 | seq CB64 U4 | tile CB128 U2 | seq CB128 U2 | tile CB64 U8 | seq CB64 U8 "
      "|\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (const Case& c : cases) {
    const int64_t bytes = c.rows * c.row_bytes, tiles = c.rows / 16;
    const int copies = int(std::max<int64_t>(2, pool / bytes));
    int S = 1;
    while (S < kWarps && tiles * S < int64_t(sms) * 24 && c.row_bytes / (2 * S) >= 512) S *= 2;
    const unsigned grid = unsigned((tiles * S + kWarps - 1) / kWarps);
    std::printf("| %s | %.1f | %d |", c.name, bytes / 1e6, S);
    auto run = [&](auto kernel) {
      const double us = time_graph(
          st,
          [&](int i) { kernel<<<grid, kWarps * 32, 0, st>>>(buf + (i % copies) * bytes, c.row_bytes, S, tiles, sink); },
          calls);
      std::printf(" %.2f (%.0f) |", us, bytes / us / 1e3);
    };
    run(stream_kernel<false, 64, 4>);
    run(stream_kernel<true, 64, 4>);
    run(stream_kernel<false, 128, 2>);
    run(stream_kernel<true, 128, 2>);
    run(stream_kernel<false, 64, 8>);
    run(stream_kernel<true, 64, 8>);
    std::printf("\n");
    CK(cudaGetLastError());
  }
  CK(cudaDeviceSynchronize());
  return 0;
}
