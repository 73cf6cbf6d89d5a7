#include "nn/attention.h"

namespace lmtune::nn {

Tensor Attention::forward(const Tensor& x, int64_t layer, int64_t pos_offset, KVCache* cache, bool decoding) const {
  const int64_t B = x.dim(0), T = x.dim(1);
  Linear lq = q.get(), lk = k.get(), lv = v.get();
  Tensor qt, kt, vt;
  if (decoding && lq.plain() && lk.plain() && lv.plain()) {
    std::vector<Tensor> qkv = ops::linear_group(x, {lq.weight, lk.weight, lv.weight});  // one launch
    qt = qkv[0], kt = qkv[1], vt = qkv[2];
  } else if (decoding && lq.quantized_like(lk) && lq.quantized_like(lv)) {
    std::vector<Tensor> qkv = ops::quantized_linear_group(x, {lq.packed(), lk.packed(), lv.packed()}, lq.format);
    qt = qkv[0], kt = qkv[1], vt = qkv[2];
  } else {
    AdapterInput in(x);  // q, k and v's adapters share one f32 cast of x, freed at the brace
    qt = lq.forward(in), kt = lk.forward(in), vt = lv.forward(in);
  }
  qt = ag::reshape(qt, {B, T, opt.n_head, opt.head_dim});
  kt = ag::reshape(kt, {B, T, opt.n_kv_head, opt.head_dim});
  vt = ag::reshape(vt, {B, T, opt.n_kv_head, opt.head_dim});
  if (q_norm.defined()) qt = q_norm.forward(qt);
  if (k_norm.defined()) kt = k_norm.forward(kt);

  KVCache::View kv;
  Tensor q_rot;
  const bool stored = decoding && cache->update_rotary(layer, qt, kt, vt, *inv_freq, q_rot, kv);  // rope + append
  if (stored) {
    qt = q_rot;
  } else if (const Tensor* pos_at = cache ? cache->position() : nullptr) {  // a recorded decode step
    qt = ops::rope(qt, *inv_freq, 0, 1.f, false, pos_at);
    kt = ops::rope(kt, *inv_freq, 0, 1.f, false, pos_at);
  } else {
    qt = ag::rope(qt, *inv_freq, pos_offset, 1.f);
    kt = ag::rope(kt, *inv_freq, pos_offset, 1.f);
  }
  Tensor a;
  if (cache) {
    if (!stored) kv = cache->update(layer, kt, vt);
    int64_t w = kv.positional ? opt.window : 0;
    if (kv.q_offset_at.defined())
      a = ops::attention(qt, kv.k, kv.v, opt.scale, true, w, kv.q_offset, &kv.q_offset_at).out;
    else
      a = ag::attention(qt, kv.k, kv.v, opt.scale, true, w, kv.q_offset);
  } else {
    a = ag::attention(qt, kt, vt, opt.scale, true, opt.window, 0);
  }
  return o.forward(ag::reshape(a, {B, T, opt.n_head * opt.head_dim}));
}

}  // namespace lmtune::nn
