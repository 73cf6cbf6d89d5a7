// CPU matrix products through OpenBLAS's row-major sgemm, one call per batch entry.
#include <cblas.h>

#include "backend/cpu/cpu_backend.h"

namespace lmtune {

void CpuBackend::gemm(const GemmArgs& g) {
  cpu_require_f32(g.dtype, "gemm");
  const float* a = static_cast<const float*>(g.a);
  const float* b = static_cast<const float*>(g.b);
  float* c = static_cast<float*>(g.c);
  for (int64_t i = 0; i < g.batch; ++i) {
    if (g.M == 1) {
      // One row (decode): sgemm does not route M = 1 to OpenBLAS's GEMV kernel, so call it.
      // y (N) = alpha * op(B)^T x + beta * y, with op(B) (K, N) stored row-major.
      cblas_sgemv(CblasRowMajor, g.trans_b ? CblasNoTrans : CblasTrans, g.trans_b ? int(g.N) : int(g.K),
                  g.trans_b ? int(g.K) : int(g.N), g.alpha, b + i * g.stride_b, int(g.ldb), a + i * g.stride_a,
                  g.trans_a ? int(g.lda) : 1, g.beta, c + i * g.stride_c, 1);
      continue;
    }
    cblas_sgemm(CblasRowMajor, g.trans_a ? CblasTrans : CblasNoTrans, g.trans_b ? CblasTrans : CblasNoTrans, int(g.M),
                int(g.N), int(g.K), g.alpha, a + i * g.stride_a, int(g.lda), b + i * g.stride_b, int(g.ldb), g.beta,
                c + i * g.stride_c, int(g.ldc));
  }
}

}  // namespace lmtune
