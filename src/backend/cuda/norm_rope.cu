// CUDA kernels of the per-token layers: embedding (+ scatter-add backward), rms_norm (+ backward
// with a deterministic f32 weight gradient) and rotate-half RoPE.
#include "backend/cuda/cuda_common.cuh"

namespace lmtune {

namespace {

// out (N, row_units) = weight[ids] in units U of the row's bytes.
template <typename U>
__global__ void embedding_kernel(const U* weight, const int32_t* ids, U* out, int64_t N, int64_t row_units) {
  pdl_enter();
  int64_t total = N * row_units;
  for (int64_t idx = global_tid(); idx < total; idx += grid_stride()) {
    int64_t i = idx / row_units, j = idx % row_units;
    out[idx] = weight[int64_t(ids[i]) * row_units + j];
  }
}

// dweight f32 (V, D) += dout (N, D) scattered by ids i32 (N).
template <typename T>
__global__ void embedding_backward_kernel(const T* dout, const int32_t* ids, float* dweight, int64_t N, int64_t D) {
  pdl_enter();
  int64_t total = N * D;
  for (int64_t idx = global_tid(); idx < total; idx += grid_stride()) {
    int64_t i = idx / D, j = idx % D;
    atomicAdd(dweight + int64_t(ids[i]) * D + j, to_f32(dout[idx]));
  }
}

// out (rows, dim) = x (rows, dim) * rstd * w (dim); rstd f32 (rows), written unless null. One block
// per row (grid-stride); V elements per access when dim % V == 0. With kAdd the row is first
// x + y rounded to T, written to sum, and normalized as read back: decoding's residual add and the
// norm after it in one pass, equal to the two ops.
template <typename T, int V, bool kAdd>
__global__ void rms_norm_kernel(const T* x, const T* y, const T* w, T* sum, T* out, float* rstd, int64_t rows,
                                int64_t dim, float eps) {
  pdl_enter();
  __shared__ float smem[32];
  int64_t nv = dim / V;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* src = (kAdd ? sum : x) + r * dim;  // what is normalized
    float ss = 0.f;
    for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) {
      Pack<T, V> p = load_pack<V>(x + r * dim + i * V);
      if constexpr (kAdd) {
        Pack<T, V> q = load_pack<V>(y + r * dim + i * V);
#pragma unroll
        for (int j = 0; j < V; ++j) p.v[j] = from_f32<T>(to_f32(p.v[j]) + to_f32(q.v[j]));
        store_pack<V>(sum + r * dim + i * V, p);
      }
#pragma unroll
      for (int j = 0; j < V; ++j) {
        float v = to_f32(p.v[j]);
        ss += v * v;
      }
    }
    ss = block_sum(ss, smem);
    float s = 1.f / sqrtf(ss / float(dim) + eps);
    if (rstd && threadIdx.x == 0) rstd[r] = s;
    for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) {  // with kAdd the same thread wrote these
      Pack<T, V> p = load_pack<V>(src + i * V), q = load_pack<V>(w + i * V), o;
#pragma unroll
      for (int j = 0; j < V; ++j) o.v[j] = from_f32<T>(to_f32(p.v[j]) * s * to_f32(q.v[j]));
      store_pack<V>(out + r * dim + i * V, o);
    }
  }
}

// rms_norm_kernel for rows of at most ITEMS * blockDim.x packs (decoding's rows: 4096 wide is 2
// packs a thread): a thread's packs of x (and y) and of w are all loaded before the block's sum,
// so w's loads overlap the reduction instead of following it, and x is not read twice. The same
// packs a thread and the same order of sums as rms_norm_kernel: the same values bit for bit.
template <typename T, int V, bool kAdd, int ITEMS>
__global__ void rms_norm_reg_kernel(const T* x, const T* y, const T* w, T* sum, T* out, float* rstd, int64_t rows,
                                    int64_t dim, float eps) {
  pdl_enter();
  __shared__ float smem[32];
  const int64_t nv = dim / V;
  Pack<T, V> wp[ITEMS];
#pragma unroll
  for (int k = 0; k < ITEMS; ++k) {
    const int64_t i = threadIdx.x + int64_t(k) * blockDim.x;
    if (i < nv) wp[k] = load_pack<V>(w + i * V);
  }
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    Pack<T, V> p[ITEMS];
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
      const int64_t i = threadIdx.x + int64_t(k) * blockDim.x;
      if (i >= nv) break;
      p[k] = load_pack<V>(x + r * dim + i * V);
      if constexpr (kAdd) {
        const Pack<T, V> q = load_pack<V>(y + r * dim + i * V);
#pragma unroll
        for (int j = 0; j < V; ++j) p[k].v[j] = from_f32<T>(to_f32(p[k].v[j]) + to_f32(q.v[j]));
        store_pack<V>(sum + r * dim + i * V, p[k]);
      }
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float v = to_f32(p[k].v[j]);
        ss += v * v;
      }
    }
    ss = block_sum(ss, smem);
    const float s = 1.f / sqrtf(ss / float(dim) + eps);
    if (rstd && threadIdx.x == 0) rstd[r] = s;
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
      const int64_t i = threadIdx.x + int64_t(k) * blockDim.x;
      if (i >= nv) break;
      Pack<T, V> o;
#pragma unroll
      for (int j = 0; j < V; ++j) o.v[j] = from_f32<T>(to_f32(p[k].v[j]) * s * to_f32(wp[k].v[j]));
      store_pack<V>(out + r * dim + i * V, o);
    }
  }
}

// dx = s * (dy * w - x * c), c = s^2 * mean(dy * w * x); block b also sums dy * x * s over its
// rows into partial[b] (each thread owns its columns, so no atomics).
template <typename T, int V>
__global__ void rms_norm_backward_kernel(const T* x, const T* w, const float* rstd, const T* dy, T* dx, float* partial,
                                         int64_t rows, int64_t dim) {
  pdl_enter();
  __shared__ float smem[32];
  int64_t nv = dim / V;
  float* part = partial + int64_t(blockIdx.x) * dim;
  for (int64_t i = threadIdx.x; i < nv; i += blockDim.x)
#pragma unroll
    for (int j = 0; j < V; ++j) part[i * V + j] = 0.f;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * dim;
    const T* dyr = dy + r * dim;
    float s = rstd[r];
    float dot = 0.f;
    for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) {
      Pack<T, V> px = load_pack<V>(xr + i * V), pw = load_pack<V>(w + i * V), pd = load_pack<V>(dyr + i * V);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        float xv = to_f32(px.v[j]), dv = to_f32(pd.v[j]);
        dot += dv * to_f32(pw.v[j]) * xv;
        part[i * V + j] += dv * xv * s;
      }
    }
    dot = block_sum(dot, smem);
    float c = dot / float(dim) * s * s;
    for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) {
      Pack<T, V> px = load_pack<V>(xr + i * V), pw = load_pack<V>(w + i * V), pd = load_pack<V>(dyr + i * V), o;
#pragma unroll
      for (int j = 0; j < V; ++j) o.v[j] = from_f32<T>(s * (to_f32(pd.v[j]) * to_f32(pw.v[j]) - to_f32(px.v[j]) * c));
      store_pack<V>(dx + r * dim + i * V, o);
    }
  }
}

// out f32 (dim) = sum over rows of partial f32 (nrows, dim).
__global__ void sum_rows_f32_kernel(const float* partial, float* out, int64_t nrows, int64_t dim) {
  pdl_enter();
  for (int64_t j = global_tid(); j < dim; j += grid_stride()) {
    float acc = 0.f;
    for (int64_t b = 0; b < nrows; ++b) acc += partial[b * dim + j];
    out[j] = acc;
  }
}

// One rotated pair (i, i + D/2) of row xr into o at position pos: the arithmetic every rope shares.
template <typename T>
__device__ __forceinline__ void rotate_pair(const T* xr, T* o, int64_t i, int64_t half, float pos, float inv_freq,
                                            float mscale, bool inverse) {
  rope_pair(to_f32(xr[i]), to_f32(xr[i + half]), pos, inv_freq, mscale, inverse, o[i], o[i + half]);
}

// x, out (B, T, H, D); inv_freq f32 (D / 2); one thread per rotated pair, total = B T H D/2.
template <typename T>
__global__ void rope_kernel(const T* x, T* out, const float* inv_freq, int64_t T_, int64_t H, int64_t D,
                            int64_t pos_offset, const int32_t* pos_at, float mscale, bool inverse, int64_t total) {
  pdl_enter();
  int64_t half = D / 2;
  if (pos_at) pos_offset += *pos_at;
  for (int64_t idx = global_tid(); idx < total; idx += grid_stride()) {
    int64_t i = idx % half, row = idx / half;  // row = (b * T + t) * H + h
    int64_t t = (row / H) % T_;
    rotate_pair(x + row * D, out + row * D, i, half, float(pos_offset + t), inv_freq[i], mscale, inverse);
  }
}

// rope_kernel at per-token positions (packed rows): positions i32 (B * T), row = (b * T + t) * H + h.
template <typename T>
__global__ void rope_at_kernel(const T* x, T* out, const float* inv_freq, const int32_t* positions, int64_t H,
                               int64_t D, float mscale, bool inverse, int64_t total) {
  pdl_enter();
  int64_t half = D / 2;
  for (int64_t idx = global_tid(); idx < total; idx += grid_stride()) {
    int64_t i = idx % half, row = idx / half;
    rotate_pair(x + row * D, out + row * D, i, half, float(positions[row / H]), inv_freq[i], mscale, inverse);
  }
}

// Decoding's rope of q and k and the KV-cache append in one launch: one thread per rotated pair of
// q, of k (stored at cache row p + t) and per pair of v values copied (p + t); same arithmetic as
// rope_kernel, so the values equal rope then copy.
template <typename T>
__global__ void rope_append_kernel(const T* q, const T* k, const T* v, T* q_out, T* k_cache, T* v_cache,
                                   const float* inv_freq, int64_t T_, int64_t H, int64_t KV, int64_t D,
                                   int64_t pos_offset, const int32_t* pos_at) {
  pdl_enter();
  const int64_t half = D / 2, nq = T_ * H * half, nk = T_ * KV * half;
  if (pos_at) pos_offset += *pos_at;
  for (int64_t idx = global_tid(); idx < nq + 2 * nk; idx += grid_stride()) {
    const bool is_q = idx < nq, is_v = idx >= nq + nk;
    const int64_t j = is_q ? idx : is_v ? idx - nq - nk : idx - nq, heads = is_q ? H : KV;
    const int64_t i = j % half, row = j / half, t = row / heads;  // row = t * heads + h
    if (is_v) {
      T* dst = v_cache + (pos_offset * KV) * D + row * D;
      dst[i] = v[row * D + i];
      dst[i + half] = v[row * D + i + half];
      continue;
    }
    T* o = is_q ? q_out + row * D : k_cache + (pos_offset * KV) * D + row * D;
    rotate_pair((is_q ? q : k) + row * D, o, i, half, float(pos_offset + t), inv_freq[i], 1.f, false);
  }
}

// rope_append_kernel for a packed batch's decoding rows, each at its own position and into its
// own cache (Backend::DecodeRows, by value): the same pairs and arithmetic per row.
template <typename T>
__global__ void rope_append_rows_kernel(const T* q, const T* k, const T* v, T* q_out, const float* inv_freq, int64_t H,
                                        int64_t KV, int64_t D, Backend::DecodeRows rows) {
  pdl_enter();
  const int64_t half = D / 2, per_row = (H + 2 * KV) * half, total = per_row * rows.n;
  for (int64_t idx = global_tid(); idx < total; idx += grid_stride()) {
    const int r = int(idx / per_row);
    const int64_t j = idx % per_row, nq = H * half, nk = KV * half;
    const bool is_q = j < nq, is_v = j >= nq + nk;
    const int64_t jj = is_q ? j : is_v ? j - nq - nk : j - nq, i = jj % half, h = jj / half;
    const int64_t row = rows.row[r], pos = rows.pos[r];
    if (is_v) {
      T* dst = static_cast<T*>(rows.v[r]) + (pos * KV + h) * D;
      const T* src = v + (row * KV + h) * D;
      dst[i] = src[i];
      dst[i + half] = src[i + half];
      continue;
    }
    const T* src = is_q ? q + (row * H + h) * D : k + (row * KV + h) * D;
    T* o = is_q ? q_out + (row * H + h) * D : static_cast<T*>(rows.k[r]) + (pos * KV + h) * D;
    rotate_pair(src, o, i, half, float(pos), inv_freq[i], 1.f, false);
  }
}

template <typename U>
void launch_embedding(const void* weight, const int32_t* ids, void* out, int64_t N, int64_t row_bytes) {
  int64_t units = row_bytes / int64_t(sizeof(U));
  launch("embedding", embedding_kernel<U>, grid_for(N * units), kThreads, 0, static_cast<const U*>(weight), ids,
         static_cast<U*>(out), N, units);
}

}  // namespace

void CudaBackend::embedding(const void* weight, const int32_t* ids, void* out, int64_t N, int64_t D, DType dt) {
  int64_t row_bytes = D * int64_t(dtype_size(dt));
  uintptr_t bits = reinterpret_cast<uintptr_t>(weight) | reinterpret_cast<uintptr_t>(out) | uintptr_t(row_bytes);
  if (bits % 16 == 0)
    launch_embedding<uint4>(weight, ids, out, N, row_bytes);
  else if (bits % 8 == 0)
    launch_embedding<uint2>(weight, ids, out, N, row_bytes);
  else if (bits % 4 == 0)
    launch_embedding<uint32_t>(weight, ids, out, N, row_bytes);
  else if (bits % 2 == 0)
    launch_embedding<uint16_t>(weight, ids, out, N, row_bytes);
  else
    launch_embedding<uint8_t>(weight, ids, out, N, row_bytes);
}

void CudaBackend::embedding_backward(const void* dout, const int32_t* ids, float* dweight, int64_t N, int64_t D,
                                     DType dt) {
  dispatch_float(dt, "embedding_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch("embedding_backward", embedding_backward_kernel<T>, grid_for(N * D), kThreads, 0,
           static_cast<const T*>(dout), ids, dweight, N, D);
  });
}

void CudaBackend::rms_norm(const void* x, const void* w, void* out, float* rstd, int64_t rows, int64_t dim, float eps,
                           DType dt) {
  if (rows == 0) return;
  dispatch_float(dt, "rms_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int V = kVec<T>;
    unsigned blocks = unsigned(std::min<int64_t>(rows, int64_t(sm_count_) * 16));
    const T* px = static_cast<const T*>(x);
    const T* pw = static_cast<const T*>(w);
    T* po = static_cast<T*>(out);
    const bool vec = dim % V == 0 && aligned16(x) && aligned16(w) && aligned16(out);
    if (vec && dim / V <= 2 * kThreads)
      launch("rms_norm", rms_norm_reg_kernel<T, V, false, 2>, blocks, kThreads, 0, px, nullptr, pw, nullptr, po, rstd,
             rows, dim, eps);
    else if (vec && dim / V <= 4 * kThreads)
      launch("rms_norm", rms_norm_reg_kernel<T, V, false, 4>, blocks, kThreads, 0, px, nullptr, pw, nullptr, po, rstd,
             rows, dim, eps);
    else if (vec)
      launch("rms_norm", rms_norm_kernel<T, V, false>, blocks, kThreads, 0, px, nullptr, pw, nullptr, po, rstd, rows,
             dim, eps);
    else
      launch("rms_norm", rms_norm_kernel<T, 1, false>, blocks, kThreads, 0, px, nullptr, pw, nullptr, po, rstd, rows,
             dim, eps);
  });
}

bool CudaBackend::rope_append(const void* q, const void* k, const void* v, void* q_out, void* k_cache, void* v_cache,
                              const float* inv_freq, int64_t T, int64_t H, int64_t KV, int64_t D, int64_t pos_offset,
                              const int32_t* pos_at, DType dt) {
  const int64_t total = T * (H + 2 * KV) * (D / 2);
  if (total == 0 || D % 2 != 0) return total == 0;
  dispatch_float(dt, "rope_append", [&](auto tag) {
    using S = typename decltype(tag)::type;
    launch("rope_append", rope_append_kernel<S>, grid_for(total), kThreads, 0, static_cast<const S*>(q),
           static_cast<const S*>(k), static_cast<const S*>(v), static_cast<S*>(q_out), static_cast<S*>(k_cache),
           static_cast<S*>(v_cache), inv_freq, T, H, KV, D, pos_offset, pos_at);
  });
  return true;
}

bool CudaBackend::rope_append_rows(const void* q, const void* k, const void* v, void* q_out, const float* inv_freq,
                                   int64_t H, int64_t KV, int64_t D, const DecodeRows& rows, DType dt) {
  if (rows.n == 0 || D % 2 != 0) return rows.n == 0;
  dispatch_float(dt, "rope_append_rows", [&](auto tag) {
    using S = typename decltype(tag)::type;
    launch("rope_append_rows", rope_append_rows_kernel<S>, grid_for(int64_t(rows.n) * (H + 2 * KV) * (D / 2)), kThreads,
           0, static_cast<const S*>(q), static_cast<const S*>(k), static_cast<const S*>(v), static_cast<S*>(q_out),
           inv_freq, H, KV, D, rows);
    if (tracking_rows()) {  // a recorded batched step: its rows are set again before each replay
      struct Args {
        const S *q, *k, *v;
        S* q_out;
        const float* inv_freq;
        int64_t H, KV, D;
        DecodeRows rows;
      };
      auto a = std::make_shared<Args>(Args{static_cast<const S*>(q), static_cast<const S*>(k), static_cast<const S*>(v),
                                           static_cast<S*>(q_out), inv_freq, H, KV, D, rows});
      TrackedRows t;
      t.arg_ptrs = {&a->q, &a->k, &a->v, &a->q_out, &a->inv_freq, &a->H, &a->KV, &a->D, &a->rows};
      t.rows = &a->rows;
      t.args = a;
      track_rows_launch(std::move(t));
    }
  });
  return true;
}

bool CudaBackend::add_rms_norm(const void* x, const void* y, const void* w, void* sum, void* out, int64_t rows,
                               int64_t dim, float eps, DType dt) {
  if (rows == 0) return true;
  dispatch_float(dt, "add_rms_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int V = kVec<T>;
    unsigned blocks = unsigned(std::min<int64_t>(rows, int64_t(sm_count_) * 16));
    auto px = static_cast<const T*>(x), py = static_cast<const T*>(y), pw = static_cast<const T*>(w);
    auto ps = static_cast<T*>(sum), po = static_cast<T*>(out);
    const bool vec = dim % V == 0 && aligned16(x) && aligned16(y) && aligned16(w) && aligned16(sum) && aligned16(out);
    if (vec && dim / V <= 2 * kThreads)
      launch("add_rms_norm", rms_norm_reg_kernel<T, V, true, 2>, blocks, kThreads, 0, px, py, pw, ps, po, nullptr, rows,
             dim, eps);
    else if (vec && dim / V <= 4 * kThreads)
      launch("add_rms_norm", rms_norm_reg_kernel<T, V, true, 4>, blocks, kThreads, 0, px, py, pw, ps, po, nullptr, rows,
             dim, eps);
    else if (vec)
      launch("add_rms_norm", rms_norm_kernel<T, V, true>, blocks, kThreads, 0, px, py, pw, ps, po, nullptr, rows, dim,
             eps);
    else
      launch("add_rms_norm", rms_norm_kernel<T, 1, true>, blocks, kThreads, 0, px, py, pw, ps, po, nullptr, rows, dim,
             eps);
  });
  return true;
}

void CudaBackend::rms_norm_backward(const void* x, const void* w, const float* rstd, const void* dy, void* dx,
                                    float* dw, int64_t rows, int64_t dim, DType dt) {
  if (dim == 0) return;
  if (rows == 0) {
    fill(dw, DType::f32, dim, 0.f);
    return;
  }
  dispatch_float(dt, "rms_norm_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int V = kVec<T>;
    int64_t blocks = std::min<int64_t>(rows, int64_t(sm_count_) * 4);
    DeviceScratch partial(size_t(blocks * dim) * sizeof(float));
    const T* px = static_cast<const T*>(x);
    const T* pw = static_cast<const T*>(w);
    const T* pd = static_cast<const T*>(dy);
    T* pdx = static_cast<T*>(dx);
    if (dim % V == 0 && aligned16(x) && aligned16(w) && aligned16(dy) && aligned16(dx))
      launch("rms_norm_backward", rms_norm_backward_kernel<T, V>, unsigned(blocks), kThreads, 0, px, pw, rstd, pd, pdx,
             partial.as<float>(), rows, dim);
    else
      launch("rms_norm_backward", rms_norm_backward_kernel<T, 1>, unsigned(blocks), kThreads, 0, px, pw, rstd, pd, pdx,
             partial.as<float>(), rows, dim);
    launch("rms_norm_backward", sum_rows_f32_kernel, grid_for(dim), kThreads, 0, partial.as<const float>(), dw, blocks,
           dim);
  });
}

void CudaBackend::rope(const void* x, void* out, const float* inv_freq, int64_t B, int64_t T, int64_t H, int64_t D,
                       int64_t pos_offset, const int32_t* pos_at, float mscale, bool inverse, DType dt) {
  int64_t total = B * T * H * (D / 2);
  if (total == 0) return;
  dispatch_float(dt, "rope", [&](auto tag) {
    using S = typename decltype(tag)::type;
    launch("rope", rope_kernel<S>, grid_for(total), kThreads, 0, static_cast<const S*>(x), static_cast<S*>(out),
           inv_freq, T, H, D, pos_offset, pos_at, mscale, inverse, total);
  });
}

void CudaBackend::rope_at(const void* x, void* out, const float* inv_freq, const int32_t* positions, int64_t B,
                          int64_t T, int64_t H, int64_t D, float mscale, bool inverse, DType dt) {
  int64_t total = B * T * H * (D / 2);
  if (total == 0) return;
  dispatch_float(dt, "rope_at", [&](auto tag) {
    using S = typename decltype(tag)::type;
    launch("rope_at", rope_at_kernel<S>, grid_for(total), kThreads, 0, static_cast<const S*>(x), static_cast<S*>(out),
           inv_freq, positions, H, D, mscale, inverse, total);
  });
}

}  // namespace lmtune
