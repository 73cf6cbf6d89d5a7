// Attention for a few query rows over a cache whose length is known only at run time
// (AttentionArgs::q_offset_at): the decode step of a CUDA graph where flash_forward.cu does not
// apply (f32, head_dim other than 64 / 128). One block per (head, query row, batch row); its 4
// warps take every 4th visible key, each lane holding up to P = ceil(head_dim / 32) dimensions, with an online
// softmax per warp merged through shared memory at the end. Writes out and lse like the others.
#include "backend/cuda/cuda_common.cuh"

namespace lmtune {

namespace {

constexpr int kWarps = 4, kMaxPerLane = 8;  // head_dim <= 256

template <typename T, int P>  // P = ceil(head_dim / 32) values per lane
__global__ void __launch_bounds__(kWarps * 32) decode_attention_kernel(AttentionArgs a) {
  pdl_enter();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t h = blockIdx.x, t = blockIdx.y, b = blockIdx.z, D = a.head_dim;
  const int64_t kvh = h / (a.n_head / a.n_kv_head), ldk = a.n_kv_head * D;
  const int64_t qpos = a.q_offset + (a.q_offset_at ? int64_t(*a.q_offset_at) : 0) + t;
  int64_t s_begin = 0, s_end = a.S;
  if (a.causal) {
    s_end = min(a.S, max(int64_t(0), qpos + 1));
    if (a.window > 0) s_begin = min(s_end, max(int64_t(0), qpos - a.window + 1));
  }
  const T* q = static_cast<const T*>(a.q) + ((b * a.T + t) * a.n_head + h) * D;
  const T* k = static_cast<const T*>(a.k) + b * a.S * ldk + kvh * D;
  const T* v = static_cast<const T*>(a.v) + b * a.S * ldk + kvh * D;
  float qr[P], acc[P];
#pragma unroll
  for (int i = 0; i < P; ++i) {
    const bool in = lane + 32 * i < D;
    qr[i] = in ? to_f32(q[lane + 32 * i]) * a.scale : 0.f;
    acc[i] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int64_t s = s_begin + warp; s < s_end; s += kWarps) {
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < P; ++i)
      if (lane + 32 * i < D) dot += qr[i] * to_f32(k[s * ldk + lane + 32 * i]);
    dot = warp_sum(dot);
    if (a.softcap > 0.f) dot = a.softcap * tanhf(dot / a.softcap);  // gemma2's soft-cap
    float m_new = fmaxf(m, dot), corr = __expf(m - m_new), p = __expf(dot - m_new);
    l = l * corr + p;
#pragma unroll
    for (int i = 0; i < P; ++i)
      if (lane + 32 * i < D) acc[i] = acc[i] * corr + p * to_f32(v[s * ldk + lane + 32 * i]);
    m = m_new;
  }
  // Merge the warps: each scales its partial sums to the block's maximum.
  __shared__ float sm[kWarps], sl[kWarps], sacc[kWarps][kMaxPerLane * 32];
  if (lane == 0) {
    sm[warp] = m;
    sl[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < P; ++i) sacc[warp][lane + 32 * i] = acc[i];  // sized for P <= kMaxPerLane
  __syncthreads();
  if (warp != 0) return;
  float M = -INFINITY;
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm[w]);
  float L = 0.f, f[kWarps];
  for (int w = 0; w < kWarps; ++w) {
    f[w] = sm[w] == -INFINITY ? 0.f : __expf(sm[w] - M);
    L += sl[w] * f[w];
  }
  T* out = static_cast<T*>(a.out) + ((b * a.T + t) * a.n_head + h) * D;
#pragma unroll
  for (int i = 0; i < P; ++i) {
    if (lane + 32 * i >= D) continue;
    float o = 0.f;
    for (int w = 0; w < kWarps; ++w) o += sacc[w][lane + 32 * i] * f[w];
    out[lane + 32 * i] = from_f32<T>(L > 0.f ? o / L : 0.f);
  }
  if (lane == 0) a.lse[(b * a.n_head + h) * a.T + t] = L > 0.f ? M + logf(L) : -INFINITY;
}

template <typename T, int P>
void launch_decode(const AttentionArgs& a) {
  launch("attention (decode)", decode_attention_kernel<T, P>, dim3(unsigned(a.n_head), unsigned(a.T), unsigned(a.B)),
         dim3(kWarps * 32), 0, a);
}

}  // namespace

void decode_attention(const AttentionArgs& a) {
  LMT_CHECK(a.head_dim >= 1 && a.head_dim <= 32 * kMaxPerLane,
            "[attention] cuda: a run-time query offset needs head_dim up to 256, got ", a.head_dim);
  LMT_CHECK(a.T <= 65535 && a.B <= 65535 && a.n_head <= 65535, "[attention] cuda: decode grid too large (T ", a.T,
            ", B ", a.B, ", heads ", a.n_head, ")");
  dispatch_float(a.dtype, "attention", [&](auto tag) {
    using T = typename decltype(tag)::type;
    switch ((a.head_dim + 31) / 32) {
      case 1: return launch_decode<T, 1>(a);
      case 2: return launch_decode<T, 2>(a);
      case 3: return launch_decode<T, 3>(a);
      case 4: return launch_decode<T, 4>(a);
      case 5: return launch_decode<T, 5>(a);
      case 6: return launch_decode<T, 6>(a);
      case 7: return launch_decode<T, 7>(a);
      default: return launch_decode<T, 8>(a);
    }
  });
}

}  // namespace lmtune
