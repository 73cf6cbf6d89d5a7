// Decoding's attention split over the keys (flash-decoding): a few query rows (T <= 4) in bf16/f16
// with head_dim 64 or 128 against a cache of any length. flash_forward.cu gives such a row one
// block per head that walks every key in turn (32 blocks for Mistral-7B, 5.8 us a layer at 80
// keys on the H200, growing with the context); here each (split, head, row) block takes its own
// stretch of the visible keys, and the last block of a row to finish merges the stretches.
//   A lane holds 8 dimensions (16 bytes) of q and of its running output: D / 8 lanes share a key,
// 32 / (D / 8) keys a warp at once, each lane group with its own online softmax (scores in the
// log2 domain). The block merges its groups through shared memory; with one split it writes the
// row, otherwise its partial (max, sum, unnormalised output) goes to scratch and a per-row counter
// (CudaBackend::decode_counters, zero between launches: the merging block resets it) elects the
// last block, which merges the splits in split order: deterministic, whatever order blocks end.
#include <algorithm>
#include "backend/cuda/cuda_common.cuh"

#include "core/runtime_config.h"

namespace lmtune {

namespace {

constexpr int kWarps = 4, kMaxSplits = 32, kMinKeysPerSplit = 32;
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

struct SplitParams {
  AttentionArgs a;
  float* part;     // (rows, splits, D): a split's output scaled by 2^-max, unnormalised
  float* part_ml;  // (rows, splits, 2): its max (log2 domain) and sum
  int32_t* counters;
  int splits;
};

template <typename T>
__device__ __forceinline__ void unpack8(const uint4& u, float (&f)[8]) {
  const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = to_f32(e[i]);
}

template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32) decode_split_kernel(SplitParams p) {
  constexpr int kLanesPerKey = D / 8, kKeysPerWarp = 32 / kLanesPerKey, kGroups = kWarps * kKeysPerWarp;
  pdl_enter();
  const AttentionArgs& a = p.a;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, tid = threadIdx.x;
  const int grp = warp * kKeysPerWarp + lane / kLanesPerKey, sub = lane % kLanesPerKey;
  const int split = blockIdx.x;
  const int64_t h = blockIdx.y, bt = blockIdx.z, b = bt / a.T, t = bt % a.T;
  const int64_t kvh = h / (a.n_head / a.n_kv_head), ldk = a.n_kv_head * D;
  const int64_t row = bt * a.n_head + h;  // (b, t, h): out's row
  const int64_t qpos = a.q_offset + (a.q_offset_at ? int64_t(*a.q_offset_at) : 0) + t;
  int64_t s_begin = 0, s_end = a.S;
  if (a.causal) {
    s_end = min(a.S, max(int64_t(0), qpos + 1));
    if (a.window > 0) s_begin = min(s_end, max(int64_t(0), qpos - a.window + 1));
  }
  const int64_t len = max(int64_t(0), s_end - s_begin);
  const int64_t per = max(int64_t(kMinKeysPerSplit), (len + p.splits - 1) / p.splits);
  const int64_t k0 = min(s_end, s_begin + split * per), k1 = min(s_end, k0 + per);

  float q[8], acc[8];
  unpack8<T>(*reinterpret_cast<const uint4*>(static_cast<const T*>(a.q) + row * D + sub * 8), q);
  const float qscale = a.scale * kLog2e;
#pragma unroll
  for (int i = 0; i < 8; ++i) q[i] *= qscale, acc[i] = 0.f;
  const T* kb = static_cast<const T*>(a.k) + b * a.S * ldk + kvh * D + sub * 8;
  const T* vb = static_cast<const T*>(a.v) + b * a.S * ldk + kvh * D + sub * 8;
  float m = -INFINITY, l = 0.f;
  // Two keys a lane group per round, both loaded before either is used. The rounds are the same
  // for the whole warp (its shuffles need every lane); a group past the stretch computes on zeros
  // and keeps nothing.
  const int gi = lane / kLanesPerKey;
  for (int64_t base = k0 + warp * kKeysPerWarp; base < k1; base += 2 * kGroups) {
    const int64_t s1 = base + gi, s2 = s1 + kGroups;
    const bool in1 = s1 < k1, in2 = s2 < k1;
    uint4 ku = {}, vu = {}, ku2 = {}, vu2 = {};
    if (in1) ku = *reinterpret_cast<const uint4*>(kb + s1 * ldk), vu = *reinterpret_cast<const uint4*>(vb + s1 * ldk);
    if (in2) ku2 = *reinterpret_cast<const uint4*>(kb + s2 * ldk), vu2 = *reinterpret_cast<const uint4*>(vb + s2 * ldk);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float kf[8], vf[8];
      unpack8<T>(r ? ku2 : ku, kf);
      float dot = 0.f;
#pragma unroll
      for (int i = 0; i < 8; ++i) dot += q[i] * kf[i];
#pragma unroll
      for (int o = kLanesPerKey / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
      if (!(r ? in2 : in1)) continue;
      unpack8<T>(r ? vu2 : vu, vf);
      const float m_new = fmaxf(m, dot), corr = exp2f(m - m_new), e = exp2f(dot - m_new);
      l = l * corr + e;
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] = acc[i] * corr + e * vf[i];
      m = m_new;
    }
  }
  // The block's lane groups meet: thread d < D sums dimension d over them.
  __shared__ float sm[kGroups], sl[kGroups], sacc[kGroups][D];
  __shared__ bool last;
  if (sub == 0) sm[grp] = m, sl[grp] = l;
#pragma unroll
  for (int i = 0; i < 8; ++i) sacc[grp][sub * 8 + i] = acc[i];
  __syncthreads();
  float M = -INFINITY;
#pragma unroll
  for (int g = 0; g < kGroups; ++g) M = fmaxf(M, sm[g]);
  constexpr int kPerThread = (D + kWarps * 32 - 1) / (kWarps * 32);
  float L = 0.f, o[kPerThread] = {};
#pragma unroll
  for (int g = 0; g < kGroups; ++g) {
    const float f = sm[g] == -INFINITY ? 0.f : exp2f(sm[g] - M);
    L += sl[g] * f;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j)
      if (tid + j * kWarps * 32 < D) o[j] += sacc[g][tid + j * kWarps * 32] * f;
  }
  T* out = static_cast<T*>(a.out) + row * D;
  float* lse = a.lse + (b * a.n_head + h) * a.T + t;
  if (p.splits == 1) {
#pragma unroll
    for (int j = 0; j < kPerThread; ++j)
      if (tid + j * kWarps * 32 < D) out[tid + j * kWarps * 32] = from_f32<T>(L > 0.f ? o[j] / L : 0.f);
    if (tid == 0) *lse = L > 0.f ? (M + log2f(L)) * kLn2 : -INFINITY;
    return;
  }
  const int64_t slot = row * p.splits + split;
#pragma unroll
  for (int j = 0; j < kPerThread; ++j)
    if (tid + j * kWarps * 32 < D) p.part[slot * D + tid + j * kWarps * 32] = o[j];
  if (tid == 0) p.part_ml[2 * slot] = M, p.part_ml[2 * slot + 1] = L;
  __threadfence();  // this block's partial is visible before its count is
  __syncthreads();
  if (tid == 0) last = atomicAdd(&p.counters[row], 1) == p.splits - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();  // every other block's partial is visible to this one
  float MX = -INFINITY;
  for (int s = 0; s < p.splits; ++s) MX = fmaxf(MX, __ldcg(p.part_ml + 2 * (row * p.splits + s)));
  float LX = 0.f, ox[kPerThread] = {};
  for (int s = 0; s < p.splits; ++s) {
    const int64_t sl2 = row * p.splits + s;
    const float ms = __ldcg(p.part_ml + 2 * sl2), f = ms == -INFINITY ? 0.f : exp2f(ms - MX);
    LX += __ldcg(p.part_ml + 2 * sl2 + 1) * f;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j)
      if (tid + j * kWarps * 32 < D) ox[j] += __ldcg(p.part + sl2 * D + tid + j * kWarps * 32) * f;
  }
#pragma unroll
  for (int j = 0; j < kPerThread; ++j)
    if (tid + j * kWarps * 32 < D) out[tid + j * kWarps * 32] = from_f32<T>(LX > 0.f ? ox[j] / LX : 0.f);
  if (tid == 0) {
    *lse = LX > 0.f ? (MX + log2f(LX)) * kLn2 : -INFINITY;
    p.counters[row] = 0;  // ready for the next launch (a recorded step replays this one)
  }
}

template <typename T, int D>
void launch_split(const SplitParams& p, int64_t rows_bt) {
  launch("attention (decode split)", decode_split_kernel<T, D>,
         dim3(unsigned(p.splits), unsigned(p.a.n_head), unsigned(rows_bt)), dim3(kWarps * 32), 0, p);
}

}  // namespace

bool decode_split_attention(const AttentionArgs& a) {
  const bool half = a.dtype == DType::bf16 || a.dtype == DType::f16;
  if (!runtime_config().cuda_decode_split || !half || (a.head_dim != 64 && a.head_dim != 128) || a.T > 4) return false;
  if (!aligned16(a.q) || !aligned16(a.k) || !aligned16(a.v) || a.n_head > 65535 || a.B * a.T > 65535) return false;
  const int64_t rows = a.B * a.T * a.n_head;
  if (rows > CudaBackend::kDecodeCounters) return false;
  // Enough blocks for two a multiprocessor, no more splits than stretches of 32 keys the cache
  // (its capacity, when the query offset is read at run time) can hold.
  const int64_t want = (2 * int64_t(cuda_impl().sm_count()) + rows - 1) / rows;
  const int64_t fit = (a.S + kMinKeysPerSplit - 1) / kMinKeysPerSplit;
  SplitParams p{a, nullptr, nullptr, cuda_impl().decode_counters(),
                int(std::clamp<int64_t>(std::min(want, fit), 1, kMaxSplits))};
  const size_t part_floats = p.splits > 1 ? size_t(rows * p.splits * (a.head_dim + 2)) : 0;
  DeviceScratch part(part_floats * sizeof(float));  // held by a recorded graph (CachingAllocator::hold)
  p.part = part.as<float>();
  p.part_ml = p.part ? p.part + rows * p.splits * a.head_dim : nullptr;
  if (a.dtype == DType::bf16) {
    if (a.head_dim == 64)
      launch_split<bf16, 64>(p, a.B * a.T);
    else
      launch_split<bf16, 128>(p, a.B * a.T);
  } else {
    if (a.head_dim == 64)
      launch_split<f16, 64>(p, a.B * a.T);
    else
      launch_split<f16, 128>(p, a.B * a.T);
  }
  return true;
}

}  // namespace lmtune
