// DenseKVCache's held rows out and in, for prompt cache files: copies through the CPU, one plane
// at a time, in the cache's own (B, rows, n_kv_head, width) order (the file's order is the file
// module's business).
#include <string>

#include "core/error.h"
#include "ops/ops.h"
#include "runtime/kv_cache.h"

namespace lmtune {

std::vector<Tensor> DenseKVCache::held_planes(int64_t layer) {
  LMT_CHECK(layer >= 0 && layer < n_layer_, "[kv_cache] layer ", layer, " of ", n_layer_);
  LMT_CHECK(max_size_ == 0, "[kv_cache] a rotating cache (max_kv_size ", max_size_, ") cannot be saved");
  std::vector<Tensor> out;
  const std::vector<std::pair<int64_t, DType>> specs = plane_specs();
  std::vector<Tensor*> bufs = planes(layer);
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto [W, dt] = specs[i];
    Tensor rows = Tensor::empty({batch_, offset_, n_kv_head_, W}, dt, Device::cpu);
    for (int64_t b = 0; offset_ > 0 && b < batch_; ++b) {
      Tensor src = bufs[i]->slice_rows(b, b + 1).reshape({capacity_, n_kv_head_, W}).slice_rows(0, offset_);
      Tensor dst = rows.slice_rows(b, b + 1).reshape({offset_, n_kv_head_, W});
      ops::copy_into(dst, ops::to(src, Device::cpu));
    }
    out.push_back(rows);
  }
  return out;
}

void DenseKVCache::load_held(const std::vector<std::vector<Tensor>>& layers, int64_t n, bool quantized) {
  LMT_CHECK(offset_ == 0 && !quantized_ && max_size_ == 0 && !position_.defined(),
            "[kv_cache] only an empty, non-rotating cache can be loaded");
  LMT_CHECK(!quantized || quant_.enabled(), "[kv_cache] quantized entries need the cache's quantization set first");
  LMT_CHECK(int64_t(layers.size()) == n_layer_, "[kv_cache] ", layers.size(), " layers given, the model has ",
            n_layer_);
  LMT_CHECK(n >= 0, "[kv_cache] a negative token count ", n);
  if (quantized) {
    kq_.assign(size_t(n_layer_), {});
    vq_.assign(size_t(n_layer_), {});
    for (Tensor& t : k_) t = Tensor();
    for (Tensor& t : v_) t = Tensor();
  }
  quantized_ = quantized;
  capacity_ = 0;
  const std::vector<std::pair<int64_t, DType>> specs = plane_specs();
  for (int64_t l = 0; l < n_layer_; ++l) {
    const std::vector<Tensor>& given = layers[size_t(l)];
    LMT_CHECK(given.size() == specs.size(), "[kv_cache] layer ", l, ": ", given.size(), " planes given, expected ",
              specs.size());
    for (size_t i = 0; i < specs.size(); ++i) {
      const Shape want{batch_, n, n_kv_head_, specs[i].first};
      LMT_CHECK(given[i].shape() == want && given[i].dtype() == specs[i].second, "[kv_cache] layer ", l, " plane ", i,
                ": ", given[i].describe(), ", expected ", dtype_name(specs[i].second), " of ", batch_, "x", n, "x",
                n_kv_head_, "x", specs[i].first);
    }
    for (Tensor* t : planes(l)) *t = Tensor();
  }
  reserve(n);  // zero planes of capacity >= n
  for (int64_t l = 0; l < n_layer_ && n > 0; ++l) {
    std::vector<Tensor> on_device;
    for (const Tensor& t : layers[size_t(l)]) on_device.push_back(ops::to(t, device_));
    store_rows(l, 0, on_device);
  }
  advance(n);  // as after a forward: converts to quantized once n >= quantized_kv_start
}

}  // namespace lmtune
