// Attention on CUDA through cuBLASLt: per batch element and chunk of query rows, Q is copied
// head-major so each kv group's query heads stack into one matrix; S = scale Q K^T (f32), a
// masked softmax writes P and lse, O = P V. Backward recomputes P from lse. Keys no query of a
// chunk can see (causal, window) are skipped. LMTUNE_CUDA_ATTN_CHUNK_ROWS caps the rows per
// chunk (tests use it to exercise chunking); by default scratch stays near kScratchBytes.
#include "backend/cuda/cuda_common.cuh"
#include "core/runtime_config.h"

namespace lmtune {

namespace {

constexpr size_t kScratchBytes = size_t(512) << 20;

__device__ __forceinline__ bool visible(bool causal, int64_t window, int64_t qpos, int64_t s) {
  if (!causal) return true;
  return s <= qpos && (window <= 0 || qpos - s < window);
}

// Between token-major rows tok (tc, n_head, D) and head-major rows hm (n_head, tc, D).
template <typename T, int V>
__global__ void heads_copy_kernel(const T* src, T* dst, int64_t n_head, int64_t tc, int64_t D, bool to_head_major) {
  pdl_enter();
  int64_t dv = D / V, total = n_head * tc * dv;
  for (int64_t idx = global_tid(); idx < total; idx += grid_stride()) {
    int64_t r = idx / dv, d = (idx % dv) * V;  // r = h * tc + tr
    int64_t h = r / tc, tr = r % tc;
    int64_t hm = r * D + d, tok = (tr * n_head + h) * D + d;
    int64_t from = to_head_major ? tok : hm, to = to_head_major ? hm : tok;
    store_pack<V>(dst + to, load_pack<V>(src + from));
  }
}

struct RowGeom {  // rows r = h * tc + tr of a chunk's (n_head * tc, se) score matrix
  int64_t tc, se, lds, t0, s0, T, q_offset, window;
  bool causal;
  int64_t lse_base;    // (b * n_head) * T + t0
  const int32_t* seg;  // packed rows: this batch row's segment ids (T), or null
  float softcap;       // > 0: each score s becomes softcap * tanh(s / softcap) (gemma2)
};

// A score as the softmax sees it (soft-capped when the geometry says so).
__device__ __forceinline__ float capped(const RowGeom& g, float s) {
  return g.softcap > 0.f ? g.softcap * tanhf(s / g.softcap) : s;
}

// The geometry of batch row b's chunk of tc queries from t0 against its se keys from s0.
RowGeom row_geom(const AttentionArgs& a, int64_t b, int64_t t0, int64_t tc, int64_t s0, int64_t se, int64_t lds) {
  RowGeom g{};
  g.tc = tc, g.se = se, g.lds = lds, g.t0 = t0, g.s0 = s0, g.T = a.T, g.q_offset = a.q_offset, g.window = a.window;
  g.causal = a.causal;
  g.lse_base = b * a.n_head * a.T + t0;
  g.seg = a.segment ? a.segment + b * a.T : nullptr;
  g.softcap = a.softcap;
  return g;
}

// visible() and, for packed rows, the same segment (query row t0 + tr, key s0 + c).
__device__ __forceinline__ bool visible_in(const RowGeom& g, int64_t tr, int64_t qpos, int64_t c) {
  if (g.seg && g.seg[g.s0 + c] != g.seg[g.t0 + tr]) return false;
  return visible(g.causal, g.window, qpos, g.s0 + c);
}

// P = softmax(S) over visible keys, written in P's dtype (in place when P is f32); lse per row.
template <typename P>
__global__ void attn_softmax_kernel(const float* sc, P* pb, float* lse, int64_t rows, RowGeom g) {
  pdl_enter();
  __shared__ float smem[64];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t h = r / g.tc, tr = r % g.tc, qpos = g.q_offset + g.t0 + tr;
    const float* row = sc + r * g.lds;
    MaxSum ms{-INFINITY, 0.f};
    for (int64_t c = threadIdx.x; c < g.se; c += blockDim.x)
      if (visible_in(g, tr, qpos, c)) ms = maxsum_add(ms, capped(g, row[c]));
    ms = block_maxsum(ms, smem);
    float l = ms.s > 0.f ? ms.m + logf(ms.s) : -INFINITY;
    if (threadIdx.x == 0) lse[g.lse_base + h * g.T + tr] = l;
    for (int64_t c = threadIdx.x; c < g.se; c += blockDim.x) {
      float p = visible_in(g, tr, qpos, c) ? expf(capped(g, row[c]) - l) : 0.f;
      pb[r * g.lds + c] = from_f32<P>(p);
    }
  }
}

// Backward: P = exp(S - lse) (masked) and dS = P * (dP - delta), both in P's dtype; with f32
// they overwrite S and dP in place. Soft-capped scores: P from the capped score and dS through
// the cap, times 1 - tanh^2.
template <typename P>
__global__ void attn_grad_kernel(const float* sc, const float* dp, P* pb, P* ds, const float* lse, const float* delta,
                                 int64_t rows, RowGeom g) {
  pdl_enter();
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t h = r / g.tc, tr = r % g.tc, qpos = g.q_offset + g.t0 + tr;
    float l = lse[g.lse_base + h * g.T + tr], dl = delta[r];
    for (int64_t c = threadIdx.x; c < g.se; c += blockDim.x) {
      int64_t i = r * g.lds + c;
      const float th = g.softcap > 0.f ? tanhf(sc[i] / g.softcap) : 0.f;
      const float s = g.softcap > 0.f ? g.softcap * th : sc[i];
      float p = visible_in(g, tr, qpos, c) ? expf(s - l) : 0.f;
      float d = p * (dp[i] - dl);
      if (g.softcap > 0.f) d *= 1.f - th * th;
      pb[i] = from_f32<P>(p);
      ds[i] = from_f32<P>(d);
    }
  }
}

// delta[h * tc + tr] = sum_d dout * out over token-major rows; one warp per row.
template <typename T>
__global__ void attn_delta_kernel(const T* dout, const T* out, float* delta, int64_t n_head, int64_t tc, int64_t D) {
  pdl_enter();
  int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  int lane = threadIdx.x & 31;
  for (int64_t r = global_tid() / 32; r < n_head * tc; r += warps) {
    int64_t h = r / tc, tr = r % tc, base = (tr * n_head + h) * D;
    float acc = 0.f;
    for (int64_t d = lane; d < D; d += 32) acc += to_f32(dout[base + d]) * to_f32(out[base + d]);
    acc = warp_sum(acc);
    if (lane == 0) delta[r] = acc;
  }
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Query rows per chunk so that the chunk's scratch stays within the budget.
int64_t chunk_rows(int64_t T, int64_t bytes_per_row) {
  int64_t rows = std::max<int64_t>(1, int64_t(kScratchBytes) / std::max<int64_t>(bytes_per_row, 1));
  if (const int64_t cap = runtime_config().attn_chunk_rows; cap > 0) rows = std::min(rows, cap);
  return std::min(rows, T);
}

// The keys [s0, s1) any query row in [t0, t0 + tc) may see.
void key_range(const AttentionArgs& a, int64_t t0, int64_t tc, int64_t& s0, int64_t& s1) {
  s0 = 0;
  s1 = a.S;
  if (!a.causal) return;
  s1 = std::clamp<int64_t>(a.q_offset + t0 + tc, 0, a.S);
  if (a.window > 0) s0 = std::clamp<int64_t>(a.q_offset + t0 - a.window + 1, 0, a.S);
  if (s0 > s1) s0 = s1;
}

template <typename T>
void heads_copy(const T* src, T* dst, int64_t n_head, int64_t tc, int64_t D, bool to_head_major) {
  constexpr int V = kVec<T>;
  int64_t n = n_head * tc * D;
  if (D % V == 0 && aligned16(src) && aligned16(dst))
    launch("attention", heads_copy_kernel<T, V>, grid_for(n / V), kThreads, 0, src, dst, n_head, tc, D, to_head_major);
  else
    launch("attention", heads_copy_kernel<T, 1>, grid_for(n), kThreads, 0, src, dst, n_head, tc, D, to_head_major);
}

// GemmArgs for one product batched over the kv groups: group g's stacked rows are (G * tc).
GemmArgs group_gemm(DType dt, int64_t n_kv) {
  GemmArgs g;
  g.dtype = dt;
  g.batch = n_kv;
  return g;
}

unsigned row_blocks(int64_t rows) { return unsigned(std::min<int64_t>(rows, int64_t(cuda_impl().sm_count()) * 32)); }

}  // namespace

void CudaBackend::attention(const AttentionArgs& a) {
  LMT_CHECK(a.n_kv_head > 0 && a.n_head % a.n_kv_head == 0, "[attention] cuda: n_head ", a.n_head,
            " is not a multiple of n_kv_head ", a.n_kv_head);
  if (a.B * a.T * a.n_head * a.head_dim == 0) return;
  // The fused kernels have no soft-cap: soft-capped scores (gemma2) take the cuBLASLt path below,
  // or the run-time-offset decode kernel, which caps.
  if (a.softcap == 0.f && ((!a.segment && decode_split_attention(a)) || flash_attention_forward(a))) return;
  if (a.q_offset_at) return decode_attention(a);  // the key range is known only on the device
  dispatch_float(a.dtype, "attention", [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr bool kF32 = std::is_same_v<T, float>;
    const int64_t H = a.n_head, KV = a.n_kv_head, G = H / KV, D = a.head_dim, S = a.S, es = sizeof(T);
    const int64_t lds_max = round_up(std::max<int64_t>(S, 1), 8);
    const int64_t Tc = chunk_rows(a.T, H * (lds_max * (4 + (kF32 ? 0 : es)) + D * es));
    DeviceScratch qh(size_t(H * Tc * D * es)), sc(size_t(H * Tc * lds_max * 4)),
        pbuf(kF32 ? 0 : size_t(H * Tc * lds_max * es));
    T* pq = qh.as<T>();
    float* psc = sc.as<float>();
    T* pp = kF32 ? reinterpret_cast<T*>(psc) : pbuf.as<T>();
    const T* q = static_cast<const T*>(a.q);
    const T* k = static_cast<const T*>(a.k);
    const T* v = static_cast<const T*>(a.v);
    T* out = static_cast<T*>(a.out);
    for (int64_t b = 0; b < a.B; ++b) {
      for (int64_t t0 = 0; t0 < a.T; t0 += Tc) {
        int64_t tc = std::min(Tc, a.T - t0), s0, s1;
        key_range(a, t0, tc, s0, s1);
        int64_t se = s1 - s0, lds = round_up(std::max<int64_t>(se, 1), 8), rows = H * tc;
        int64_t tok = (b * a.T + t0) * H * D;  // first element of the chunk in q / out
        int64_t kv0 = (b * S + s0) * KV * D;   // first visible key row in k / v
        heads_copy(q + tok, pq, H, tc, D, true);
        const RowGeom geom = row_geom(a, b, t0, tc, s0, se, lds);
        if (se > 0) {
          GemmArgs s = group_gemm(a.dtype, KV);  // S_g (G tc, se) = scale Q_g K_g^T
          s.a = pq, s.lda = D, s.stride_a = G * tc * D;
          s.b = k + kv0, s.ldb = KV * D, s.stride_b = D, s.trans_b = true;
          s.c = psc, s.ldc = lds, s.stride_c = G * tc * lds;
          s.M = G * tc, s.N = se, s.K = D, s.alpha = a.scale;
          gemm_ex(s, DType::f32);
        }
        launch("attention", attn_softmax_kernel<T>, row_blocks(rows), 128, 0, psc, pp, a.lse, rows, geom);
        if (se > 0) {
          GemmArgs o = group_gemm(a.dtype, KV);  // O_g (G tc, D) = P_g V_g, into the Q scratch
          o.a = pp, o.lda = lds, o.stride_a = G * tc * lds;
          o.b = v + kv0, o.ldb = KV * D, o.stride_b = D;
          o.c = pq, o.ldc = D, o.stride_c = G * tc * D;
          o.M = G * tc, o.N = D, o.K = se;
          gemm_ex(o, a.dtype);
        } else {
          LMT_CUDA_CHECK(cudaMemsetAsync(pq, 0, size_t(rows * D * es), stream_));
        }
        heads_copy(static_cast<const T*>(pq), out + tok, H, tc, D, false);
      }
    }
  });
}

void CudaBackend::attention_backward(const AttentionBackwardArgs& ab) {
  const AttentionArgs& a = ab.fwd;
  LMT_CHECK(a.n_kv_head > 0 && a.n_head % a.n_kv_head == 0, "[attention_backward] cuda: n_head ", a.n_head,
            " is not a multiple of n_kv_head ", a.n_kv_head);
  LMT_CHECK(!a.q_offset_at, "[attention_backward] a run-time q_offset is for inference only");
  if (a.B * a.head_dim * a.n_kv_head == 0) return;
  if (a.softcap == 0.f && flash_attention_backward(ab)) return;
  dispatch_float(a.dtype, "attention_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr bool kF32 = std::is_same_v<T, float>;
    const int64_t H = a.n_head, KV = a.n_kv_head, G = H / KV, D = a.head_dim, S = a.S, es = sizeof(T);
    const int64_t kv_elems = S * KV * D;  // one batch element of k / v
    T* dk = static_cast<T*>(ab.dk);
    T* dv = static_cast<T*>(ab.dv);
    if (a.T == 0 || a.n_head == 0) {
      LMT_CUDA_CHECK(cudaMemsetAsync(dk, 0, size_t(a.B * kv_elems * es), stream_));
      LMT_CUDA_CHECK(cudaMemsetAsync(dv, 0, size_t(a.B * kv_elems * es), stream_));
      return;
    }
    const int64_t lds_max = round_up(std::max<int64_t>(S, 1), 8);
    const int64_t Tc = chunk_rows(a.T, H * (lds_max * (8 + (kF32 ? 0 : 2 * es)) + 3 * D * es + 4));
    DeviceScratch qh(size_t(H * Tc * D * es)), doh(size_t(H * Tc * D * es)), dqh(size_t(H * Tc * D * es));
    DeviceScratch sc(size_t(H * Tc * lds_max * 4)), dp(size_t(H * Tc * lds_max * 4));
    DeviceScratch pbuf(kF32 ? 0 : size_t(H * Tc * lds_max * es)), dsbuf(kF32 ? 0 : size_t(H * Tc * lds_max * es));
    DeviceScratch delta(size_t(H * Tc) * 4);
    // dK and dV accumulate over chunks and group heads in f32: in place for f32, else scratch.
    DeviceScratch acc(kF32 ? 0 : size_t(2 * kv_elems) * 4);
    float* psc = sc.as<float>();
    float* pdp = dp.as<float>();
    T* pp = kF32 ? reinterpret_cast<T*>(psc) : pbuf.as<T>();
    T* pds = kF32 ? reinterpret_cast<T*>(pdp) : dsbuf.as<T>();
    T *pq = qh.as<T>(), *pdo = doh.as<T>(), *pdq = dqh.as<T>();
    const T* q = static_cast<const T*>(a.q);
    const T* k = static_cast<const T*>(a.k);
    const T* v = static_cast<const T*>(a.v);
    const T* o = static_cast<const T*>(a.out);
    const T* dout = static_cast<const T*>(ab.dout);
    T* dq = static_cast<T*>(ab.dq);
    for (int64_t b = 0; b < a.B; ++b) {
      float* dk_acc = kF32 ? reinterpret_cast<float*>(dk + b * kv_elems) : acc.as<float>();
      float* dv_acc = kF32 ? reinterpret_cast<float*>(dv + b * kv_elems) : acc.as<float>() + kv_elems;
      LMT_CUDA_CHECK(cudaMemsetAsync(dk_acc, 0, size_t(kv_elems) * 4, stream_));
      LMT_CUDA_CHECK(cudaMemsetAsync(dv_acc, 0, size_t(kv_elems) * 4, stream_));
      for (int64_t t0 = 0; t0 < a.T; t0 += Tc) {
        int64_t tc = std::min(Tc, a.T - t0), s0, s1;
        key_range(a, t0, tc, s0, s1);
        int64_t se = s1 - s0, lds = round_up(std::max<int64_t>(se, 1), 8), rows = H * tc;
        int64_t tok = (b * a.T + t0) * H * D, kv0 = (b * S + s0) * KV * D;
        if (se == 0) {  // no visible key: dQ rows are zero, nothing flows to dK, dV
          LMT_CUDA_CHECK(cudaMemsetAsync(dq + tok, 0, size_t(rows * D * es), stream_));
          continue;
        }
        heads_copy(q + tok, pq, H, tc, D, true);
        heads_copy(dout + tok, pdo, H, tc, D, true);
        launch("attention_backward", attn_delta_kernel<T>, grid_for(rows * 32), kThreads, 0, dout + tok, o + tok,
               delta.as<float>(), H, tc, D);
        GemmArgs s = group_gemm(a.dtype, KV);  // S_g = scale Q_g K_g^T
        s.a = pq, s.lda = D, s.stride_a = G * tc * D;
        s.b = k + kv0, s.ldb = KV * D, s.stride_b = D, s.trans_b = true;
        s.c = psc, s.ldc = lds, s.stride_c = G * tc * lds;
        s.M = G * tc, s.N = se, s.K = D, s.alpha = a.scale;
        gemm_ex(s, DType::f32);
        GemmArgs d = s;  // dP_g = dO_g V_g^T
        d.a = pdo, d.b = v + kv0, d.c = pdp, d.alpha = 1.f;
        gemm_ex(d, DType::f32);
        const RowGeom geom = row_geom(a, b, t0, tc, s0, se, lds);
        launch("attention_backward", attn_grad_kernel<T>, row_blocks(rows), 128, 0, psc, pdp, pp, pds, a.lse,
               delta.as<const float>(), rows, geom);
        GemmArgs gv = group_gemm(a.dtype, KV);  // dV_g (se, D) += P_g^T dO_g
        gv.a = pp, gv.lda = lds, gv.stride_a = G * tc * lds, gv.trans_a = true;
        gv.b = pdo, gv.ldb = D, gv.stride_b = G * tc * D;
        gv.c = dv_acc + s0 * KV * D, gv.ldc = KV * D, gv.stride_c = D;
        gv.M = se, gv.N = D, gv.K = G * tc, gv.beta = 1.f;
        gemm_ex(gv, DType::f32);
        GemmArgs gk = gv;  // dK_g += scale dS_g^T Q_g
        gk.a = pds, gk.b = pq, gk.c = dk_acc + s0 * KV * D, gk.alpha = a.scale;
        gemm_ex(gk, DType::f32);
        GemmArgs gq = group_gemm(a.dtype, KV);  // dQ_g (G tc, D) = scale dS_g K_g
        gq.a = pds, gq.lda = lds, gq.stride_a = G * tc * lds;
        gq.b = k + kv0, gq.ldb = KV * D, gq.stride_b = D;
        gq.c = pdq, gq.ldc = D, gq.stride_c = G * tc * D;
        gq.M = G * tc, gq.N = D, gq.K = se, gq.alpha = a.scale;
        gemm_ex(gq, a.dtype);
        heads_copy(static_cast<const T*>(pdq), dq + tok, H, tc, D, false);
      }
      if (!kF32) {
        cast(dk_acc, DType::f32, dk + b * kv_elems, a.dtype, kv_elems);
        cast(dv_acc, DType::f32, dv + b * kv_elems, a.dtype, kv_elems);
      }
    }
  });
}

}  // namespace lmtune
