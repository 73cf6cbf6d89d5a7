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
    cblas_sgemm(CblasRowMajor, g.trans_a ? CblasTrans : CblasNoTrans, g.trans_b ? CblasTrans : CblasNoTrans,
                int(g.M), int(g.N), int(g.K), g.alpha, a + i * g.stride_a, int(g.lda), b + i * g.stride_b,
                int(g.ldb), g.beta, c + i * g.stride_c, int(g.ldc));
  }
}

}  // namespace lmtune
