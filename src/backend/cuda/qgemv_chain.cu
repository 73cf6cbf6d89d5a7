// Decoding's attention output through o, then the MLP, as one launch (LMTUNE_CUDA_DECODE_CHAIN=1; Backend::
// quantized_decode_chain): o's product with the residual add, gate and up of the rms-normed sum with swiglu, and down
// with the residual add. Each phase is variant 9's kernel body (qgemv_simt.cuh's stage_x and run_tasks, SPREAD as the
// default) over the tasks of the launch it replaces, so each value is the one those three launches write, bit for bit,
// where they take variant 9 (rows up to 12288): a row's sum depends only on the lanes' order, never on which warp takes
// the row. Between phases a grid barrier stands
// where two kernel boundaries stood (the drain of one kernel, the launch and staging of the next); before it waits
// there, every warp loads the first round of its next task (weights are constant), so that DRAM latency runs under the
// wait. The barrier needs every block resident at once: the grid is what the card holds (occupancy), and the launch is
// plain, the only work on its stream. Rows up to kChainMaxK (Mistral's down, 14336, included: variant 9's own launch
// stops at 12288 and gives longer rows to variant 7, whose sums run in another order, so there the chain's values are
// variant 9's arithmetic on the same function, not the separate launches' bits).
//   With the next layer's q, k and v (QuantizedDecodeChain::next_wq), a fourth phase: the products of the layer's
// output, normed, with the rope and KV-cache append epilogue, as quantized_gemv_normed's launch writes them (variant 9,
// two rows a task), so that the next layer starts at its attention.
#include <atomic>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/qgemv_simt.cuh"
#include "core/runtime_config.h"

namespace lmtune {
namespace {
std::atomic<int64_t> chain_launches{0}, chain_qkv_launches{0};
}  // namespace
int64_t cuda_decode_chain_launches() { return chain_launches.load(); }
int64_t cuda_decode_chain_qkv_launches() { return chain_qkv_launches.load(); }
}  // namespace lmtune

namespace lmtune::qgemv {

namespace {

constexpr int kChainWarps = 8, kChainB = 2;
constexpr int64_t kChainMaxK = 16384;
constexpr int kChainMaxSmem = int(simt::x_bytes(kChainMaxK, true));

template <typename T>
struct ChainParams {
  QgemvParams<T> o, gu, down;  // o: x the attention output, with residual; gu: swiglu with norm_w; down: residual
  QgemvParams<T> qkv;          // the next layer's q, k, v of down's output: norm_w and the rope epilogue
  int64_t o_tasks, gu_tasks, down_tasks, qkv_tasks;  // qkv: the fourth phase's (decode_chain_kernel's QKV)
  unsigned* bar;  // bar[0]: blocks arrived at the current barrier; bar[1]: barriers passed (CudaBackend's scratch)
};

// Every block of the grid arrives before any leaves; the writes before it are visible to every block after it (the
// fence pattern of cooperative groups' grid sync). The last block to arrive resets the count and opens the barrier by
// advancing the generation, so the scratch is back at zero arrivals when the launch ends (a recorded graph replays it).
// A barrier that never opens (a block not resident: a bug) ends the launch with a trap after a few seconds rather than
// hanging the card.
__device__ __forceinline__ void grid_barrier(unsigned* bar) {
  __syncthreads();
  if (threadIdx.x == 0) {
    volatile unsigned* gen = bar + 1;
    const unsigned g = *gen;
    __threadfence();
    if (atomicAdd(bar, 1u) == gridDim.x - 1) {
      atomicExch(bar, 0u);
      __threadfence();
      atomicAdd(bar + 1, 1u);
    } else {
      for (int64_t spins = 0; *gen == g; ++spins) {
        if (spins > (int64_t(1) << 24)) __trap();
        __nanosleep(32);
      }
    }
    __threadfence();
  }
  __syncthreads();
}

// A warp's first round of its first task of p, where it has one.
template <typename T, int GS, int R, bool SWIGLU>
__device__ __forceinline__ void preload(const QgemvParams<T>& p, int64_t tasks, int64_t first, simt::Rows<T, R>& rs,
                                        simt::Round<R, kChainB>& rd) {
  if (first >= tasks) return;
  rs = simt::rows_of<T, R, SWIGLU>(p, first, p.K / 8, p.K / GS);
  simt::load_round<T, GS, R, kChainB>(rs, threadIdx.x % 32, p.K / 32, rd);
}

// One phase: x staged (read from L2: earlier phases wrote it), then the warp's tasks.
template <typename T, int GS, int R, bool SWIGLU>
__device__ __forceinline__ void phase(const QgemvParams<T>& p, int64_t tasks, int64_t first, int64_t stride,
                                      float4* smem, simt::Rows<T, R>& rs, simt::Round<R, kChainB>& rd) {
  float* sx = reinterpret_cast<float*>(smem + p.K / 4);
  simt::stage_x<T, true, true>(p.x, p.K, smem, sx, p.norm_w, p.norm_eps);
  simt::run_tasks<T, GS, R, kChainB, SWIGLU, true, true>(p, tasks, first, stride, smem, sx, first < tasks, rs, rd);
}

template <typename T, int GS, bool QKV>
__global__ void __launch_bounds__(kChainWarps * 32, 3) decode_chain_kernel(ChainParams<T> c) {
  extern __shared__ float4 smem_chain[];
  const int64_t first = int64_t(blockIdx.x) * kChainWarps + threadIdx.x / 32, stride = int64_t(gridDim.x) * kChainWarps;
  simt::Rows<T, 1> rs1;
  simt::Round<1, kChainB> rd1;
  simt::Rows<T, 2> rs2;
  simt::Round<2, kChainB> rd2;
  preload<T, GS, 1, false>(c.o, c.o_tasks, first, rs1, rd1);
  pdl_enter();
  phase<T, GS, 1, false>(c.o, c.o_tasks, first, stride, smem_chain, rs1, rd1);
  preload<T, GS, 2, true>(c.gu, c.gu_tasks, first, rs2, rd2);
  grid_barrier(c.bar);
  phase<T, GS, 2, true>(c.gu, c.gu_tasks, first, stride, smem_chain, rs2, rd2);
  preload<T, GS, 1, false>(c.down, c.down_tasks, first, rs1, rd1);
  grid_barrier(c.bar);
  phase<T, GS, 1, false>(c.down, c.down_tasks, first, stride, smem_chain, rs1, rd1);
  if constexpr (!QKV) return;
  preload<T, GS, 2, false>(c.qkv, c.qkv_tasks, first, rs2, rd2);
  grid_barrier(c.bar);
  phase<T, GS, 2, false>(c.qkv, c.qkv_tasks, first, stride, smem_chain, rs2, rd2);
}

template <typename T, int GS>
void launch_chain(const Backend::QuantizedDecodeChain& a, unsigned* bar) {
  ChainParams<T> c{};
  c.o = single_params<T>(a.a, a.wq[0], a.scales[0], a.biases[0], a.x1, 1, a.n_embd, a.n_attn);
  c.o.residual = static_cast<const T*>(a.x);
  c.o_tasks = simt::number_tasks(c.o, 1);
  c.gu = single_params<T>(a.x1, a.wq[1], a.scales[1], a.biases[1], a.act, 1, a.n_ff, a.n_embd);
  c.gu.wqs[0] = a.wq[1], c.gu.wqs[1] = a.wq[2];
  c.gu.scaless[0] = static_cast<const T*>(a.scales[1]), c.gu.scaless[1] = static_cast<const T*>(a.scales[2]);
  c.gu.biasess[0] = static_cast<const T*>(a.biases[1]), c.gu.biasess[1] = static_cast<const T*>(a.biases[2]);
  c.gu.swiglu = true;
  c.gu.norm_w = static_cast<const T*>(a.norm_w);
  c.gu.norm_eps = a.eps;
  c.gu_tasks = a.n_ff;
  c.down = single_params<T>(a.act, a.wq[3], a.scales[3], a.biases[3], a.out, 1, a.n_embd, a.n_ff);
  c.down.residual = static_cast<const T*>(a.x1);
  c.down_tasks = simt::number_tasks(c.down, 1);
  if (a.next_wq[0]) {  // as quantized_gemv_normed sets up its launch with RopeAppendArgs
    void* const ys[3] = {a.next_q, a.next_q, a.next_q};  // k's and v's: the cache planes (set_rope)
    c.qkv =
        single_params<T>(a.out, a.next_wq[0], a.next_scales[0], a.next_biases[0], a.next_q, 1, a.next_n[0], a.n_embd);
    set_matrices(c.qkv, a.next_wq, a.next_scales, a.next_biases, ys, a.next_n, 3);
    set_rope(c.qkv, a.next_rope);
    c.qkv.norm_w = static_cast<const T*>(a.next_norm_w);
    c.qkv.norm_eps = a.next_eps;
    c.qkv_tasks = simt::number_tasks(c.qkv, 2);
  }
  c.bar = bar;
  auto k = a.next_wq[0] ? decode_chain_kernel<T, GS, true> : decode_chain_kernel<T, GS, false>;
  static const bool sized = [] {  // more than 48 KB of shared memory a block needs the opt-in (both kernels)
    for (auto kk : {decode_chain_kernel<T, GS, false>, decode_chain_kernel<T, GS, true>})
      LMT_CUDA_CHECK(cudaFuncSetAttribute(kk, cudaFuncAttributeMaxDynamicSharedMemorySize, kChainMaxSmem));
    return true;
  }();
  (void)sized;
  const size_t smem = simt::x_bytes(std::max(a.n_attn, std::max(a.n_embd, a.n_ff)), true);
  const int blocks =
      cuda_impl().sm_count() * simt::blocks_per_sm(reinterpret_cast<const void*>(k), kChainWarps * 32, smem);
  launch("quantized_decode_chain", k, dim3(unsigned(blocks)), kChainWarps * 32, smem, c);
}

}  // namespace

bool takes_decode_chain(const Backend::QuantizedDecodeChain& a) {
  const int64_t widest = std::max(a.n_attn, std::max(a.n_embd, a.n_ff));
  if (a.bits != 4 || widest > kChainMaxK || (a.dt != DType::bf16 && a.dt != DType::f16) ||
      (a.group_size != 32 && a.group_size != 64 && a.group_size != 128))
    return false;
  for (int64_t K : {a.n_attn, a.n_embd, a.n_ff})
    if (K < 32 || K % 32 != 0 || K % a.group_size != 0) return false;
  if (!a.next_wq[0]) return true;
  return a.next_norm_w && a.next_rope.inv_freq && a.next_rope.k_cache && a.next_rope.v_cache &&
         rope_fits(a.next_rope, a.next_n);  // quantized_gemv_normed's conditions
}

bool launch_decode_chain(const Backend::QuantizedDecodeChain& a, unsigned* bar) {
  if (!takes_decode_chain(a)) return false;
  bool done = false;
  auto run = [&](auto tag) {
    using T = typename decltype(tag)::type;
    done = simt::by_group_size(a.group_size, [&](auto gs) {
      launch_chain<T, decltype(gs)::value>(a, bar);
      return true;
    });
  };
  if (a.dt == DType::bf16)
    run(TypeTag<bf16>{});
  else
    run(TypeTag<f16>{});
  if (done) chain_launches.fetch_add(1, std::memory_order_relaxed);
  if (done && a.next_wq[0]) chain_qkv_launches.fetch_add(1, std::memory_order_relaxed);
  return done;
}

}  // namespace lmtune::qgemv
