// CPU matrix products through OpenBLAS's row-major sgemm, one call per batch entry.
#include <cblas.h>

#include <algorithm>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/parallel.h"
#include "backend/cpu/profile.h"

namespace lmtune {

namespace {

// A product with one side of at most 32 (LoRA's rank-r products: x A, (x A) B and their
// gradients) spends more in OpenBLAS's thread hand-off and packing than in arithmetic when
// OpenBLAS threads it; instead the larger of M and N is cut in fixed halves over the pool, each
// piece a single-threaded sgemm. Every element of C is the same K-long sum either way, so the
// result does not depend on the split.
bool skinny(const GemmArgs& g) {
  return std::min({g.M, g.N, g.K}) <= 32 && std::max(g.M, g.N) >= 64 && g.M * g.N * g.K >= (int64_t(1) << 17);
}

void sgemm(const GemmArgs& g, const float* a, const float* b, float* c, int64_t M, int64_t N) {
  cblas_sgemm(CblasRowMajor, g.trans_a ? CblasTrans : CblasNoTrans, g.trans_b ? CblasTrans : CblasNoTrans, int(M),
              int(N), int(g.K), g.alpha, a, int(g.lda), b, int(g.ldb), g.beta, c, int(g.ldc));
}

void skinny_gemm(const GemmArgs& g, const float* a, const float* b, float* c) {
  cpu::BlasOneThread one;
  if (g.M >= g.N) {  // rows of C (and of op(A))
    cpu::parallel_rows(g.M, 2, [&](int64_t i0, int64_t i1) {
      sgemm(g, a + (g.trans_a ? i0 : i0 * g.lda), b, c + i0 * g.ldc, i1 - i0, g.N);
    });
  } else {  // columns of C (and of op(B))
    cpu::parallel_rows(
        g.N, 2, [&](int64_t j0, int64_t j1) { sgemm(g, a, b + (g.trans_b ? j0 * g.ldb : j0), c + j0, g.M, j1 - j0); });
  }
}

}  // namespace

void CpuBackend::gemm(const GemmArgs& g) {
  // The LoRA products (one side of rank r) apart from the dense ones.
  LMT_CPU_PROFILE(std::min({g.M, g.N, g.K}) <= 32 ? "gemm, a side <= 32" : "gemm");
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
    if (skinny(g)) {
      skinny_gemm(g, a + i * g.stride_a, b + i * g.stride_b, c + i * g.stride_c);
      continue;
    }
    sgemm(g, a + i * g.stride_a, b + i * g.stride_b, c + i * g.stride_c, g.M, g.N);
  }
}

}  // namespace lmtune
