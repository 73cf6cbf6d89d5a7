// CPU matrix products through OpenBLAS's row-major sgemm / sgemv, one call per batch entry. OpenBLAS
// runs single-threaded (parallel.h's threads()): a product is cut into fixed pieces over the pool's
// threads instead, by rows of C when M >= N, else by columns. Every element of C is the same
// K-long sum on any split, so the result does not depend on the thread count. (OpenBLAS's own
// threading also hands off badly for LoRA's rank-r products, and its threads spinning after each
// call took the cores from the pool's kernels in between.)
#include <cblas.h>

#include <algorithm>
#include <string>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/parallel.h"
#include "backend/cpu/profile.h"

namespace lmtune {

namespace {

void sgemm(const GemmArgs& g, const float* a, const float* b, float* c, int64_t M, int64_t N) {
  cblas_sgemm(CblasRowMajor, g.trans_a ? CblasTrans : CblasNoTrans, g.trans_b ? CblasTrans : CblasNoTrans, int(M),
              int(N), int(g.K), g.alpha, a, int(g.lda), b, int(g.ldb), g.beta, c, int(g.ldc));
}

// One row (decode): sgemm does not route M = 1 to OpenBLAS's GEMV kernel, so call it, on outputs
// [j0, j1). y (N) = alpha * op(B)^T x + beta * y, with op(B) (K, N) stored row-major.
void sgemv(const GemmArgs& g, const float* a, const float* b, float* c, int64_t j0, int64_t j1) {
  if (g.trans_b)  // B stored (N, K): rows j0..j1
    cblas_sgemv(CblasRowMajor, CblasNoTrans, int(j1 - j0), int(g.K), g.alpha, b + j0 * g.ldb, int(g.ldb), a,
                g.trans_a ? int(g.lda) : 1, g.beta, c + j0, 1);
  else  // B stored (K, N): columns j0..j1
    cblas_sgemv(CblasRowMajor, CblasTrans, int(g.K), int(j1 - j0), g.alpha, b + j0, int(g.ldb), a,
                g.trans_a ? int(g.lda) : 1, g.beta, c + j0, 1);
}

void product(const GemmArgs& g, const float* a, const float* b, float* c) {
  if (g.M == 1)
    return cpu::parallel_rows(g.N, g.N * g.K >> 15, [&](int64_t j0, int64_t j1) { sgemv(g, a, b, c, j0, j1); });
  const int64_t work = g.M * g.N * g.K >> 17;
  // A dense product in 2 pieces a thread, not 4: each piece packs the whole of the other operand
  // again (~10% of a 960 x 512 x 1536 product cut in 8, measured on 2 cores).
  const int per_thread = std::min({g.M, g.N, g.K}) > 32 ? 2 : 4;
  if (g.M >= g.N) {  // rows of C (and of op(A))
    cpu::parallel_rows(
        g.M, work,
        [&](int64_t i0, int64_t i1) { sgemm(g, a + (g.trans_a ? i0 : i0 * g.lda), b, c + i0 * g.ldc, i1 - i0, g.N); },
        per_thread);
  } else {  // columns of C (and of op(B))
    cpu::parallel_rows(
        g.N, work,
        [&](int64_t j0, int64_t j1) { sgemm(g, a, b + (g.trans_b ? j0 * g.ldb : j0), c + j0, g.M, j1 - j0); },
        per_thread);
  }
}

}  // namespace

void CpuBackend::gemm(const GemmArgs& g) {
  // LoRA's rank-r products (x A, (x A) B and their gradients) apart from the dense ones.
  std::string shape;
  if (cpu::profiling_shapes())
    shape = "gemm " + std::to_string(g.M) + "x" + std::to_string(g.N) + "x" + std::to_string(g.K) +
            (g.trans_a ? " tA" : "") + (g.trans_b ? " tB" : "") + (g.batch > 1 ? " b" + std::to_string(g.batch) : "");
  LMT_CPU_PROFILE(!shape.empty()             ? shape.c_str()
                  : g.K <= 32                ? "gemm, K <= 32"
                  : std::min(g.M, g.N) <= 32 ? "gemm, M or N <= 32"
                                             : "gemm");
  cpu_require_f32(g.dtype, "gemm");
  cpu::threads();  // OpenBLAS to one thread before its first call
  const float* a = static_cast<const float*>(g.a);
  const float* b = static_cast<const float*>(g.b);
  float* c = static_cast<float*>(g.c);
  for (int64_t i = 0; i < g.batch; ++i) product(g, a + i * g.stride_a, b + i * g.stride_b, c + i * g.stride_c);
}

}  // namespace lmtune
