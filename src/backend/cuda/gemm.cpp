// Matrix products through cuBLASLt with f32 compute. Row-major C = op(A) op(B) is computed as
// column-major C^T = op(B)^T op(A)^T, so cuBLAS's first operand is our B. Plans (descriptors and
// the heuristic's algorithm) are cached per shape, strides and pointer alignment.
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/profile.h"
#include "core/error.h"

namespace lmtune {

namespace {

cudaDataType_t cuda_type(DType dt) {
  switch (dt) {
    case DType::f32: return CUDA_R_32F;
    case DType::bf16: return CUDA_R_16BF;
    case DType::f16: return CUDA_R_16F;
    default: fail("[gemm] cuda: unsupported dtype ", dtype_name(dt));
  }
}

// Largest power of two (at most 256) dividing the address and every element offset from it.
int alignment_of(const void* p, int64_t ld, int64_t stride, size_t elem) {
  uint64_t bits = uint64_t(reinterpret_cast<uintptr_t>(p)) | uint64_t(ld) * elem | uint64_t(stride) * elem | 256u;
  return int(bits & (~bits + 1));
}

// The profile's name of a product: its shape, whether an operand is transposed, its dtype and batch.
std::string gemm_profile_name(const GemmArgs& g) {
  std::string s = "cublasLt gemm M" + std::to_string(g.M) + " N" + std::to_string(g.N) + " K" + std::to_string(g.K);
  s += g.trans_a ? " At" : "";
  s += g.trans_b ? " Bt" : "";
  if (g.batch > 1) s += " batch " + std::to_string(g.batch);
  return s + " " + dtype_name(g.dtype);
}

constexpr size_t kMaxPlans = 4096;  // decoding grows S each step; bound the cache

void set_layout_batch(cublasLtMatrixLayout_t l, int64_t batch, int64_t stride) {
  if (batch <= 1) return;
  int32_t count = int32_t(batch);
  LMT_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
  LMT_CUBLAS_CHECK(
      cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
}

}  // namespace

GemmPlan::~GemmPlan() {
  if (a) cublasLtMatrixLayoutDestroy(a);
  if (b) cublasLtMatrixLayoutDestroy(b);
  if (c) cublasLtMatrixLayoutDestroy(c);
  if (op) cublasLtMatmulDescDestroy(op);
}

const GemmPlan& CudaBackend::gemm_plan(const GemmKey& key) {
  auto it = gemm_plans_.find(key);
  if (it != gemm_plans_.end()) return *it->second;
  if (gemm_plans_.size() >= kMaxPlans) gemm_plans_.clear();

  auto [ab_dt, c_dt, M, N, K, trans_a, trans_b, lda, ldb, ldc, batch, stride_a, stride_b, stride_c, align_a, align_b,
        align_c] = key;
  cudaDataType_t ab_type = cuda_type(DType(ab_dt)), c_type = cuda_type(DType(c_dt));
  auto plan = std::make_unique<GemmPlan>();
  LMT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t op_first = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;   // cuBLAS's A is our B
  cublasOperation_t op_second = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLAS's B is our A
  LMT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
  LMT_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
  // Column-major views of our row-major storage: B stored (K, N) reads as (N, K), and so on.
  LMT_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&plan->a, ab_type, uint64_t(trans_b ? K : N), uint64_t(trans_b ? N : K), ldb));
  LMT_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&plan->b, ab_type, uint64_t(trans_a ? M : K), uint64_t(trans_a ? K : M), lda));
  LMT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->c, c_type, uint64_t(N), uint64_t(M), ldc));
  set_layout_batch(plan->a, batch, stride_b);
  set_layout_batch(plan->b, batch, stride_a);
  set_layout_batch(plan->c, batch, stride_c);

  cublasLtMatmulPreference_t pref = nullptr;
  LMT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  uint64_t ws = workspace_bytes_;
  uint32_t al_first = uint32_t(align_b), al_second = uint32_t(align_a), al_c = uint32_t(align_c);
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  auto set_pref = [&](cublasLtMatmulPreferenceAttributes_t attr, const void* v, size_t n) {
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatmulPreferenceSetAttribute(pref, attr, v, n);
  };
  set_pref(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_first, sizeof(al_first));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_second, sizeof(al_second));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof(al_c));
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(lt_, plan->op, plan->a, plan->b, plan->c, plan->c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  LMT_CUBLAS_CHECK(st);
  if (found == 0 || result.state != CUBLAS_STATUS_SUCCESS)
    fail("[gemm] cuda: cuBLASLt has no algorithm for ", dtype_name(DType(ab_dt)), " -> ", dtype_name(DType(c_dt)),
         " M=", M, " N=", N, " K=", K, " trans_a=", trans_a, " trans_b=", trans_b, " lda=", lda, " ldb=", ldb,
         " ldc=", ldc, " batch=", batch);
  plan->algo = result.algo;
  return *gemm_plans_.emplace(key, std::move(plan)).first->second;
}

void CudaBackend::gemm(const GemmArgs& g) { gemm_ex(g, g.c_f32 ? DType::f32 : g.dtype); }

void CudaBackend::gemm_ex(const GemmArgs& g, DType c_dt) {
  if (g.M == 0 || g.N == 0 || g.batch == 0) return;
  size_t es = dtype_size(g.dtype), cs = dtype_size(c_dt);
  if (g.K == 0) {
    // cuBLASLt wants K >= 1, and C = beta * C here; beta 0 overwrites without reading C.
    for (int64_t i = 0; i < g.batch; ++i) {
      char* c = static_cast<char*>(g.c) + i * g.stride_c * cs;
      if (g.beta == 0.f) {
        LMT_CUDA_CHECK(cudaMemset2DAsync(c, size_t(g.ldc) * cs, 0, size_t(g.N) * cs, size_t(g.M), stream_));
      } else if (g.ldc == g.N) {
        unary(UnaryOp::scale, c, c, g.M * g.N, g.beta, c_dt);
      } else {
        for (int64_t r = 0; r < g.M; ++r)
          unary(UnaryOp::scale, c + r * g.ldc * cs, c + r * g.ldc * cs, g.N, g.beta, c_dt);
      }
    }
    return;
  }
  if (gemv(g, c_dt)) return;  // decoding's few-row products: a streaming kernel of our own
  LMT_CHECK(g.batch <= INT32_MAX, "[gemm] cuda: batch ", g.batch, " exceeds cuBLASLt's int32 limit");
  GemmKey key{int(g.dtype),
              int(c_dt),
              g.M,
              g.N,
              g.K,
              g.trans_a,
              g.trans_b,
              g.lda,
              g.ldb,
              g.ldc,
              g.batch,
              g.batch > 1 ? g.stride_a : 0,
              g.batch > 1 ? g.stride_b : 0,
              g.batch > 1 ? g.stride_c : 0,
              alignment_of(g.a, g.lda, g.batch > 1 ? g.stride_a : 0, es),
              alignment_of(g.b, g.ldb, g.batch > 1 ? g.stride_b : 0, es),
              alignment_of(g.c, g.ldc, g.batch > 1 ? g.stride_c : 0, cs)};
  std::lock_guard<std::mutex> lock(gemm_mu_);
  const GemmPlan& plan = gemm_plan(key);
  float alpha = g.alpha, beta = g.beta;
  cuda_profile::Scope timed(cuda_profile::enabled() ? gemm_profile_name(g) : std::string());
  LMT_CUBLAS_CHECK(cublasLtMatmul(lt_, plan.op, &alpha, g.b, plan.a, g.a, plan.b, &beta, g.c, plan.c, g.c, plan.c,
                                  &plan.algo, workspace_, workspace_bytes_, stream_));
}

}  // namespace lmtune
