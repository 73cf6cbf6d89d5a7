// A linear layer with its LoRA, forward and backward, a block of rows at a time (LoraLinearArgs in
// backend.h). Done as separate whole-matrix products, LoRA's rank-r steps each stream a (rows, in) or
// (rows, out) matrix from memory to read or write a sliver: x @ a, (x @ a) @ b added into y, dy @ b^T,
// the parameter gradients, and the gradient of x added to the base's in a pass of its own. Here each
// block's products run one after another on one thread while the block is in cache, the blocks spread
// over the pool. The blocks are cut by the row count alone (never by the thread count), and the
// parameter gradients sum the blocks' parts in block order, so a result does not depend on the threads.
#include <cblas.h>

#include <algorithm>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/parallel.h"
#include "backend/cpu/profile.h"

namespace lmtune {

namespace {

// C (M, N) = alpha * op(A) op(B) + beta * C, row-major, on the calling thread.
void mm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
        int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(M), int(N), int(K),
              alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
}

// Blocks of about 256 rows (an even count past one, for two threads): big enough for sgemm's full rate.
int64_t block_count(int64_t rows) {
  int64_t n = std::max<int64_t>(1, (rows + 255) / 256);
  return n > 1 && n % 2 ? n + 1 : n;
}

constexpr int64_t kMinRows = 64;

void check(const LoraLinearArgs& g) {
  LMT_CHECK(g.rows > 0 && g.in > 0 && g.out > 0 && g.r > 0 && g.x && g.w && g.a && g.b && g.xa, "[lora_linear] rows ",
            g.rows, ", in ", g.in, ", out ", g.out, ", r ", g.r, " or a missing matrix");
}

}  // namespace

// A few rows (decoding with an adapter): the separate products, whose one-row GEMVs split over the threads by columns;
// a block here would run on one thread.
bool CpuBackend::takes_lora_linear(int64_t rows) const { return rows >= kMinRows; }

bool CpuBackend::lora_linear(const LoraLinearArgs& g) {
  if (!takes_lora_linear(g.rows)) return false;
  LMT_CPU_PROFILE("lora_linear");
  check(g);
  LMT_CHECK(g.y, "[lora_linear] no output");
  cpu::threads();  // OpenBLAS to one thread before its first call
  const int64_t blocks = block_count(g.rows), work = g.rows * g.out * (g.in + g.r) >> 17;
  cpu::parallel_rows(blocks, work, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * g.rows / blocks, m = (blk + 1) * g.rows / blocks - i0;
      const float* x = g.x + i0 * g.in;
      float* y = g.y + i0 * g.out;
      float* xa = g.xa + i0 * g.r;
      if (g.bias)
        for (int64_t i = 0; i < m; ++i) std::copy(g.bias, g.bias + g.out, y + i * g.out);
      mm(false, true, m, g.out, g.in, 1.f, x, g.in, g.w, g.in, g.bias ? 1.f : 0.f, y, g.out);
      mm(false, false, m, g.r, g.in, 1.f, x, g.in, g.a, g.r, 0.f, xa, g.r);
      mm(false, false, m, g.out, g.r, g.scale, xa, g.r, g.b, g.out, 1.f, y, g.out);
    }
  });
  return true;
}

bool CpuBackend::lora_linear_backward(const LoraLinearArgs& g) {
  LMT_CPU_PROFILE("lora_linear_backward");
  check(g);
  LMT_CHECK(g.dy, "[lora_linear_backward] no output gradient");
  cpu::threads();
  const int64_t blocks = block_count(g.rows), work = g.rows * g.out * (g.in + 2 * g.r) >> 17;
  const int64_t db_n = g.db ? g.r * g.out : 0, da_n = g.da ? g.in * g.r : 0;
  std::vector<float> parts(size_t(blocks * (db_n + da_n)));  // each block's db then da
  std::vector<float> dxa_all(size_t(g.rows * g.r));          // scale * dy @ b^T, (rows, r)
  cpu::parallel_rows(blocks, work, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * g.rows / blocks, m = (blk + 1) * g.rows / blocks - i0;
      const float* dy = g.dy + i0 * g.out;
      float* dxa = dxa_all.data() + i0 * g.r;
      mm(false, true, m, g.r, g.out, g.scale, dy, g.out, g.b, g.out, 0.f, dxa, g.r);
      if (g.dx) {
        float* dx = g.dx + i0 * g.in;
        mm(false, false, m, g.in, g.out, 1.f, dy, g.out, g.w, g.in, 0.f, dx, g.in);
        mm(false, true, m, g.in, g.r, 1.f, dxa, g.r, g.a, g.r, 1.f, dx, g.in);
      }
      float* part = parts.data() + blk * (db_n + da_n);
      if (g.db) mm(true, false, g.r, g.out, m, g.scale, g.xa + i0 * g.r, g.r, dy, g.out, 0.f, part, g.out);
      if (g.da) mm(true, false, g.in, g.r, m, 1.f, g.x + i0 * g.in, g.in, dxa, g.r, 0.f, part + db_n, g.r);
    }
  });
  // The blocks' parts summed in block order.
  auto sum_parts = [&](float* dst, int64_t n, int64_t offset) {
    std::copy(parts.begin() + offset, parts.begin() + offset + n, dst);
    for (int64_t blk = 1; blk < blocks; ++blk) {
      const float* p = parts.data() + blk * (db_n + da_n) + offset;
      for (int64_t i = 0; i < n; ++i) dst[i] += p[i];
    }
  };
  if (g.db) sum_parts(g.db, db_n, 0);
  if (g.da) sum_parts(g.da, da_n, db_n);
  return true;
}

}  // namespace lmtune
