// AdamW on f32 parameters, gradients and moments, exactly the formula of backend.h, in one
// pass with 16-byte accesses where aligned.
#include "backend/cuda/cuda_common.cuh"

namespace lmtune {

namespace {

struct AdamW {
  float lr, b1, b2, eps, wd, bc1, bc2;
  __device__ __forceinline__ void step(float& p, float g, float& m, float& v) const {
    m = b1 * m + (1.f - b1) * g;
    v = b2 * v + (1.f - b2) * g * g;
    p -= lr * (m / bc1 / (sqrtf(v / bc2) + eps) + wd * p);
  }
};

// p, g, m, v f32 (n).
template <int V>
__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t n, AdamW opt) {
  pdl_enter();
  int64_t nv = n / V;
  for (int64_t i = global_tid(); i < nv; i += grid_stride()) {
    Pack<float, V> pp = load_pack<V>(p + i * V), pg = load_pack<V>(g + i * V), pm = load_pack<V>(m + i * V),
                   pv = load_pack<V>(v + i * V);
#pragma unroll
    for (int j = 0; j < V; ++j) opt.step(pp.v[j], pg.v[j], pm.v[j], pv.v[j]);
    store_pack<V>(p + i * V, pp);
    store_pack<V>(m + i * V, pm);
    store_pack<V>(v + i * V, pv);
  }
  for (int64_t i = nv * V + global_tid(); i < n; i += grid_stride()) opt.step(p[i], g[i], m[i], v[i]);
}

}  // namespace

void CudaBackend::adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float b1, float b2,
                        float eps, float wd, float bc1, float bc2) {
  AdamW opt{lr, b1, b2, eps, wd, bc1, bc2};
  if (aligned16(p) && aligned16(g) && aligned16(m) && aligned16(v))
    launch("adamw", adamw_kernel<4>, grid_for((n + 3) / 4), kThreads, 0, p, g, m, v, n, opt);
  else
    launch("adamw", adamw_kernel<1>, grid_for(n), kThreads, 0, p, g, m, v, n, opt);
}

}  // namespace lmtune
