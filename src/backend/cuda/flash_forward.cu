// Fused attention forward (flash-attention 2 style) for bf16/f16 with head_dim 64 or 128: a
// block of 4 warps owns 64 query rows of one head, streams 64-key tiles of K and V through
// double-buffered shared memory and keeps an online softmax in registers; S and P never reach
// device memory. Writes out and lse exactly as the gemm path in attention.cu does.
#include "backend/cuda/flash_common.cuh"
#include "core/runtime_config.h"

namespace lmtune {

namespace {

constexpr int kRows = 64, kKeys = 64, kThreadsFlash = 128;  // 4 warps of 16 rows
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

template <typename T>
struct FwdParams {
  const T* q;                                 // (B, T, H, D)
  const T* k;                                 // (B, S, KV, D)
  const T* v;                                 // (B, S, KV, D)
  T* o;                                       // (B, T, H, D)
  float* lse;                                 // f32 (B, H, T), natural log
  int64_t T_, S, H, KV, G, q_offset, window;  // G = H / KV query heads per kv head
  const int32_t* q_offset_at;                 // device i32 added to q_offset, or null
  const int32_t* seg;                         // packed rows: i32 (B, T) segment ids, or null
  bool causal;
  float scale_log2;  // scale * log2(e): the exponent is taken in the log2 domain
};

// Two blocks per SM at D = 128 (registers). Tried and slower on an H100: capping registers for
// a third block (spills), parking Q in a K buffer (serializes the first tile), 8 warps.
template <typename T, int D>
__global__ void __launch_bounds__(kThreadsFlash) flash_fwd_kernel(FwdParams<T> p) {
  pdl_enter();
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sq = reinterpret_cast<T*>(smem_raw);  // (64, D)
  T* sk = sq + kRows * D;                  // 2 x (64, D)
  T* sv = sk + 2 * kKeys * D;              // 2 x (64, D)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, quad_row = lane / 4, quad_col = lane % 4;
  const int64_t m0 = int64_t(gridDim.x - 1 - blockIdx.x) * kRows;  // the longest rows start first
  const int64_t h = blockIdx.y, b = blockIdx.z, kvh = h / p.G;
  const int64_t ldq = p.H * D, ldk = p.KV * D;
  const T* qg = p.q + (b * p.T_ * p.H + h) * D;
  const T* kg = p.k + (b * p.S * p.KV + kvh) * D;
  const T* vg = p.v + (b * p.S * p.KV + kvh) * D;
  const uint32_t sq_a = flash::smem_addr(sq), sk_a = flash::smem_addr(sk), sv_a = flash::smem_addr(sv);
  constexpr uint32_t kTileBytes = kKeys * D * sizeof(T);
  const flash::TileLoader<kRows, D, kThreadsFlash> q_loader;
  const flash::TileLoader<kKeys, D, kThreadsFlash> kv_loader;
  const flash::LaneAddr<D> la(lane);

  // Keys any row of this block may see: [n_begin, s_end), in tiles of 64. qlast is the last
  // real row's position, so a decode step (T 1) over a whole cache reads no key past it.
  const int64_t q_offset = p.q_offset + (p.q_offset_at ? int64_t(*p.q_offset_at) : 0);
  const int64_t qfirst = q_offset + m0, qlast = q_offset + min(m0 + kRows, p.T_) - 1;
  int64_t s_begin = 0, s_end = p.S;
  if (p.causal) {
    s_end = min(p.S, max(int64_t(0), qlast + 1));
    if (p.window > 0) s_begin = min(p.S, max(int64_t(0), qfirst - p.window + 1));
  }
  // Packed rows: no key before the first row's segment is visible to any row of the block.
  const int32_t* segb = p.seg ? p.seg + b * p.T_ : nullptr;
  if (segb) s_begin = max(s_begin, flash::segment_begin(segb, m0));
  const int64_t n_begin = s_begin / kKeys * kKeys;
  const int nblocks = s_end > s_begin ? int((s_end - n_begin + kKeys - 1) / kKeys) : 0;

  q_loader.load(sq_a, qg, ldq, m0, p.T_);
  if (nblocks > 0) {
    kv_loader.load(sk_a, kg, ldk, n_begin, s_end);
    kv_loader.load(sv_a, vg, ldk, n_begin, s_end);
  }
  flash::cp_async_commit();

  float o[D / 8][4];
#pragma unroll
  for (int d = 0; d < D / 8; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  uint32_t qf[D / 16][4];

  for (int j = 0; j < nblocks; ++j) {
    const int64_t n0 = n_begin + int64_t(j) * kKeys;
    if (j + 1 < nblocks) {
      kv_loader.load(sk_a + ((j + 1) & 1) * kTileBytes, kg, ldk, n0 + kKeys, s_end);
      kv_loader.load(sv_a + ((j + 1) & 1) * kTileBytes, vg, ldk, n0 + kKeys, s_end);
    }
    flash::cp_async_commit();
    flash::cp_async_wait<1>();
    __syncthreads();
    if (j == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) flash::ldmatrix_x4(qf[kk], la.a(sq_a, warp * 16, kk));
    }
    const uint32_t kb = sk_a + (j & 1) * kTileBytes, vb = sv_a + (j & 1) * kTileBytes;

    // S (16 rows of this warp, 64 keys) = Q K^T
    float s[kKeys / 8][4];
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < kKeys / 16; ++np) {
        uint32_t r[4];
        flash::ldmatrix_x4(r, la.b(kb, np * 16, kk));
        flash::mma<T>(s[2 * np], qf[kk], r[0], r[1]);
        flash::mma<T>(s[2 * np + 1], qf[kk], r[2], r[3]);
      }
    }

    // Mask only tiles that straddle a boundary; scores stay unscaled until the exponent.
    const bool full = n0 + kKeys <= p.S &&
                      (!p.causal || (n0 + kKeys - 1 <= qfirst && (p.window <= 0 || qlast - n0 < p.window))) &&
                      (!segb || segb[n0] == segb[min(m0 + kRows, p.T_) - 1]);  // ids do not decrease: one segment
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (!full) {
          int64_t qpos = qfirst + warp * 16 + quad_row + (e / 2) * 8, key = n0 + n * 8 + quad_col * 2 + (e % 2);
          if (key >= p.S || !flash::visible(p.causal, p.window, qpos, key) ||
              flash::other_segment(segb, qpos - q_offset, key, p.T_))
            s[n][e] = -INFINITY;
        }
      }
    }

    // Online softmax per row (this thread holds rows quad_row and quad_row + 8).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      float m_new = fmaxf(row_max[r], mx);
      // In the log2 domain; a row with nothing visible yet keeps a zero offset.
      float m_use = m_new == -INFINITY ? 0.f : m_new * p.scale_log2;
      float alpha = flash::exp2_approx(row_max[r] * p.scale_log2 - m_use);
      row_max[r] = m_new;
      row_sum[r] *= alpha;
#pragma unroll
      for (int d = 0; d < D / 8; ++d) {
        o[d][2 * r] *= alpha;
        o[d][2 * r + 1] *= alpha;
      }
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) {
        s[n][2 * r] = flash::exp2_approx(fmaf(s[n][2 * r], p.scale_log2, -m_use));
        s[n][2 * r + 1] = flash::exp2_approx(fmaf(s[n][2 * r + 1], p.scale_log2, -m_use));
        row_sum[r] += s[n][2 * r] + s[n][2 * r + 1];
      }
    }

    // O += P V, P from the score registers (the accumulator layout is the A fragment layout).
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      uint32_t a[4] = {flash::pack2<T>(s[2 * kk][0], s[2 * kk][1]), flash::pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                       flash::pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                       flash::pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t r[4];
        flash::ldmatrix_x4_trans(r, la.t(vb, kk * 16, dp));
        flash::mma<T>(o[2 * dp], a, r[0], r[1]);
        flash::mma<T>(o[2 * dp + 1], a, r[2], r[3]);
      }
    }
    __syncthreads();  // the next iteration's loads overwrite the buffer just read
  }
  flash::cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = row_sum[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    float inv = l > 0.f ? 1.f / l : 0.f;
    int64_t row = m0 + warp * 16 + quad_row + r * 8;
    if (row < p.T_) {
      T* orow = p.o + ((b * p.T_ + row) * p.H + h) * D + quad_col * 2;
#pragma unroll
      for (int d = 0; d < D / 8; ++d)
        *reinterpret_cast<uint32_t*>(orow + d * 8) = flash::pack2<T>(o[d][2 * r] * inv, o[d][2 * r + 1] * inv);
      if (quad_col == 0)
        p.lse[(b * p.H + h) * p.T_ + row] = l > 0.f ? (row_max[r] * p.scale_log2 + log2f(l)) * kLn2 : -INFINITY;
    }
  }
}

template <typename T, int D>
void launch_flash_fwd(const AttentionArgs& a) {
  FwdParams<T> p{static_cast<const T*>(a.q),
                 static_cast<const T*>(a.k),
                 static_cast<const T*>(a.v),
                 static_cast<T*>(a.out),
                 a.lse,
                 a.T,
                 a.S,
                 a.n_head,
                 a.n_kv_head,
                 a.n_head / a.n_kv_head,
                 a.q_offset,
                 a.window,
                 a.q_offset_at,
                 a.segment,
                 a.causal,
                 a.scale * kLog2e};
  constexpr size_t smem = size_t(kRows + 4 * kKeys) * D * sizeof(T);
  static const bool attr_set = [] {
    LMT_CUDA_CHECK(
        cudaFuncSetAttribute(flash_fwd_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    return true;
  }();
  (void)attr_set;
  dim3 grid(unsigned((a.T + kRows - 1) / kRows), unsigned(a.n_head), unsigned(a.B));
  launch("attention (flash)", flash_fwd_kernel<T, D>, grid, kThreadsFlash, smem, p);
}

}  // namespace

bool flash_enabled() { return runtime_config().cuda_flash; }

bool flash_attention_forward(const AttentionArgs& a) {
  bool half = a.dtype == DType::bf16 || a.dtype == DType::f16;
  if (!flash_enabled() || !half || (a.head_dim != 64 && a.head_dim != 128)) return false;
  if (!aligned16(a.q) || !aligned16(a.k) || !aligned16(a.v) || !aligned16(a.out)) return false;
  if (a.n_head > 65535 || a.B > 65535 || !(a.scale > 0.f)) return false;
  if (a.dtype == DType::bf16) {
    if (a.head_dim == 64)
      launch_flash_fwd<bf16, 64>(a);
    else
      launch_flash_fwd<bf16, 128>(a);
  } else {
    if (a.head_dim == 64)
      launch_flash_fwd<f16, 64>(a);
    else
      launch_flash_fwd<f16, 128>(a);
  }
  return true;
}

}  // namespace lmtune
