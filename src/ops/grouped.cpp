// A mixture of experts' products: rows sorted by expert, each run of rows times its expert's weight,
// all of them handed to the backend together (Backend::gemm_grouped: cuBLASLt an expert on CUDA, or one
// launch of cuBLAS's grouped GEMM with LMTUNE_CUDA_GROUPED_GEMM=1).
#include "backend/backend.h"
#include "core/error.h"
#include "ops/ops.h"

namespace lmtune::ops {

namespace {
// offsets: groups + 1 entries from 0 to rows, never decreasing.
void check_offsets(const char* op, int64_t rows, const std::vector<int64_t>& offsets, size_t groups) {
  LMT_CHECK(offsets.size() == groups + 1 && offsets.front() == 0 && offsets.back() == rows, "[", op, "] ", groups,
            " groups need ", groups + 1, " offsets from 0 to ", rows, ", got ", offsets.size());
  for (size_t g = 0; g < groups; ++g)
    LMT_CHECK(offsets[g + 1] >= offsets[g], "[", op, "] offsets must not decrease (group ", g, ")");
}

void check_groups(const char* op, const Tensor& x, const std::vector<Tensor>& ws, const std::vector<int64_t>& offsets) {
  LMT_CHECK(x.ndim() == 2, "[", op, "] rows must be 2-D, got ", x.describe());
  LMT_CHECK(!ws.empty(), "[", op, "] needs at least one weight");
  check_offsets(op, x.dim(0), offsets, ws.size());
  for (size_t g = 0; g < ws.size(); ++g)
    LMT_CHECK(ws[g].ndim() == 2 && ws[g].shape() == ws[0].shape() && ws[g].dtype() == x.dtype() &&
                  ws[g].device() == x.device(),
              "[", op, "] weight ", g, " ", ws[g].describe(), " does not match weight 0 ", ws[0].describe(),
              " and rows ", x.describe());
}
}  // namespace

Tensor grouped_matmul(const Tensor& x, const std::vector<Tensor>& ws, const std::vector<int64_t>& offsets,
                      bool trans_w) {
  check_groups("grouped_matmul", x, ws, offsets);
  const int64_t K = trans_w ? ws[0].dim(1) : ws[0].dim(0), N = trans_w ? ws[0].dim(0) : ws[0].dim(1);
  LMT_CHECK(x.dim(1) == K, "[grouped_matmul] rows ", x.describe(), " do not match weight ", ws[0].describe(),
            trans_w ? "^T" : "");
  if (K == 0) return zeros({x.dim(0), N}, x.dtype(), x.device());
  Tensor out = empty({x.dim(0), N}, x.dtype(), x.device());
  const size_t es = dtype_size(x.dtype());
  std::vector<GemmArgs> problems;
  for (size_t g = 0; g < ws.size(); ++g) {
    const int64_t rows = offsets[g + 1] - offsets[g];
    if (rows == 0) continue;
    GemmArgs a;
    a.a = static_cast<const char*>(x.raw()) + size_t(offsets[g] * K) * es;
    a.b = ws[g].raw();
    a.c = static_cast<char*>(out.raw()) + size_t(offsets[g] * N) * es;
    a.dtype = x.dtype();
    a.M = rows, a.N = N, a.K = K;
    a.trans_b = trans_w;
    a.lda = K, a.ldb = ws[g].dim(1), a.ldc = N;
    problems.push_back(a);
  }
  if (!problems.empty()) backend(x.device()).gemm_grouped(problems);
  return out;
}

std::vector<Tensor> grouped_matmul_wgrad(const Tensor& dy, const Tensor& x, const std::vector<int64_t>& offsets,
                                         const std::vector<bool>& want) {
  LMT_CHECK(dy.ndim() == 2 && x.ndim() == 2 && dy.dim(0) == x.dim(0) && dy.dtype() == x.dtype() &&
                dy.device() == x.device(),
            "[grouped_matmul_wgrad] dy ", dy.describe(), " does not match rows ", x.describe());
  check_offsets("grouped_matmul_wgrad", x.dim(0), offsets, want.size());
  const int64_t out_f = dy.dim(1), in_f = x.dim(1);
  const size_t es = dtype_size(x.dtype());
  std::vector<Tensor> dw(want.size());
  std::vector<GemmArgs> problems;
  for (size_t g = 0; g < want.size(); ++g) {
    if (!want[g]) continue;
    const int64_t rows = offsets[g + 1] - offsets[g];
    dw[g] = rows == 0 ? zeros({out_f, in_f}, x.dtype(), x.device()) : empty({out_f, in_f}, x.dtype(), x.device());
    if (rows == 0) continue;
    GemmArgs a;  // dw (out, in) = dy_g^T (out, rows) @ x_g (rows, in)
    a.a = static_cast<const char*>(dy.raw()) + size_t(offsets[g] * out_f) * es;
    a.b = static_cast<const char*>(x.raw()) + size_t(offsets[g] * in_f) * es;
    a.c = dw[g].raw();
    a.dtype = x.dtype();
    a.M = out_f, a.N = in_f, a.K = rows;
    a.trans_a = true;
    a.lda = out_f, a.ldb = in_f, a.ldc = in_f;
    problems.push_back(a);
  }
  if (!problems.empty()) backend(x.device()).gemm_grouped(problems);
  return dw;
}

}  // namespace lmtune::ops
