// Decoding's attention split over the keys (flash-decoding): a few query rows (T <= 4) in bf16/f16
// with head_dim 64 or 128 against a cache of any length; and (attention_rows) a packed batch's
// decoding rows, each against its own cache, in f32/bf16/f16 with head_dim 32, 64 or 128. flash_forward.cu gives such a
// row one block per head that walks every key in turn (32 blocks for Mistral-7B, 5.8 us a layer at 80 keys on the H200,
// growing with the context); here each (split, head, row) block takes its own stretch of the visible keys, and the last
// block of a row to finish merges the stretches. With LMTUNE_CUDA_DECODE_GQA=1 a block takes up to 4
// query heads that share a kv head (grouped-query attention), so that each key and value is read
// once for all of them rather than once a head.
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
  AttentionArgs a;           // ROWS: dtype, n_head, n_kv_head, head_dim, scale, window and q / out only
  Backend::DecodeRows rows;  // ROWS: a packed batch's decoding rows, each over its own cache
  float* part;               // (rows, splits, D): a split's output scaled by 2^-max, unnormalised
  float* part_ml;            // (rows, splits, 2): its max (log2 domain) and sum
  int32_t* counters;
  int splits;
};

// 8 consecutive values (16 bytes of bf16/f16, 32 of f32) as raw words, then as floats.
template <typename T>
struct Raw8 {
  uint4 u[sizeof(T) / 2];
};
template <typename T>
__device__ __forceinline__ Raw8<T> load8(const T* p) {
  Raw8<T> r;
#pragma unroll
  for (int i = 0; i < int(sizeof(T)) / 2; ++i) r.u[i] = reinterpret_cast<const uint4*>(p)[i];
  return r;
}
template <typename T>
__device__ __forceinline__ void unpack8(const Raw8<T>& r, float (&f)[8]) {
  const T* e = reinterpret_cast<const T*>(&r);
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = to_f32(e[i]);
}

// ROWS: block z is DecodeRows entry z (its query row, position and cache); otherwise (b, t) of
// AttentionArgs' batch over its k and v. Block y is a run of GQ query heads that share one kv head
// (grouped-query attention): each key and value is read once for all GQ of them.
template <typename T, int D, bool ROWS, int GQ>
__global__ void __launch_bounds__(kWarps * 32) decode_split_kernel(SplitParams p) {
  constexpr int kLanesPerKey = D / 8, kKeysPerWarp = 32 / kLanesPerKey, kGroups = kWarps * kKeysPerWarp;
  pdl_enter();
  const AttentionArgs& a = p.a;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, tid = threadIdx.x;
  const int grp = warp * kKeysPerWarp + lane / kLanesPerKey, sub = lane % kLanesPerKey;
  const int split = blockIdx.x;
  const int64_t h0 = int64_t(blockIdx.y) * GQ, bt = blockIdx.z;
  const int64_t kvh = h0 / (a.n_head / a.n_kv_head), ldk = a.n_kv_head * D;
  const int64_t row0 = bt * a.n_head + h0;  // head j's counter and partials: row0 + j (the counter: row0's)
  int64_t s_begin = 0, s_end, q_index0;     // q_index0 + j: head j's q and out (row, head) index
  const T *kbase, *vbase;
  float* lse = nullptr;  // head j's at lse[j * a.T]
  if constexpr (ROWS) {
    const int64_t qpos = p.rows.pos[bt];
    q_index0 = int64_t(p.rows.row[bt]) * a.n_head + h0;
    kbase = static_cast<const T*>(p.rows.k[bt]), vbase = static_cast<const T*>(p.rows.v[bt]);
    s_end = qpos + 1;
    if (a.window > 0) s_begin = max(int64_t(0), qpos - a.window + 1);
  } else {
    const int64_t b = bt / a.T, t = bt % a.T;
    const int64_t qpos = a.q_offset + (a.q_offset_at ? int64_t(*a.q_offset_at) : 0) + t;
    q_index0 = row0;
    kbase = static_cast<const T*>(a.k) + b * a.S * ldk, vbase = static_cast<const T*>(a.v) + b * a.S * ldk;
    lse = a.lse ? a.lse + (b * a.n_head + h0) * a.T + t : nullptr;
    s_end = a.S;
    if (a.causal) {
      s_end = min(a.S, max(int64_t(0), qpos + 1));
      if (a.window > 0) s_begin = min(s_end, max(int64_t(0), qpos - a.window + 1));
    }
  }
  const int64_t len = max(int64_t(0), s_end - s_begin);
  const int64_t per = max(int64_t(kMinKeysPerSplit), (len + p.splits - 1) / p.splits);
  const int64_t k0 = min(s_end, s_begin + split * per), k1 = min(s_end, k0 + per);

  float q[GQ][8], acc[GQ][8], m[GQ], l[GQ];
  const float qscale = a.scale * kLog2e;
#pragma unroll
  for (int j = 0; j < GQ; ++j) {
    unpack8<T>(load8(static_cast<const T*>(a.q) + (q_index0 + j) * D + sub * 8), q[j]);
#pragma unroll
    for (int i = 0; i < 8; ++i) q[j][i] *= qscale, acc[j][i] = 0.f;
    m[j] = -INFINITY, l[j] = 0.f;
  }
  const T* kb = kbase + kvh * D + sub * 8;
  const T* vb = vbase + kvh * D + sub * 8;
  // Two keys a lane group per round, both loaded before either is used. The rounds are the same
  // for the whole warp (its shuffles need every lane); a group past the stretch computes on zeros
  // and keeps nothing. Head j's sums are those of the one-head kernel (GQ = 1) for that head.
  const int gi = lane / kLanesPerKey;
  for (int64_t base = k0 + warp * kKeysPerWarp; base < k1; base += 2 * kGroups) {
    const int64_t s1 = base + gi, s2 = s1 + kGroups;
    const bool in1 = s1 < k1, in2 = s2 < k1;
    Raw8<T> ku = {}, vu = {}, ku2 = {}, vu2 = {};
    if (in1) ku = load8(kb + s1 * ldk), vu = load8(vb + s1 * ldk);
    if (in2) ku2 = load8(kb + s2 * ldk), vu2 = load8(vb + s2 * ldk);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float kf[8], vf[8], dot[GQ];
      unpack8<T>(r ? ku2 : ku, kf);
#pragma unroll
      for (int j = 0; j < GQ; ++j) {
        dot[j] = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) dot[j] += q[j][i] * kf[i];
      }
#pragma unroll
      for (int o = kLanesPerKey / 2; o > 0; o >>= 1)
#pragma unroll
        for (int j = 0; j < GQ; ++j) dot[j] += __shfl_xor_sync(0xffffffffu, dot[j], o);
      if (!(r ? in2 : in1)) continue;
      unpack8<T>(r ? vu2 : vu, vf);
#pragma unroll
      for (int j = 0; j < GQ; ++j) {
        const float m_new = fmaxf(m[j], dot[j]), corr = exp2f(m[j] - m_new), e = exp2f(dot[j] - m_new);
        l[j] = l[j] * corr + e;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[j][i] = acc[j][i] * corr + e * vf[i];
        m[j] = m_new;
      }
    }
  }
  // The block's lane groups meet: thread d < D sums dimension d over them, for each head.
  __shared__ float sm[GQ][kGroups], sl[GQ][kGroups], sacc[GQ][kGroups][D];
  __shared__ bool last;
#pragma unroll
  for (int j = 0; j < GQ; ++j) {
    if (sub == 0) sm[j][grp] = m[j], sl[j][grp] = l[j];
#pragma unroll
    for (int i = 0; i < 8; ++i) sacc[j][grp][sub * 8 + i] = acc[j][i];
  }
  __syncthreads();
  constexpr int kPerThread = (D + kWarps * 32 - 1) / (kWarps * 32);
  float M[GQ], L[GQ], o[GQ][kPerThread];
#pragma unroll
  for (int j = 0; j < GQ; ++j) {
    M[j] = -INFINITY, L[j] = 0.f;
#pragma unroll
    for (int g = 0; g < kGroups; ++g) M[j] = fmaxf(M[j], sm[j][g]);
#pragma unroll
    for (int c = 0; c < kPerThread; ++c) o[j][c] = 0.f;
#pragma unroll
    for (int g = 0; g < kGroups; ++g) {
      const float f = sm[j][g] == -INFINITY ? 0.f : exp2f(sm[j][g] - M[j]);
      L[j] += sl[j][g] * f;
#pragma unroll
      for (int c = 0; c < kPerThread; ++c)
        if (tid + c * kWarps * 32 < D) o[j][c] += sacc[j][g][tid + c * kWarps * 32] * f;
    }
  }
  if (p.splits == 1) {
#pragma unroll
    for (int j = 0; j < GQ; ++j) {
      T* out = static_cast<T*>(a.out) + (q_index0 + j) * D;
#pragma unroll
      for (int c = 0; c < kPerThread; ++c)
        if (tid + c * kWarps * 32 < D) out[tid + c * kWarps * 32] = from_f32<T>(L[j] > 0.f ? o[j][c] / L[j] : 0.f);
      if (tid == 0 && lse) lse[j * a.T] = L[j] > 0.f ? (M[j] + log2f(L[j])) * kLn2 : -INFINITY;
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < GQ; ++j) {
    const int64_t slot = (row0 + j) * p.splits + split;
#pragma unroll
    for (int c = 0; c < kPerThread; ++c)
      if (tid + c * kWarps * 32 < D) p.part[slot * D + tid + c * kWarps * 32] = o[j][c];
    if (tid == 0) p.part_ml[2 * slot] = M[j], p.part_ml[2 * slot + 1] = L[j];
  }
  __threadfence();  // this block's partials are visible before its count is
  __syncthreads();
  if (tid == 0) last = atomicAdd(&p.counters[row0], 1) == p.splits - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();  // every other block's partials are visible to this one
#pragma unroll 1
  for (int j = 0; j < GQ; ++j) {
    const int64_t row = row0 + j;
    float MX = -INFINITY;
    for (int s = 0; s < p.splits; ++s) MX = fmaxf(MX, __ldcg(p.part_ml + 2 * (row * p.splits + s)));
    float LX = 0.f, ox[kPerThread] = {};
    for (int s = 0; s < p.splits; ++s) {
      const int64_t sl2 = row * p.splits + s;
      const float ms = __ldcg(p.part_ml + 2 * sl2), f = ms == -INFINITY ? 0.f : exp2f(ms - MX);
      LX += __ldcg(p.part_ml + 2 * sl2 + 1) * f;
#pragma unroll
      for (int c = 0; c < kPerThread; ++c)
        if (tid + c * kWarps * 32 < D) ox[c] += __ldcg(p.part + sl2 * D + tid + c * kWarps * 32) * f;
    }
    T* out = static_cast<T*>(a.out) + (q_index0 + j) * D;
#pragma unroll
    for (int c = 0; c < kPerThread; ++c)
      if (tid + c * kWarps * 32 < D) out[tid + c * kWarps * 32] = from_f32<T>(LX > 0.f ? ox[c] / LX : 0.f);
    if (tid == 0 && lse) lse[j * a.T] = LX > 0.f ? (MX + log2f(LX)) * kLn2 : -INFINITY;
  }
  if (tid == 0) p.counters[row0] = 0;  // ready for the next launch (a recorded step replays this one)
}

template <typename T, int D, bool ROWS, int GQ>
void launch_split(const SplitParams& p, int64_t rows_bt) {
  launch("attention (decode split)", decode_split_kernel<T, D, ROWS, GQ>,
         dim3(unsigned(p.splits), unsigned(p.a.n_head / GQ), unsigned(rows_bt)), dim3(kWarps * 32), 0, p);
}

// Query heads a block takes: with LMTUNE_CUDA_DECODE_GQA=1 the most of 4, 2, 1 that divides the
// heads sharing a kv head; otherwise one.
int heads_per_block(int64_t n_head, int64_t n_kv_head) {
  const int64_t g = n_head / n_kv_head;
  if (!runtime_config().cuda_decode_gqa) return 1;
  return g % 4 == 0 ? 4 : g % 2 == 0 ? 2 : 1;
}

// Splits: enough blocks for `per_sm` a multiprocessor, no more than stretches of 32 keys `keys` holds.
int split_count(int64_t blocks_without, int64_t keys, int per_sm) {
  const int64_t want = (per_sm * int64_t(cuda_impl().sm_count()) + blocks_without - 1) / blocks_without;
  const int64_t fit = (keys + kMinKeysPerSplit - 1) / kMinKeysPerSplit;
  return int(std::clamp<int64_t>(std::min(want, fit), 1, kMaxSplits));
}
// A block of GQ heads does GQ times the work per key of a one-head block: twice the blocks.
int split_count_for(int64_t rows_heads, int gq, int64_t keys) {
  return split_count(rows_heads / gq, keys, gq > 1 ? 4 : 2);
}

template <typename T, bool ROWS, int GQ>
void launch_split_dims(const SplitParams& p, int64_t rows_bt) {
  switch (p.a.head_dim) {
    case 32: return launch_split<T, 32, ROWS, GQ>(p, rows_bt);
    case 64: return launch_split<T, 64, ROWS, GQ>(p, rows_bt);
    default: return launch_split<T, 128, ROWS, GQ>(p, rows_bt);
  }
}

template <bool ROWS, int GQ>
void launch_split_types(const SplitParams& p, int64_t rows_bt) {
  switch (p.a.dtype) {
    case DType::bf16: return launch_split_dims<bf16, ROWS, GQ>(p, rows_bt);
    case DType::f16: return launch_split_dims<f16, ROWS, GQ>(p, rows_bt);
    default: return launch_split_dims<float, ROWS, GQ>(p, rows_bt);
  }
}

// head_dim 32, 64 or 128 (checked by the callers); gq from heads_per_block.
template <bool ROWS>
void launch_split_for(const SplitParams& p, int64_t rows_bt, int gq) {
  switch (gq) {
    case 4: return launch_split_types<ROWS, 4>(p, rows_bt);
    case 2: return launch_split_types<ROWS, 2>(p, rows_bt);
    default: return launch_split_types<ROWS, 1>(p, rows_bt);
  }
}

}  // namespace

bool decode_split_attention(const AttentionArgs& a) {
  const bool half = a.dtype == DType::bf16 || a.dtype == DType::f16;
  if (!runtime_config().cuda_decode_split || !half || (a.head_dim != 64 && a.head_dim != 128) || a.T > 4) return false;
  if (!aligned16(a.q) || !aligned16(a.k) || !aligned16(a.v) || a.n_head > 65535 || a.B * a.T > 65535) return false;
  const int64_t rows = a.B * a.T * a.n_head;
  if (rows > CudaBackend::kDecodeCounters) return false;
  // With a run-time query offset, S is the cache's capacity.
  const int gq = heads_per_block(a.n_head, a.n_kv_head);
  SplitParams p{a, {}, nullptr, nullptr, cuda_impl().decode_counters(), split_count_for(rows, gq, a.S)};
  const size_t part_floats = p.splits > 1 ? size_t(rows * p.splits * (a.head_dim + 2)) : 0;
  DeviceScratch part(part_floats * sizeof(float));  // held by a recorded graph (CachingAllocator::hold)
  p.part = part.as<float>();
  p.part_ml = p.part + rows * p.splits * a.head_dim;
  launch_split_for<false>(p, a.B * a.T, gq);
  return true;
}

bool CudaBackend::attention_rows(const void* q, void* out, const DecodeRows& rows, int64_t H, int64_t KV, int64_t D,
                                 float scale, int64_t window, DType dt) {
  if (rows.n == 0) return true;
  if ((D != 32 && D != 64 && D != 128) || !aligned16(q) || KV < 1 || H % KV != 0 || H > 65535 ||
      int64_t(rows.n) * H > kDecodeCounters)
    return false;
  int64_t longest = 1;
  for (int i = 0; i < rows.n; ++i) {
    if (!aligned16(rows.k[i]) || !aligned16(rows.v[i])) return false;
    longest = std::max<int64_t>(longest, int64_t(rows.pos[i]) + 1);
  }
  AttentionArgs a;
  a.q = q, a.out = out, a.dtype = dt, a.n_head = H, a.n_kv_head = KV, a.head_dim = D, a.scale = scale;
  a.window = window, a.causal = true, a.T = 1;
  const int64_t n = int64_t(rows.n) * H;
  const int gq = heads_per_block(H, KV);
  SplitParams p{a,
                rows,
                nullptr,
                nullptr,
                decode_counters(),
                split_count_for(n, gq, window > 0 ? std::min(longest, window) : longest)};
  DeviceScratch part(p.splits > 1 ? size_t(n * p.splits * (D + 2)) * sizeof(float) : 0);
  p.part = part.as<float>();
  p.part_ml = p.part + n * p.splits * D;
  launch_split_for<true>(p, rows.n, gq);
  if (tracking_rows()) {  // a recorded batched step: new rows must keep this split (and its scratch)
    auto a = std::make_shared<SplitParams>(p);
    TrackedRows t;
    t.arg_ptrs = {a.get()};
    t.rows = &a->rows;
    t.accepts = [n, gq, window, splits = p.splits](const DecodeRows& r) {
      int64_t longest = 1;
      for (int i = 0; i < r.n; ++i) longest = std::max<int64_t>(longest, int64_t(r.pos[i]) + 1);
      return split_count_for(n, gq, window > 0 ? std::min(longest, window) : longest) == splits;
    };
    t.args = a;
    track_rows_launch(std::move(t));
  }
  return true;
}

}  // namespace lmtune
