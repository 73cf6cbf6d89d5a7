// Appends go through ops::copy_rows_into (one device copy per batch row); for batch 1 the
// attended prefix is a view of the buffer, for larger batches a packed copy. Quantized (--kv-bits),
// the new rows are quantized on the device before the copy and the held prefix is dequantized into
// a scratch (S, n_kv_head, head_dim) per layer for the attention: one extra pass over the packed
// cache per layer and step, the dense copy alive only for that layer's attention.
#include "runtime/kv_cache.h"

#include <algorithm>
#include <utility>

#include "core/error.h"
#include "ops/ops.h"

namespace lmtune {

DenseKVCache::DenseKVCache(const ModelConfig& cfg, Device device, DType dtype, int64_t batch, int64_t max_size,
                           int64_t keep, int64_t step)
    : n_layer_(cfg.n_layer),
      n_kv_head_(cfg.n_kv_head),
      head_dim_(cfg.head_dim),
      batch_(batch),
      device_(device),
      dtype_(dtype),
      max_size_(max_size),
      keep_(keep),
      step_(step) {
  LMT_CHECK(batch >= 1 && step >= 1 && max_size >= 0 && keep >= 0, "[kv_cache] bad sizes: batch ", batch, ", step ",
            step, ", max_size ", max_size, ", keep ", keep);
  LMT_CHECK(max_size == 0 || max_size > keep, "[kv_cache] max_kv_size ", max_size, " must exceed the ", keep,
            " kept sink tokens");
  k_.resize(size_t(n_layer_));
  v_.resize(size_t(n_layer_));
}

int64_t DenseKVCache::size() const { return max_size_ > 0 ? std::min(offset_, max_size_) : offset_; }

int64_t DenseKVCache::max_step() const {
  if (max_size_ == 0) return INT64_MAX;
  return std::max<int64_t>(1, max_size_ - offset_);  // linear until full, then one at a time
}

void DenseKVCache::reserve(int64_t n) {
  if (n <= capacity_) return;
  int64_t cap = (n + step_ - 1) / step_ * step_;
  if (max_size_ > 0) cap = std::min(cap, max_size_);
  const std::vector<std::pair<int64_t, DType>> specs = plane_specs();
  const int64_t held = std::min(size(), capacity_);
  for (int64_t l = 0; l < n_layer_; ++l) {
    std::vector<Tensor*> bufs = planes(l);
    for (size_t i = 0; i < bufs.size(); ++i) {
      const auto [W, dt] = specs[i];
      Tensor grown = ops::zeros({batch_, cap, n_kv_head_, W}, dt, device_);
      for (int64_t b = 0; held > 0 && b < batch_; ++b) {
        Tensor dst = grown.slice_rows(b, b + 1).reshape({cap, n_kv_head_, W});
        Tensor src = bufs[i]->slice_rows(b, b + 1).reshape({capacity_, n_kv_head_, W}).slice_rows(0, held);
        ops::copy_rows_into(dst, 0, src);
      }
      *bufs[i] = grown;
    }
  }
  capacity_ = cap;
}

std::vector<Tensor*> DenseKVCache::planes(int64_t layer) {
  const size_t l = size_t(layer);
  if (!quantized_) return {&k_[l], &v_[l]};
  return {&kq_[l].wq, &kq_[l].scales, &kq_[l].biases, &vq_[l].wq, &vq_[l].scales, &vq_[l].biases};
}

std::vector<std::pair<int64_t, DType>> DenseKVCache::plane_specs() const {
  if (!quantized_) return {{head_dim_, dtype_}, {head_dim_, dtype_}};
  const std::pair<int64_t, DType> codes{head_dim_ * quant_.bits / 32, DType::u32},
      groups{head_dim_ / quant_.group_size, dtype_};
  return {codes, groups, groups, codes, groups, groups};
}

void DenseKVCache::store_rows(int64_t layer, int64_t row, const std::vector<Tensor>& news) {
  std::vector<Tensor*> bufs = planes(layer);
  const int64_t cap = capacity_, H = n_kv_head_;
  for (size_t i = 0; i < bufs.size(); ++i) {
    const int64_t T = news[i].dim(1), W = news[i].dim(3);
    for (int64_t b = 0; b < batch_; ++b) {
      Tensor dst = bufs[i]->slice_rows(b, b + 1).reshape({cap, H, W});
      ops::copy_rows_into(dst, row, news[i].slice_rows(b, b + 1).reshape({T, H, W}));
    }
  }
}

KVCache::View DenseKVCache::update(int64_t layer, const Tensor& k, const Tensor& v) {
  LMT_CHECK(layer >= 0 && layer < n_layer_, "[kv_cache] layer ", layer, " of ", n_layer_);
  LMT_CHECK(k.ndim() == 4 && k.dim(0) == batch_ && k.dim(2) == n_kv_head_ && k.dim(3) == head_dim_ &&
                k.shape() == v.shape() && k.dtype() == dtype_ && v.dtype() == dtype_,
            "[kv_cache] k ", k.describe(), ", v ", v.describe(), " for a cache of batch ", batch_, ", ", n_kv_head_,
            " kv heads of ", head_dim_, ", ", dtype_name(dtype_));
  int64_t T = k.dim(1);
  if (position_.defined()) return update_at(layer, k, v);
  bool linear = max_size_ == 0 || offset_ + T <= max_size_;
  LMT_CHECK(linear || T == 1, "[kv_cache] a rotating cache at offset ", offset_, " takes one token at a time, got ", T,
            " (see max_step)");
  int64_t row = offset_;  // where the new tokens go
  if (linear) {
    reserve(offset_ + T);
  } else {
    row = keep_ + (offset_ - keep_) % (max_size_ - keep_);  // the oldest non-sink entry
  }
  const int64_t cap = capacity_, H = n_kv_head_, D = head_dim_;
  if (quantized_) {  // MLX's affine codes of each new (token, kv head) row of head_dim values
    const int64_t Wq = D * quant_.bits / 32, G = D / quant_.group_size;
    std::vector<Tensor> news;
    for (const Tensor* x : {&k, &v}) {
      ops::AffineQuantized q = ops::quantize_affine(x->reshape({batch_ * T * H, D}), quant_.bits, quant_.group_size);
      news.push_back(q.wq.reshape({batch_, T, H, Wq}));
      news.push_back(q.scales.reshape({batch_, T, H, G}));
      news.push_back(q.biases.reshape({batch_, T, H, G}));
    }
    store_rows(layer, row, news);
  } else {
    store_rows(layer, row, {k, v});
  }
  // Attend over every held entry. Before wrapping, entry index == position; afterwards the T == 1
  // query comes after all entries, so a causal mask with q_offset = S - 1 masks nothing and the
  // rotated order does not matter (rotary positions were applied at write time).
  int64_t S = linear ? offset_ + T : max_size_;
  if (quantized_) {  // the held entries dequantized into the attention's input (freed after it)
    View view;
    view.q_offset = linear ? offset_ : S - 1;
    view.positional = linear;
    Tensor* outs[2] = {&view.k, &view.v};
    for (int i = 0; i < 2; ++i) {
      if (batch_ == 1) {
        *outs[i] = dequantized(layer, 3 * i, 0, S).reshape({1, S, H, D});
        continue;
      }
      *outs[i] = ops::empty({batch_, S, H, D}, dtype_, device_);
      for (int64_t b = 0; b < batch_; ++b) {
        Tensor dst = outs[i]->slice_rows(b, b + 1).reshape({S, H, D});
        ops::copy_rows_into(dst, 0, dequantized(layer, 3 * i, b, S));
      }
    }
    return view;
  }
  if (batch_ == 1) {
    View view = prefix_view(layer, S, linear ? offset_ : S - 1);
    view.positional = linear;
    return view;
  }
  View view;
  view.q_offset = linear ? offset_ : S - 1;
  view.positional = linear;
  Tensor* outs[2] = {&view.k, &view.v};
  const Tensor* bufs[2] = {&k_[size_t(layer)], &v_[size_t(layer)]};
  for (int i = 0; i < 2; ++i) {  // batch > 1: a packed copy of each row's prefix
    Tensor packed = ops::empty({batch_, S, H, D}, dtype_, device_);
    for (int64_t b = 0; b < batch_; ++b) {
      Tensor dst = packed.slice_rows(b, b + 1).reshape({S, H, D});
      ops::copy_rows_into(dst, 0, bufs[i]->slice_rows(b, b + 1).reshape({cap, H, D}).slice_rows(0, S));
    }
    *outs[i] = packed;
  }
  return view;
}

Tensor DenseKVCache::dequantized(int64_t layer, int first_plane, int64_t b, int64_t S) {
  std::vector<Tensor*> bufs = planes(layer);
  const int64_t cap = capacity_, H = n_kv_head_;
  Tensor p[3];
  for (int j = 0; j < 3; ++j) {
    const Tensor& buf = *bufs[size_t(first_plane + j)];
    const int64_t W = buf.dim(3);
    p[j] = buf.slice_rows(b, b + 1).reshape({cap, H, W}).slice_rows(0, S).reshape({S * H, W});
  }
  const QuantFormat f{QuantMode::affine, quant_.bits, quant_.group_size};
  return ops::dequantize(p[0], p[1], p[2], f, p[1].dtype(), "kv_cache").reshape({S, H, head_dim_});
}

void DenseKVCache::set_quantization(const KVQuantization& q) {
  const int b = q.bits;
  LMT_CHECK(b == 0 || b == 2 || b == 3 || b == 4 || b == 5 || b == 6 || b == 8,
            "[kv_cache] kv bits must be 2, 3, 4, 5, 6 or 8 (or 0: off), got ", b);
  LMT_CHECK(q.group_size == 32 || q.group_size == 64 || q.group_size == 128,
            "[kv_cache] kv group size must be 32, 64 or 128, got ", q.group_size);
  LMT_CHECK(b == 0 || head_dim_ % q.group_size == 0, "[kv_cache] kv group size ", q.group_size,
            " does not divide the model's head_dim ", head_dim_);
  LMT_CHECK(q.start >= 0, "[kv_cache] quantized kv start must be >= 0, got ", q.start);
  LMT_CHECK(offset_ == 0 && !quantized_, "[kv_cache] set the quantization before the first token");
  LMT_CHECK(b == 0 || !position_.defined(), "[kv_cache] a quantized cache cannot take a run-time position");
  quant_ = q;
}

void DenseKVCache::quantize_held() {
  const int64_t cap = capacity_, H = n_kv_head_, D = head_dim_, held = std::min(size(), capacity_);
  kq_.assign(size_t(n_layer_), {});
  vq_.assign(size_t(n_layer_), {});
  quantized_ = true;  // planes() and plane_specs() now name the packed buffers
  const std::vector<std::pair<int64_t, DType>> specs = plane_specs();
  for (int64_t l = 0; l < n_layer_; ++l) {
    std::vector<Tensor*> bufs = planes(l);
    for (size_t i = 0; i < bufs.size(); ++i)
      *bufs[i] = ops::zeros({batch_, cap, H, specs[i].first}, specs[i].second, device_);  // zeros dequantize to 0
    if (held > 0) {
      std::vector<Tensor> news;
      for (Tensor* dense : {&k_[size_t(l)], &v_[size_t(l)]}) {
        Tensor rows = ops::empty({batch_, held, H, D}, dtype_, device_);
        for (int64_t b = 0; b < batch_; ++b) {
          Tensor dst = rows.slice_rows(b, b + 1).reshape({held, H, D});
          ops::copy_rows_into(dst, 0, dense->slice_rows(b, b + 1).reshape({cap, H, D}).slice_rows(0, held));
        }
        ops::AffineQuantized q =
            ops::quantize_affine(rows.reshape({batch_ * held * H, D}), quant_.bits, quant_.group_size);
        news.push_back(q.wq.reshape({batch_, held, H, specs[0].first}));
        news.push_back(q.scales.reshape({batch_, held, H, specs[1].first}));
        news.push_back(q.biases.reshape({batch_, held, H, specs[2].first}));
      }
      store_rows(l, 0, news);
    }
    k_[size_t(l)] = Tensor();
    v_[size_t(l)] = Tensor();
  }
}

bool DenseKVCache::update_rotary(int64_t layer, const Tensor& q, const Tensor& k, const Tensor& v,
                                 const Tensor& inv_freq, Tensor& q_rot, View& view) {
  if (k.ndim() != 4 || k.dim(0) != 1 || k.dtype() != v.dtype()) return false;
  return rotary(layer, k.dim(1), k.dtype(), q_rot, view,
                [&](Tensor& kb, Tensor& vb, int64_t row, const Tensor* pos_at) {
                  return ops::rope_append(q, k, v, inv_freq, row, pos_at, kb, vb);
                });
}

bool DenseKVCache::update_rotary_by(int64_t layer, DType dtype, const RotaryWriter& write, Tensor& q_rot, View& view) {
  return rotary(layer, 1, dtype, q_rot, view, write);
}

bool DenseKVCache::rotary(int64_t layer, int64_t T, DType dtype, Tensor& q_rot, View& view, const RotaryWriter& write) {
  LMT_CHECK(layer >= 0 && layer < n_layer_, "[kv_cache] layer ", layer, " of ", n_layer_);
  if (quantized_ || batch_ != 1 || dtype != dtype_) return false;
  const int64_t H = n_kv_head_, D = head_dim_;
  const bool bound = position_.defined();
  if (!bound && max_size_ > 0 && offset_ + T > max_size_) return false;  // about to wrap: the plain path
  make_room(T);
  const int64_t cap = capacity_;
  Tensor kb = k_[size_t(layer)].reshape({cap, H, D}), vb = v_[size_t(layer)].reshape({cap, H, D});
  q_rot = write(kb, vb, bound ? 0 : offset_, bound ? &position_ : nullptr);
  if (!q_rot.defined()) return false;
  view = bound ? prefix_view(layer, cap, 0) : prefix_view(layer, offset_ + T, offset_);
  return true;
}

bool DenseKVCache::decode_planes(int64_t layer, DType dtype, Tensor& k, Tensor& v) {
  LMT_CHECK(layer >= 0 && layer < n_layer_, "[kv_cache] layer ", layer, " of ", n_layer_);
  if (quantized_ || batch_ != 1 || dtype != dtype_ || position_.defined() || max_size_ > 0) return false;
  reserve(offset_ + 1);
  k = k_[size_t(layer)].reshape({capacity_, n_kv_head_, head_dim_});
  v = v_[size_t(layer)].reshape({capacity_, n_kv_head_, head_dim_});
  return true;
}

void DenseKVCache::make_room(int64_t T) {
  if (!position_.defined()) return reserve(offset_ + T);
  // A bound position: a recorded step must not allocate or move the buffers.
  LMT_CHECK(offset_ + T <= capacity_, "[kv_cache] a run-time position needs capacity for ", offset_ + T,
            " entries reserved first, have ", capacity_);
}

KVCache::View DenseKVCache::prefix_view(int64_t layer, int64_t S, int64_t q_offset) const {
  const int64_t cap = capacity_, H = n_kv_head_, D = head_dim_;
  View view;
  view.q_offset = q_offset;
  view.positional = true;
  view.q_offset_at = position_;  // undefined unless bound
  view.k = k_[size_t(layer)].reshape({cap, H, D}).slice_rows(0, S).reshape({1, S, H, D});
  view.v = v_[size_t(layer)].reshape({cap, H, D}).slice_rows(0, S).reshape({1, S, H, D});
  return view;
}

void DenseKVCache::bind_position(const Tensor& pos) {
  LMT_CHECK(batch_ == 1 && max_size_ == 0 && !quant_.enabled(),
            "[kv_cache] a run-time position needs batch 1, no rotation and no quantization (batch ", batch_,
            ", max_kv_size ", max_size_, ", kv bits ", quant_.bits, ")");
  LMT_CHECK(pos.dtype() == DType::i32 && pos.numel() == 1 && pos.device() == device_,
            "[kv_cache] the position must be one i32 on ", device_name(device_), ", got ", pos.describe());
  position_ = pos;
}

KVCache::View DenseKVCache::update_at(int64_t layer, const Tensor& k, const Tensor& v) {
  make_room(k.dim(1));
  const int64_t T = k.dim(1), cap = capacity_, H = n_kv_head_, D = head_dim_;
  for (auto [buf, x] : {std::pair{&k_[size_t(layer)], &k}, std::pair{&v_[size_t(layer)], &v}}) {
    Tensor dst = buf->reshape({cap, H, D});
    ops::copy_rows_at(dst, position_, x->reshape({T, H, D}));
  }
  return prefix_view(layer, cap, 0);
}

void DenseKVCache::advance(int64_t T) {
  offset_ += T;
  // As mlx-lm's maybe_quantize_kv_cache after each model call: offset >= quantized_kv_start.
  if (quant_.enabled() && !quantized_ && offset_ >= quant_.start) quantize_held();
}

bool DenseKVCache::can_trim_to(int64_t n) const {
  return n >= 0 && n <= offset_ && (max_size_ == 0 || offset_ <= max_size_);
}

void DenseKVCache::trim_to(int64_t n) {
  if (n == 0) {  // a reset is always possible; a quantized cache starts over dense, as a new one would
    offset_ = 0;
    if (quantized_) {
      kq_.clear();
      vq_.clear();
      quantized_ = false;
      capacity_ = 0;
    }
    return;
  }
  LMT_CHECK(can_trim_to(n), "[kv_cache] cannot trim a cache at offset ", offset_, " to ", n,
            max_size_ > 0 && offset_ > max_size_ ? " (the rotating cache has wrapped)" : "");
  offset_ = n;
}

size_t DenseKVCache::nbytes() const {
  size_t n = 0;
  for (const Tensor& t : k_) n += t.defined() ? t.nbytes() : 0;
  for (const Tensor& t : v_) n += t.defined() ? t.nbytes() : 0;
  for (const std::vector<ops::AffineQuantized>* qs : {&kq_, &vq_})
    for (const ops::AffineQuantized& q : *qs)
      for (const Tensor* t : {&q.wq, &q.scales, &q.biases}) n += t->defined() ? t->nbytes() : 0;
  return n;
}

}  // namespace lmtune
