// A packed batch's decoding rows in batched launches (ops.h, decode_rows_attention): the rope and
// cache append of every row in one kernel, then their attention in one, instead of three launches
// a sequence and layer.
#include <algorithm>

#include "backend/backend.h"
#include "core/error.h"
#include "ops/ops.h"

namespace lmtune::ops {

bool has_decode_rows(Device d) { return backend(d).has_decode_rows(); }

bool decode_rows_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& inv_freq,
                           const std::vector<DecodeRowRef>& rows, float scale, int64_t window, Tensor& out) {
  if (!has_decode_rows(q.device())) return false;  // the CPU: no kernels, so no checks either
  LMT_CHECK(q.ndim() == 3 && k.ndim() == 3 && k.shape() == v.shape() && q.dim(0) == k.dim(0) && q.dim(2) == k.dim(2) &&
                q.dtype() == k.dtype() && k.dtype() == v.dtype() && q.device() == k.device() &&
                k.device() == v.device(),
            "[decode_rows_attention] q ", q.describe(), ", k ", k.describe(), ", v ", v.describe());
  const int64_t N = q.dim(0), H = q.dim(1), KV = k.dim(1), D = q.dim(2);
  LMT_CHECK(out.ndim() == 2 && out.dim(0) == N && out.dim(1) == H * D && out.dtype() == q.dtype() &&
                out.device() == q.device(),
            "[decode_rows_attention] out ", out.describe(), " for q ", q.describe());
  LMT_CHECK(inv_freq.dtype() == DType::f32 && inv_freq.numel() * 2 == D && inv_freq.device() == q.device(),
            "[decode_rows_attention] inv_freq ", inv_freq.describe(), " for head_dim ", D);
  for (const DecodeRowRef& r : rows) {
    LMT_CHECK(r.row >= 0 && r.row < N && r.pos >= 0 && r.k_cache.ndim() == 3 &&
                  r.k_cache.shape() == r.v_cache.shape() && r.k_cache.dim(1) == KV && r.k_cache.dim(2) == D &&
                  r.pos < r.k_cache.dim(0) && r.k_cache.dtype() == q.dtype() && r.v_cache.dtype() == q.dtype() &&
                  r.k_cache.device() == q.device() && r.v_cache.device() == q.device(),
              "[decode_rows_attention] row ", r.row, " at ", r.pos, ": cache ", r.k_cache.describe(), " for k ",
              k.describe());
  }
  if (rows.empty()) return true;
  if ((D != 32 && D != 64 && D != 128) || rows.size() > size_t(1) << 20) return false;  // attention_rows' sizes
  Backend& be = backend(q.device());
  Tensor q_rot = empty(q.shape(), q.dtype(), q.device());  // only the listed rows are written and read
  for (size_t first = 0; first < rows.size(); first += Backend::DecodeRows::kMax) {
    Backend::DecodeRows d;
    d.n = int(std::min<size_t>(Backend::DecodeRows::kMax, rows.size() - first));
    for (int i = 0; i < d.n; ++i) {
      const DecodeRowRef& r = rows[first + size_t(i)];
      d.row[i] = int32_t(r.row), d.pos[i] = int32_t(r.pos);
      d.k[i] = r.k_cache.raw(), d.v[i] = r.v_cache.raw();
    }
    if (!be.rope_append_rows(q.raw(), k.raw(), v.raw(), q_rot.raw(), static_cast<const float*>(inv_freq.raw()), H, KV,
                             D, d, q.dtype())) {
      LMT_CHECK(first == 0, "[decode_rows_attention] the backend refused a later chunk of rows");
      return false;
    }
    LMT_CHECK(be.attention_rows(q_rot.raw(), out.raw(), d, H, KV, D, scale, window, q.dtype()),
              "[decode_rows_attention] the backend stored rows it cannot attend over");
  }
  return true;
}

}  // namespace lmtune::ops
