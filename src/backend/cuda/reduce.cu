// reduce_sum over the middle axis of x (outer, n, inner) with f32 accumulation. Long
// reductions are split across blocks into f32 partials and summed by a second pass, so the
// result does not depend on scheduling (no atomics), for rows (inner == 1) and columns alike.
#include "backend/cuda/cuda_common.cuh"

namespace lmtune {

namespace {

// inner == 1: one block per row of n.
template <typename T, typename O>
__global__ void row_sum_kernel(const T* x, O* out, int64_t outer, int64_t n) {
  pdl_enter();
  __shared__ float smem[32];
  for (int64_t r = blockIdx.x; r < outer; r += gridDim.x) {
    const T* row = x + r * n;
    float acc = 0.f;
    for (int64_t k = threadIdx.x; k < n; k += blockDim.x) acc += to_f32(row[k]);
    acc = block_sum(acc, smem);
    if (threadIdx.x == 0) out[r] = from_f32<O>(acc);
  }
}

// inner == 1 with few long rows (a whole tensor's sum: the gradient norm of --grad-clip): block (r, s) sums
// piece s of row r, [s * piece, (s + 1) * piece), into the f32 partial (outer, splits); row_sum_kernel then sums
// each row's partials. One block a row read a 1M-element gradient at ~5 GB/s (session 21's profile of the
// built-in model's pretraining step: 33% of the GPU time).
template <typename T>
__global__ void row_piece_sum_kernel(const T* x, float* partial, int64_t n, int64_t piece, int splits) {
  pdl_enter();
  __shared__ float smem[32];
  const int64_t r = blockIdx.x / splits, sp = blockIdx.x % splits;
  const int64_t k0 = sp * piece, k1 = min(n, k0 + piece);
  const T* row = x + r * n;
  float acc = 0.f;
  for (int64_t k = k0 + threadIdx.x; k < k1; k += blockDim.x) acc += to_f32(row[k]);
  acc = block_sum(acc, smem);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// inner > 1: thread (o, j) sums rows [k0, k1) of column j, for split blockIdx.y. With one
// split it writes out directly; otherwise f32 partials (splits, outer, inner).
template <typename T, typename O>
__global__ void col_sum_kernel(const T* x, O* out, float* partial, int64_t outer, int64_t n, int64_t inner,
                               int64_t rows_per_split) {
  pdl_enter();
  int64_t total = outer * inner;
  int64_t k0 = int64_t(blockIdx.y) * rows_per_split;
  int64_t k1 = min(n, k0 + rows_per_split);
  for (int64_t idx = global_tid(); idx < total; idx += grid_stride()) {
    int64_t o = idx / inner, j = idx % inner;
    const T* col = x + o * n * inner + j;
    float acc = 0.f;
    for (int64_t k = k0; k < k1; ++k) acc += to_f32(col[k * inner]);
    if (partial)
      partial[int64_t(blockIdx.y) * total + idx] = acc;
    else
      out[idx] = from_f32<O>(acc);
  }
}

// out (total) = sum over splits of partial f32 (splits, total).
template <typename O>
__global__ void sum_partials_kernel(const float* partial, O* out, int64_t total, int splits) {
  pdl_enter();
  for (int64_t idx = global_tid(); idx < total; idx += grid_stride()) {
    float acc = 0.f;
    for (int s = 0; s < splits; ++s) acc += partial[int64_t(s) * total + idx];
    out[idx] = from_f32<O>(acc);
  }
}

}  // namespace

void CudaBackend::reduce_sum(const void* x, void* out, int64_t outer, int64_t n, int64_t inner, DType dt,
                             DType out_dt) {
  int64_t total = outer * inner;
  if (total == 0) return;
  if (n == 0) {
    fill(out, out_dt, total, 0.f);
    return;
  }
  dispatch_float(dt, "reduce_sum", [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_float(out_dt, "reduce_sum", [&](auto otag) {
      using O = typename decltype(otag)::type;
      const T* px = static_cast<const T*>(x);
      O* po = static_cast<O*>(out);
      if (inner == 1) {
        // Rows too few to fill the GPU and long enough to split: pieces of at least 4096 elements, ~4 blocks a
        // multiprocessor in all, then a second pass over the f32 partials (fixed order: no atomics).
        const int64_t want = int64_t(sm_count_) * 4;
        const int64_t splits = outer >= want ? 1 : std::clamp<int64_t>(std::min(want / outer, n / 4096), 1, 1024);
        const unsigned blocks = unsigned(std::min<int64_t>(outer, int64_t(sm_count_) * 32));
        if (splits > 1) {
          const int64_t piece = (n + splits - 1) / splits;
          DeviceScratch partial(size_t(outer * splits) * sizeof(float));
          launch("reduce_sum", row_piece_sum_kernel<T>, unsigned(outer * splits), kThreads, 0, px, partial.as<float>(),
                 n, piece, int(splits));
          launch("reduce_sum", row_sum_kernel<float, O>, blocks, kThreads, 0, partial.as<const float>(), po, outer,
                 splits);
          return;
        }
        launch("reduce_sum", row_sum_kernel<T, O>, blocks, kThreads, 0, px, po, outer, n);
        return;
      }
      // Enough splits of n to give the GPU ~4 waves of threads, each split at least 32 rows long.
      int64_t want_threads = int64_t(sm_count_) * 2048 * 4;
      int64_t splits = std::clamp<int64_t>(want_threads / std::max<int64_t>(total, 1), 1, 256);
      splits = std::min<int64_t>(splits, std::max<int64_t>(1, n / 32));
      int64_t rows_per_split = (n + splits - 1) / splits;
      splits = (n + rows_per_split - 1) / rows_per_split;
      dim3 grid(grid_for(total), unsigned(splits));
      if (splits == 1) {
        launch("reduce_sum", col_sum_kernel<T, O>, grid, kThreads, 0, px, po, static_cast<float*>(nullptr), outer, n,
               inner, rows_per_split);
        return;
      }
      DeviceScratch partial(size_t(splits * total) * sizeof(float));
      launch("reduce_sum", col_sum_kernel<T, O>, grid, kThreads, 0, px, po, partial.as<float>(), outer, n, inner,
             rows_per_split);
      launch("reduce_sum", sum_partials_kernel<O>, grid_for(total), kThreads, 0, partial.as<const float>(), po, total,
             int(splits));
    });
  });
}

}  // namespace lmtune
