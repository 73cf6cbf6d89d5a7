// Fused attention backward (flash-attention style, two kernels) for bf16/f16 and head_dim 64 or
// 128. P is recomputed from lse and never stored. dK, dV: a block owns 64 keys of one query
// head (16 per warp), streams 32-row query tiles and adds into f32 accumulators per kv head
// (atomics across the heads of a group). dQ: a block owns 64 query rows and streams key tiles,
// as the forward does. No shared-memory transposes: every product reads its operands in the
// layout ldmatrix gives.
#include "backend/cuda/flash_common.cuh"

namespace lmtune {

namespace {

constexpr int kWarpsB = 4, kThreadsB = kWarpsB * 32;     // 8 warps were slower on an H100
constexpr int kKeyTile = 16 * kWarpsB, kQueryTile = 32;  // dK/dV kernel: keys per block, query rows per step
constexpr int kRowTile = 16 * kWarpsB, kKeyStep = 64;    // dQ kernel: rows per block, keys per step
constexpr float kLog2eB = 1.4426950408889634f;

template <typename T>
struct BwdParams {
  const T *q, *k, *v, *dout;                  // q, dout (B, T, H, D); k, v (B, S, KV, D)
  const float* lse;                           // (B, H, T), natural log
  const float* delta;                         // (B, H, T): rowsum(dout * out)
  float *dk_acc, *dv_acc;                     // f32 (B, S, KV, D), zeroed
  T* dq;                                      // (B, T, H, D)
  int64_t T_, S, H, KV, G, q_offset, window;  // G = H / KV
  const int32_t* seg;                         // packed rows: i32 (B, T) segment ids, or null
  bool causal;
  float scale, scale_log2;
};

// delta (B, H, T) = sum over head_dim of dout * out; one warp per (b, t, h) row.
template <typename T>
__global__ void flash_delta_kernel(const T* dout, const T* out, float* delta, int64_t B, int64_t T_, int64_t H,
                                   int64_t D) {
  pdl_enter();
  int64_t rows = B * T_ * H, warps = int64_t(gridDim.x) * (blockDim.x / 32);
  int lane = threadIdx.x & 31;
  for (int64_t r = global_tid() / 32; r < rows; r += warps) {  // r = (b * T + t) * H + h
    float acc = 0.f;
    for (int64_t d = lane; d < D; d += 32) acc += to_f32(dout[r * D + d]) * to_f32(out[r * D + d]);
    acc = warp_sum(acc);
    int64_t h = r % H, bt = r / H, t = bt % T_, b = bt / T_;
    if (lane == 0) delta[(b * H + h) * T_ + t] = acc;
  }
}

// Loads lse (as log2) and delta of rows [row0, row0 + n) of head (b, h); rows past T get
// lse = +inf so that their P is exactly zero.
template <typename T>
__device__ __forceinline__ void load_row_stats(float* slse, float* sdelta, const BwdParams<T>& p, int64_t bh,
                                               int64_t row0, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    int64_t row = row0 + i;
    bool valid = row < p.T_;
    slse[i] = valid ? p.lse[bh * p.T_ + row] * kLog2eB : INFINITY;
    sdelta[i] = valid ? p.delta[bh * p.T_ + row] : 0.f;
  }
}

// Grid (S / 64, H, B): keys [64 x, 64 x + 64) of query head y in batch z; adds dK, dV into
// the f32 accumulators of kv head y / G.
template <typename T, int D>
__global__ void __launch_bounds__(kThreadsB) flash_bwd_dkdv_kernel(BwdParams<T> p) {
  pdl_enter();
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sk = reinterpret_cast<T*>(smem_raw);                            // (64, D)
  T* sv = sk + kKeyTile * D;                                         // (64, D)
  T* sq = sv + kKeyTile * D;                                         // 2 x (32, D)
  T* sdo = sq + 2 * kQueryTile * D;                                  // 2 x (32, D)
  float* slse = reinterpret_cast<float*>(sdo + 2 * kQueryTile * D);  // 2 x 32
  float* sdelta = slse + 2 * kQueryTile;                             // 2 x 32
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, quad_row = lane / 4, quad_col = lane % 4;
  const int64_t n0 = int64_t(blockIdx.x) * kKeyTile, h = blockIdx.y, b = blockIdx.z, kvh = h / p.G;
  const int64_t ldq = p.H * D, ldk = p.KV * D, bh = b * p.H + h;
  const T* qg = p.q + (b * p.T_ * p.H + h) * D;
  const T* dog = p.dout + (b * p.T_ * p.H + h) * D;
  const uint32_t sk_a = flash::smem_addr(sk), sv_a = flash::smem_addr(sv), sq_a = flash::smem_addr(sq),
                 sdo_a = flash::smem_addr(sdo);
  constexpr uint32_t kQTileBytes = kQueryTile * D * sizeof(T);
  const flash::TileLoader<kKeyTile, D, kThreadsB> kv_loader;
  const flash::TileLoader<kQueryTile, D, kThreadsB> q_loader;
  const flash::LaneAddr<D> la(lane);

  // Query rows that can see any key of [n0, n0 + 64).
  int64_t t_begin = 0, t_end = p.T_;
  if (p.causal) {
    t_begin = max(int64_t(0), n0 - p.q_offset);
    if (p.window > 0) t_end = min(p.T_, max(int64_t(0), n0 + kKeyTile - 1 + p.window - p.q_offset));
  }
  if (n0 >= p.S) return;
  // Packed rows: no query after the last key's segment sees any key of the block.
  const int32_t* segb = p.seg ? p.seg + b * p.T_ : nullptr;
  if (segb) t_end = min(t_end, flash::segment_end(segb, min(n0 + kKeyTile, p.S) - 1, p.T_));
  if (t_end <= t_begin) return;
  const int64_t qt_begin = t_begin / kQueryTile * kQueryTile;
  const int ntiles = int((t_end - qt_begin + kQueryTile - 1) / kQueryTile);

  kv_loader.load(sk_a, p.k + (b * p.S * p.KV + kvh) * D, ldk, n0, p.S);
  kv_loader.load(sv_a, p.v + (b * p.S * p.KV + kvh) * D, ldk, n0, p.S);
  q_loader.load(sq_a, qg, ldq, qt_begin, p.T_);
  q_loader.load(sdo_a, dog, ldq, qt_begin, p.T_);
  load_row_stats(slse, sdelta, p, bh, qt_begin, kQueryTile);
  flash::cp_async_commit();

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int d = 0; d < D / 8; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[d][e] = dv[d][e] = 0.f;

  for (int it = 0; it < ntiles; ++it) {
    const int64_t qi0 = qt_begin + int64_t(it) * kQueryTile;
    const int buf = it & 1;
    if (it + 1 < ntiles) {
      const int nb = buf ^ 1;
      q_loader.load(sq_a + nb * kQTileBytes, qg, ldq, qi0 + kQueryTile, p.T_);
      q_loader.load(sdo_a + nb * kQTileBytes, dog, ldq, qi0 + kQueryTile, p.T_);
      load_row_stats(slse + nb * kQueryTile, sdelta + nb * kQueryTile, p, bh, qi0 + kQueryTile, kQueryTile);
    }
    flash::cp_async_commit();
    flash::cp_async_wait<1>();
    __syncthreads();
    const uint32_t qb = sq_a + buf * kQTileBytes, dob = sdo_a + buf * kQTileBytes;
    const float* lb = slse + buf * kQueryTile;
    const float* db = sdelta + buf * kQueryTile;

    // S^T (16 keys of this warp, 32 queries) = K Q^T and dP^T = V dO^T.
    float st[kQueryTile / 8][4], dpt[kQueryTile / 8][4];
#pragma unroll
    for (int n = 0; n < kQueryTile / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[n][e] = dpt[n][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ak[4], av[4];
      flash::ldmatrix_x4(ak, la.a(sk_a, warp * 16, kk));
      flash::ldmatrix_x4(av, la.a(sv_a, warp * 16, kk));
#pragma unroll
      for (int np = 0; np < kQueryTile / 16; ++np) {
        uint32_t r[4];
        flash::ldmatrix_x4(r, la.b(qb, np * 16, kk));
        flash::mma<T>(st[2 * np], ak, r[0], r[1]);
        flash::mma<T>(st[2 * np + 1], ak, r[2], r[3]);
        flash::ldmatrix_x4(r, la.b(dob, np * 16, kk));
        flash::mma<T>(dpt[2 * np], av, r[0], r[1]);
        flash::mma<T>(dpt[2 * np + 1], av, r[2], r[3]);
      }
    }

    // P^T = exp(S - lse) where visible; dS^T = P^T (dP^T - delta), both per query column.
    const bool full = n0 + kKeyTile <= p.S &&
                      (!p.causal || (p.q_offset + qi0 >= n0 + kKeyTile - 1 &&
                                     (p.window <= 0 || p.q_offset + qi0 + kQueryTile - 1 - n0 < p.window))) &&
                      (!segb || (qi0 + kQueryTile <= p.T_ && segb[n0] == segb[qi0 + kQueryTile - 1]));
#pragma unroll
    for (int n = 0; n < kQueryTile / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int ql = n * 8 + quad_col * 2 + (e % 2);
        float x = st[n][e] * p.scale_log2 - lb[ql];
        if (!full) {
          int64_t key = n0 + warp * 16 + quad_row + (e / 2) * 8, qpos = p.q_offset + qi0 + ql;
          if (key >= p.S || !flash::visible(p.causal, p.window, qpos, key) ||
              flash::other_segment(segb, qi0 + ql, key, p.T_))
            x = -INFINITY;
        }
        float pv = flash::exp2_approx(x);
        st[n][e] = pv;
        dpt[n][e] = pv * (dpt[n][e] - db[ql]);
      }
    }

    // dV += P^T dO and dK += dS^T Q over this tile's 32 queries.
#pragma unroll
    for (int kq = 0; kq < kQueryTile / 16; ++kq) {
      uint32_t ap[4] = {flash::pack2<T>(st[2 * kq][0], st[2 * kq][1]), flash::pack2<T>(st[2 * kq][2], st[2 * kq][3]),
                        flash::pack2<T>(st[2 * kq + 1][0], st[2 * kq + 1][1]),
                        flash::pack2<T>(st[2 * kq + 1][2], st[2 * kq + 1][3])};
      uint32_t as[4] = {flash::pack2<T>(dpt[2 * kq][0], dpt[2 * kq][1]),
                        flash::pack2<T>(dpt[2 * kq][2], dpt[2 * kq][3]),
                        flash::pack2<T>(dpt[2 * kq + 1][0], dpt[2 * kq + 1][1]),
                        flash::pack2<T>(dpt[2 * kq + 1][2], dpt[2 * kq + 1][3])};
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t r[4];
        flash::ldmatrix_x4_trans(r, la.t(dob, kq * 16, dp));
        flash::mma<T>(dv[2 * dp], ap, r[0], r[1]);
        flash::mma<T>(dv[2 * dp + 1], ap, r[2], r[3]);
        flash::ldmatrix_x4_trans(r, la.t(qb, kq * 16, dp));
        flash::mma<T>(dk[2 * dp], as, r[0], r[1]);
        flash::mma<T>(dk[2 * dp + 1], as, r[2], r[3]);
      }
    }
    __syncthreads();  // the next iteration's loads overwrite the buffer just read
  }
  flash::cp_async_wait<0>();

  // Add into the kv head's f32 accumulators (the group's query heads meet there).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    int64_t key = n0 + warp * 16 + quad_row + r * 8;
    if (key >= p.S) continue;
    int64_t base = ((b * p.S + key) * p.KV + kvh) * D + quad_col * 2;
#pragma unroll
    for (int d = 0; d < D / 8; ++d) {
      atomicAdd(p.dk_acc + base + d * 8, dk[d][2 * r] * p.scale);
      atomicAdd(p.dk_acc + base + d * 8 + 1, dk[d][2 * r + 1] * p.scale);
      atomicAdd(p.dv_acc + base + d * 8, dv[d][2 * r]);
      atomicAdd(p.dv_acc + base + d * 8 + 1, dv[d][2 * r + 1]);
    }
  }
}

// Grid (T / 64, H, B): dq rows of 64 queries of head y in batch z, written in T.
template <typename T, int D>
__global__ void __launch_bounds__(kThreadsB) flash_bwd_dq_kernel(BwdParams<T> p) {
  pdl_enter();
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sq = reinterpret_cast<T*>(smem_raw);  // (64, D)
  T* sdo = sq + kRowTile * D;              // (64, D)
  T* sk = sdo + kRowTile * D;              // 2 x (64, D)
  T* sv = sk + 2 * kKeyStep * D;           // 2 x (64, D)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, quad_row = lane / 4, quad_col = lane % 4;
  const int64_t m0 = int64_t(gridDim.x - 1 - blockIdx.x) * kRowTile;
  const int64_t h = blockIdx.y, b = blockIdx.z, kvh = h / p.G, bh = b * p.H + h;
  const int64_t ldq = p.H * D, ldk = p.KV * D;
  const T* kg = p.k + (b * p.S * p.KV + kvh) * D;
  const T* vg = p.v + (b * p.S * p.KV + kvh) * D;
  const uint32_t sq_a = flash::smem_addr(sq), sdo_a = flash::smem_addr(sdo), sk_a = flash::smem_addr(sk),
                 sv_a = flash::smem_addr(sv);
  constexpr uint32_t kKTileBytes = kKeyStep * D * sizeof(T);
  const flash::TileLoader<kRowTile, D, kThreadsB> q_loader;
  const flash::TileLoader<kKeyStep, D, kThreadsB> kv_loader;
  const flash::LaneAddr<D> la(lane);

  const int64_t qfirst = p.q_offset + m0, qlast = p.q_offset + m0 + kRowTile - 1;
  int64_t s_begin = 0, s_end = p.S;
  if (p.causal) {
    s_end = min(p.S, max(int64_t(0), qlast + 1));
    if (p.window > 0) s_begin = min(p.S, max(int64_t(0), qfirst - p.window + 1));
  }
  const int32_t* segb = p.seg ? p.seg + b * p.T_ : nullptr;  // packed rows, as in the forward
  if (segb) s_begin = max(s_begin, flash::segment_begin(segb, m0));
  const int64_t n_begin = s_begin / kKeyStep * kKeyStep;
  const int nblocks = s_end > s_begin ? int((s_end - n_begin + kKeyStep - 1) / kKeyStep) : 0;

  q_loader.load(sq_a, p.q + (b * p.T_ * p.H + h) * D, ldq, m0, p.T_);
  q_loader.load(sdo_a, p.dout + (b * p.T_ * p.H + h) * D, ldq, m0, p.T_);
  if (nblocks > 0) {
    kv_loader.load(sk_a, kg, ldk, n_begin, p.S);
    kv_loader.load(sv_a, vg, ldk, n_begin, p.S);
  }
  flash::cp_async_commit();

  float lse2[2], dl[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    int64_t row = m0 + warp * 16 + quad_row + r * 8;
    bool valid = row < p.T_;
    lse2[r] = valid ? p.lse[bh * p.T_ + row] * kLog2eB : INFINITY;
    dl[r] = valid ? p.delta[bh * p.T_ + row] : 0.f;
  }
  float dq[D / 8][4];
#pragma unroll
  for (int d = 0; d < D / 8; ++d) dq[d][0] = dq[d][1] = dq[d][2] = dq[d][3] = 0.f;

  for (int j = 0; j < nblocks; ++j) {
    const int64_t n0 = n_begin + int64_t(j) * kKeyStep;
    if (j + 1 < nblocks) {
      kv_loader.load(sk_a + ((j + 1) & 1) * kKTileBytes, kg, ldk, n0 + kKeyStep, p.S);
      kv_loader.load(sv_a + ((j + 1) & 1) * kKTileBytes, vg, ldk, n0 + kKeyStep, p.S);
    }
    flash::cp_async_commit();
    flash::cp_async_wait<1>();
    __syncthreads();
    const uint32_t kb = sk_a + (j & 1) * kKTileBytes, vb = sv_a + (j & 1) * kKTileBytes;

    // S = Q K^T and dP = dO V^T for this warp's 16 rows and 64 keys.
    float s[kKeyStep / 8][4], dp[kKeyStep / 8][4];
#pragma unroll
    for (int n = 0; n < kKeyStep / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t aq[4], ado[4];
      flash::ldmatrix_x4(aq, la.a(sq_a, warp * 16, kk));
      flash::ldmatrix_x4(ado, la.a(sdo_a, warp * 16, kk));
#pragma unroll
      for (int np = 0; np < kKeyStep / 16; ++np) {
        uint32_t r[4];
        flash::ldmatrix_x4(r, la.b(kb, np * 16, kk));
        flash::mma<T>(s[2 * np], aq, r[0], r[1]);
        flash::mma<T>(s[2 * np + 1], aq, r[2], r[3]);
        flash::ldmatrix_x4(r, la.b(vb, np * 16, kk));
        flash::mma<T>(dp[2 * np], ado, r[0], r[1]);
        flash::mma<T>(dp[2 * np + 1], ado, r[2], r[3]);
      }
    }

    const bool full = n0 + kKeyStep <= p.S &&
                      (!p.causal || (n0 + kKeyStep - 1 <= qfirst && (p.window <= 0 || qlast - n0 < p.window))) &&
                      (!segb || segb[n0] == segb[min(m0 + kRowTile, p.T_) - 1]);
#pragma unroll
    for (int n = 0; n < kKeyStep / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[n][e] * p.scale_log2 - lse2[e / 2];
        if (!full) {
          int64_t qpos = qfirst + warp * 16 + quad_row + (e / 2) * 8, key = n0 + n * 8 + quad_col * 2 + (e % 2);
          if (key >= p.S || !flash::visible(p.causal, p.window, qpos, key) ||
              flash::other_segment(segb, qpos - p.q_offset, key, p.T_))
            x = -INFINITY;
        }
        float pv = flash::exp2_approx(x);
        s[n][e] = pv * (dp[n][e] - dl[e / 2]);  // dS
      }
    }

    // dQ += dS K
#pragma unroll
    for (int kk = 0; kk < kKeyStep / 16; ++kk) {
      uint32_t a[4] = {flash::pack2<T>(s[2 * kk][0], s[2 * kk][1]), flash::pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                       flash::pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                       flash::pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp2 = 0; dp2 < D / 16; ++dp2) {
        uint32_t r[4];
        flash::ldmatrix_x4_trans(r, la.t(kb, kk * 16, dp2));
        flash::mma<T>(dq[2 * dp2], a, r[0], r[1]);
        flash::mma<T>(dq[2 * dp2 + 1], a, r[2], r[3]);
      }
    }
    __syncthreads();
  }
  flash::cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    int64_t row = m0 + warp * 16 + quad_row + r * 8;
    if (row >= p.T_) continue;
    T* out = p.dq + ((b * p.T_ + row) * p.H + h) * D + quad_col * 2;
#pragma unroll
    for (int d = 0; d < D / 8; ++d)
      *reinterpret_cast<uint32_t*>(out + d * 8) = flash::pack2<T>(dq[d][2 * r] * p.scale, dq[d][2 * r + 1] * p.scale);
  }
}

template <typename T, int D>
void launch_flash_bwd(const AttentionBackwardArgs& ab) {
  const AttentionArgs& a = ab.fwd;
  const int64_t kv_elems = a.B * a.S * a.n_kv_head * a.head_dim;
  const int64_t rows = a.B * a.T * a.n_head;
  DeviceScratch delta(size_t(rows) * 4), acc(size_t(2 * kv_elems) * 4);
  CudaBackend& be = cuda_impl();
  launch("attention_backward (flash)", flash_delta_kernel<T>, grid_for(rows * 32), kThreads, 0,
         static_cast<const T*>(ab.dout), static_cast<const T*>(a.out), delta.as<float>(), a.B, a.T, a.n_head,
         a.head_dim);
  LMT_CUDA_CHECK(cudaMemsetAsync(acc.as<float>(), 0, size_t(2 * kv_elems) * 4, be.stream()));
  BwdParams<T> p{static_cast<const T*>(a.q),
                 static_cast<const T*>(a.k),
                 static_cast<const T*>(a.v),
                 static_cast<const T*>(ab.dout),
                 a.lse,
                 delta.as<const float>(),
                 acc.as<float>(),
                 acc.as<float>() + kv_elems,
                 static_cast<T*>(ab.dq),
                 a.T,
                 a.S,
                 a.n_head,
                 a.n_kv_head,
                 a.n_head / a.n_kv_head,
                 a.q_offset,
                 a.window,
                 a.segment,
                 a.causal,
                 a.scale,
                 a.scale * kLog2eB};
  constexpr size_t smem_kv = size_t(2 * kKeyTile + 4 * kQueryTile) * D * sizeof(T) + 4 * kQueryTile * sizeof(float);
  constexpr size_t smem_q = size_t(2 * kRowTile + 4 * kKeyStep) * D * sizeof(T);
  static const bool attr_set = [] {
    LMT_CUDA_CHECK(
        cudaFuncSetAttribute(flash_bwd_dkdv_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_kv)));
    LMT_CUDA_CHECK(
        cudaFuncSetAttribute(flash_bwd_dq_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_q)));
    return true;
  }();
  (void)attr_set;
  dim3 grid_kv(unsigned((a.S + kKeyTile - 1) / kKeyTile), unsigned(a.n_head), unsigned(a.B));
  launch("attention_backward (flash dk dv)", flash_bwd_dkdv_kernel<T, D>, grid_kv, kThreadsB, smem_kv, p);
  dim3 grid_q(unsigned((a.T + kRowTile - 1) / kRowTile), unsigned(a.n_head), unsigned(a.B));
  launch("attention_backward (flash dq)", flash_bwd_dq_kernel<T, D>, grid_q, kThreadsB, smem_q, p);
  be.cast(acc.as<const float>(), DType::f32, ab.dk, a.dtype, kv_elems);
  be.cast(acc.as<const float>() + kv_elems, DType::f32, ab.dv, a.dtype, kv_elems);
}

}  // namespace

bool flash_attention_backward(const AttentionBackwardArgs& ab) {
  const AttentionArgs& a = ab.fwd;
  bool half = a.dtype == DType::bf16 || a.dtype == DType::f16;
  if (!flash_enabled() || !half || (a.head_dim != 64 && a.head_dim != 128)) return false;
  for (const void* ptr : {a.q, a.k, a.v, ab.dout, static_cast<const void*>(ab.dq)})
    if (!aligned16(ptr)) return false;
  if (a.n_head > 65535 || a.B > 65535 || !(a.scale > 0.f)) return false;
  if (a.dtype == DType::bf16) {
    if (a.head_dim == 64)
      launch_flash_bwd<bf16, 64>(ab);
    else
      launch_flash_bwd<bf16, 128>(ab);
  } else {
    if (a.head_dim == 64)
      launch_flash_bwd<f16, 64>(ab);
    else
      launch_flash_bwd<f16, 128>(ab);
  }
  return true;
}

}  // namespace lmtune
