// DenseKVCache::copy_prefix: the held rows [0, n) of every plane copied into a fresh cache's
// buffers with ops::copy_rows_into, on the cache's device (no trip through the host).
#include "core/error.h"
#include "ops/ops.h"
#include "runtime/kv_cache.h"

namespace lmtune {

std::unique_ptr<DenseKVCache> DenseKVCache::copy_prefix(int64_t n) {
  LMT_CHECK(max_size_ == 0 && !position_.defined(), "[kv_cache] only a non-rotating, unbound cache can be copied");
  LMT_CHECK(n >= 1 && n <= offset_, "[kv_cache] cannot copy ", n, " tokens of a cache holding ", offset_);
  ModelConfig cfg;
  cfg.n_layer = n_layer_;
  cfg.n_kv_head = n_kv_head_;
  cfg.head_dim = head_dim_;
  auto out = std::make_unique<DenseKVCache>(cfg, device_, dtype_, batch_, 0, keep_, step_);
  out->quant_ = quant_;
  out->quantized_ = quantized_;
  if (quantized_) {
    out->kq_.assign(size_t(n_layer_), {});
    out->vq_.assign(size_t(n_layer_), {});
  }
  out->reserve(n);
  for (int64_t l = 0; l < n_layer_; ++l) {
    std::vector<Tensor*> src = planes(l), dst = out->planes(l);
    for (size_t i = 0; i < src.size(); ++i) {
      const int64_t W = src[i]->dim(3);
      for (int64_t b = 0; b < batch_; ++b) {
        Tensor d = dst[i]->slice_rows(b, b + 1).reshape({out->capacity_, n_kv_head_, W});
        ops::copy_rows_into(d, 0, src[i]->slice_rows(b, b + 1).reshape({capacity_, n_kv_head_, W}).slice_rows(0, n));
      }
    }
  }
  out->offset_ = n;
  return out;
}

}  // namespace lmtune
