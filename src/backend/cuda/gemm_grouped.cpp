// Several independent products (a mixture's per-expert rows): with LMTUNE_CUDA_GROUPED_GEMM=1 one launch
// of cuBLAS's grouped GEMM (cublasGemmGroupedBatchedEx), each product a group of one (their M, N, K
// differ); by default, and where that does not apply (one product, mixed dtypes, f32 output of 16-bit
// operands, strided batches, sizes past int32), gemm() for each: cuBLASLt's kernels ran a Mixtral-shaped
// LoRA step 1.09x faster than the grouped launch on an H100 (8 experts of ~2k rows; bench/NOTES.md).
#include <atomic>
#include <climits>
#include <cstdio>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/profile.h"
#include "core/runtime_config.h"

namespace lmtune {

namespace {

std::atomic<bool> grouped_unsupported{false};  // set when cuBLAS answered NOT_SUPPORTED once

bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

// Whether one launch can take all of these (non-empty) products. K == 0 (C = beta C) keeps gemm()'s
// own path.
bool groupable(const std::vector<const GemmArgs*>& live) {
  if (live.size() < 2 || !runtime_config().cuda_grouped_gemm || grouped_unsupported.load()) return false;
  const DType dt = live[0]->dtype;
  if (dt != DType::bf16 && dt != DType::f16 && dt != DType::f32) return false;
  for (const GemmArgs* g : live)
    if (g->dtype != dt || g->c_f32 || g->batch != 1 || g->K == 0 || !fits_int(g->M) || !fits_int(g->N) ||
        !fits_int(g->K) || !fits_int(g->lda) || !fits_int(g->ldb) || !fits_int(g->ldc))
      return false;
  return true;
}

cudaDataType_t blas_type(DType dt) {
  return dt == DType::bf16 ? CUDA_R_16BF : dt == DType::f16 ? CUDA_R_16F : CUDA_R_32F;
}

}  // namespace

void CudaBackend::gemm_grouped(const std::vector<GemmArgs>& problems) {
  std::vector<const GemmArgs*> live;
  for (const GemmArgs& g : problems)
    if (g.M > 0 && g.N > 0 && g.batch > 0) live.push_back(&g);
  if (groupable(live)) {
    std::lock_guard<std::mutex> lock(gemm_mu_);
    if (!blas_) {
      LMT_CUBLAS_CHECK(cublasCreate(&blas_));
      LMT_CUBLAS_CHECK(cublasSetStream(blas_, stream_));
    }
    // Row-major C (M, N) = op(A) op(B) is column-major C^T (N, M) = op(B)^T op(A)^T: cuBLAS's first
    // operand is B, as in gemm_ex.
    const size_t n = live.size();
    std::vector<cublasOperation_t> ta(n), tb(n);
    std::vector<int> m(n), nn(n), k(n), lda(n), ldb(n), ldc(n), group(n, 1);
    std::vector<float> alpha(n), beta(n);
    std::vector<const void*> ptrs(3 * n);  // first operands, second operands, outputs
    for (size_t i = 0; i < n; ++i) {
      const GemmArgs& g = *live[i];
      ta[i] = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
      tb[i] = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
      m[i] = int(g.N), nn[i] = int(g.M), k[i] = int(g.K);
      lda[i] = int(g.ldb), ldb[i] = int(g.lda), ldc[i] = int(g.ldc);
      alpha[i] = g.alpha, beta[i] = g.beta;
      ptrs[i] = g.b, ptrs[n + i] = g.a, ptrs[2 * n + i] = g.c;
    }
    // The pointer arrays live on the device; the copy and the product are ordered on the one stream.
    DeviceScratch dev_ptrs(ptrs.size() * sizeof(void*));
    LMT_CUDA_CHECK(cudaMemcpyAsync(dev_ptrs.as<void*>(), ptrs.data(), ptrs.size() * sizeof(void*),
                                   cudaMemcpyHostToDevice, stream_));
    const void* const* dp = dev_ptrs.as<const void* const>();
    const cudaDataType_t t = blas_type(live[0]->dtype);
    cuda_profile::Scope timed("gemm_grouped");
    const cublasStatus_t st =
        cublasGemmGroupedBatchedEx(blas_, ta.data(), tb.data(), m.data(), nn.data(), k.data(), alpha.data(), dp, t,
                                   lda.data(), dp + n, t, ldb.data(), beta.data(), const_cast<void* const*>(dp + 2 * n),
                                   t, ldc.data(), int(n), group.data(), CUBLAS_COMPUTE_32F);
    if (st == CUBLAS_STATUS_SUCCESS) return;
    if (st != CUBLAS_STATUS_NOT_SUPPORTED) LMT_CUBLAS_CHECK(st);
    // This cuBLAS lacks the grouped GEMM for these types: one product after another from now on.
    grouped_unsupported.store(true);
    std::fprintf(stderr, "[gemm_grouped] cuBLAS has no grouped GEMM for %s here: the products run one by one\n",
                 dtype_name(live[0]->dtype));
  }
  for (const GemmArgs& g : problems) gemm(g);
}

}  // namespace lmtune
