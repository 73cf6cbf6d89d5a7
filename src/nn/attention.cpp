#include "nn/attention.h"

#include "core/error.h"
#include "core/runtime_config.h"

namespace lmtune::nn {

void Attention::split_qkv(bool decoding, Linear& lq, Linear& lk, Linear& lv, Linear& whole) const {
  const int64_t nq = opt.n_head * opt.head_dim, nkv = opt.n_kv_head * opt.head_dim;
  if (qkv.weight) {
    Linear l = qkv.get();
    if (!decoding || !(l.plain() || l.plain_quantized()))  // one product (and adapter), then its column blocks
      whole = l;
    else  // the fused weight's row blocks (views) take the decoding kernels below
      lq = l.rows(0, nq), lk = l.rows(nq, nkv), lv = l.rows(nq + nkv, nkv);
  } else {
    lq = q.get(), lk = k.get(), lv = v.get();
  }
}

bool Attention::rotary_by(int64_t layer, KVCache& cache, DType dt, const RmsNorm* in_norm, const RotaryProduct& product,
                          Tensor& q_rot, KVCache::View& kv) const {
  if (!runtime_config().fused_rope || q_norm.defined() || k_norm.defined() || rope_perm || !inv_freq) return false;
  Linear lq, lk, lv, whole;
  split_qkv(true, lq, lk, lv, whole);
  if (whole.weight.defined() || !lq.quantized_like(lk) || !lq.quantized_like(lv)) return false;
  const FusedNorm norm(in_norm);
  auto write = [&](Tensor& kb, Tensor& vb, int64_t row, const Tensor* pos_at) {
    return product({lq.packed(), lk.packed(), lv.packed()}, lq.format, norm.get(), {inv_freq, &kb, &vb, row, pos_at});
  };
  if (!cache.update_rotary_by(layer, dt, write, q_rot, kv)) return false;
  q_rot = q_rot.reshape({1, 1, opt.n_head, opt.head_dim});
  return true;
}

bool Attention::project_rotary(const Tensor& x, int64_t layer, KVCache& cache, const RmsNorm* in_norm, Tensor& q_rot,
                               KVCache::View& kv) const {
  auto product = [&](const std::vector<ops::QuantizedWeight>& qkv, const QuantFormat& f, const ops::InputNorm* norm,
                     const ops::RopeAppend& rope) { return ops::quantized_qkv_rope_append(x, qkv, f, norm, rope); };
  return rotary_by(layer, cache, x.dtype(), in_norm, product, q_rot, kv);
}

bool Attention::project_by(int64_t layer, KVCache& cache, DType dt, const RmsNorm& in_norm, const ProjectRun& run,
                           Projected& pre) const {
  auto product = [&](const std::vector<ops::QuantizedWeight>& qkv, const QuantFormat& f, const ops::InputNorm* norm,
                     const ops::RopeAppend& rope) {
    Tensor q;
    if (!norm) return q;  // the chain's fourth phase always takes an input norm: without one it declines
    const ops::DecodeChainNext next{qkv, *norm, rope, &q};
    return run(next, f) ? q : Tensor();
  };
  return rotary_by(layer, cache, dt, &in_norm, product, pre.q_rot, pre.kv);
}

void Attention::project(const Tensor& x_in, bool decoding, Tensor& qt, Tensor& kt, Tensor& vt,
                        const RmsNorm* in_norm) const {
  const int64_t B = x_in.dim(0), T = x_in.dim(1);
  const int64_t nq = opt.n_head * opt.head_dim, nkv = opt.n_kv_head * opt.head_dim;
  Linear lq, lk, lv, whole;
  split_qkv(decoding, lq, lk, lv, whole);
  const bool dense_group = !whole.weight.defined() && decoding && lq.plain() && lk.plain() && lv.plain();
  const bool quantized_group =
      !whole.weight.defined() && !dense_group && decoding && lq.quantized_like(lk) && lq.quantized_like(lv);
  // The input norm: inside the grouped quantized products' launch where they run, else here.
  const Tensor x = in_norm && !quantized_group ? in_norm->forward(x_in) : x_in;
  if (whole.weight.defined()) {
    Tensor y = whole.forward(x);
    qt = ag::slice_last(y, 0, nq), kt = ag::slice_last(y, nq, nkv), vt = ag::slice_last(y, nq + nkv, nkv);
  } else if (dense_group) {
    std::vector<Tensor> qkv = ops::linear_group(x, {lq.weight, lk.weight, lv.weight});  // one launch
    qt = qkv[0], kt = qkv[1], vt = qkv[2];
  } else if (quantized_group) {
    const FusedNorm norm(in_norm);
    std::vector<Tensor> qkv =
        ops::quantized_linear_group(x, {lq.packed(), lk.packed(), lv.packed()}, lq.format, norm.get());
    qt = qkv[0], kt = qkv[1], vt = qkv[2];
  } else {
    AdapterInput in(x);  // q, k and v's adapters share one f32 cast of x, freed at the brace
    qt = lq.forward(in), kt = lk.forward(in), vt = lv.forward(in);
  }
  if (qk_norm_whole) {  // before the heads are split (olmo2)
    if (q_norm.defined()) qt = q_norm.forward(qt);
    if (k_norm.defined()) kt = k_norm.forward(kt);
  }
  qt = ag::reshape(qt, {B, T, opt.n_head, opt.head_dim});
  kt = ag::reshape(kt, {B, T, opt.n_kv_head, opt.head_dim});
  vt = ag::reshape(vt, {B, T, opt.n_kv_head, opt.head_dim});
  if (!qk_norm_whole) {
    if (q_norm.defined()) qt = q_norm.forward(qt);
    if (k_norm.defined()) kt = k_norm.forward(kt);
  }
  if (rope_perm) {  // each output is one input times 1 (or longrope's attention factor)
    const int64_t D = opt.head_dim;
    qt = ag::reshape(ag::matmul(ag::reshape(qt, {B * T * opt.n_head, D}), *rope_perm), {B, T, opt.n_head, D});
    kt = ag::reshape(ag::matmul(ag::reshape(kt, {B * T * opt.n_kv_head, D}), *rope_perm), {B, T, opt.n_kv_head, D});
  }
}

Tensor Attention::forward(const Tensor& x, int64_t layer, int64_t pos_offset, KVCache* cache, bool decoding,
                          const Segments* seg, const DecodeFusion* fuse) const {
  const int64_t B = x.dim(0), T = x.dim(1);
  LMT_CHECK(!fuse || (decoding && cache && !seg), "[attention] the decoding fusions need a decoding step with a cache");
  const RmsNorm* in_norm = fuse ? fuse->in_norm : nullptr;
  Tensor qt, kt, vt, q_rot;
  KVCache::View kv;
  if (fuse && fuse->pre) q_rot = fuse->pre->q_rot, kv = fuse->pre->kv;  // projected by the launch before
  // One token's rope and cache append inside the q/k/v products' launch where it runs (RuntimeConfig::fused_rope).
  bool stored = (fuse && fuse->pre) ||
                (decoding && cache && !seg && B == 1 && T == 1 && project_rotary(x, layer, *cache, in_norm, q_rot, kv));
  if (!stored) project(x, decoding, qt, kt, vt, in_norm);
  if (seg) {  // packed rows: no cache, positions per token, attention within each segment
    LMT_CHECK(!cache && pos_offset == 0, "[attention] packed rows take no cache and no position offset");
    qt = ag::rope_at(qt, *inv_freq, seg->positions, 1.f);
    kt = ag::rope_at(kt, *inv_freq, seg->positions, 1.f);
    Tensor a = ag::attention(qt, kt, vt, opt.scale, true, opt.window, 0, &seg->ids, opt.softcap);
    return o.forward(ag::reshape(a, {B, T, opt.n_head * opt.head_dim}));
  }

  if (!stored) stored = decoding && cache->update_rotary(layer, qt, kt, vt, *inv_freq, q_rot, kv);  // rope + append
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
      a = ops::attention(qt, kv.k, kv.v, opt.scale, true, w, kv.q_offset, &kv.q_offset_at, nullptr, opt.softcap).out;
    else
      a = ag::attention(qt, kv.k, kv.v, opt.scale, true, w, kv.q_offset, nullptr, opt.softcap);
  } else {
    a = ag::attention(qt, kt, vt, opt.scale, true, opt.window, 0, nullptr, opt.softcap);
  }
  a = ag::reshape(a, {B, T, opt.n_head * opt.head_dim});
  if (fuse && fuse->before_o) return a;
  return output(a, fuse ? fuse->residual : nullptr);
}

Tensor Attention::output(const Tensor& a, const Tensor* residual) const {
  if (!residual) return o.forward(a);
  const Linear lo = o.get();
  if (lo.plain_quantized()) return ops::quantized_linear_add(a, lo.packed(), *residual, lo.format);
  return ag::add(*residual, o.forward(a));
}

Tensor Attention::forward_packed(const Tensor& x, int64_t layer, const std::vector<PackedSpan>& spans,
                                 bool decoding) const {
  LMT_CHECK(x.ndim() == 3 && x.dim(0) == 1, "[attention] packed rows must be (1, N, n_embd), got ", x.describe());
  const int64_t N = x.dim(1), H = opt.n_head, Hkv = opt.n_kv_head, D = opt.head_dim;
  Tensor qt, kt, vt;
  project(x, decoding, qt, kt, vt);
  // Rows of the packed projections as (N, heads, head_dim): a span is a contiguous row range.
  const Tensor q_rows = qt.reshape({N, H, D}), k_rows = kt.reshape({N, Hkv, D}), v_rows = vt.reshape({N, Hkv, D});
  Tensor out = ops::empty({N, H * D}, qt.dtype(), qt.device());  // every row is written below
  // Decoding rows (a span of one token over a plain dense cache): their rope, cache append and
  // attention in two launches for all of them where the backend has the kernels (CUDA), rather than
  // three a sequence; the other spans (prefill chunks) below, one by one. Where the backend lacks
  // those kernels (the CPU) the rows are not even gathered.
  std::vector<bool> done(spans.size(), false);
  if (spans.size() > 1 && opt.softcap == 0.f && ops::has_decode_rows(x.device())) {
    std::vector<ops::DecodeRowRef> rows;
    std::vector<size_t> which;
    for (size_t i = 0; i < spans.size(); ++i) {
      const PackedSpan& s = spans[i];
      Tensor kc, vc;
      if (s.length != 1 || !s.cache->decode_planes(layer, qt.dtype(), kc, vc)) continue;
      rows.push_back({s.begin, s.cache->offset(), kc, vc});
      which.push_back(i);
    }
    const int64_t w = opt.window;  // a plain dense cache is positional
    if (rows.size() > 1 && ops::decode_rows_attention(q_rows, k_rows, v_rows, *inv_freq, rows, opt.scale, w, out))
      for (size_t i : which) done[i] = true;
  }
  for (size_t si = 0; si < spans.size(); ++si) {
    if (done[si]) continue;
    const PackedSpan& s = spans[si];
    LMT_CHECK(s.cache && !s.cache->position(), "[attention] a packed span needs its own cache, unbound");
    const int64_t T = s.length;
    Tensor qs = q_rows.slice_rows(s.begin, s.begin + T).reshape({1, T, H, D});
    Tensor ks = k_rows.slice_rows(s.begin, s.begin + T).reshape({1, T, Hkv, D});
    Tensor vs = v_rows.slice_rows(s.begin, s.begin + T).reshape({1, T, Hkv, D});
    // As forward() would run this span alone: few rows take the fused rope + append.
    KVCache::View kv;
    Tensor q_rot;
    const bool stored = T <= 4 && s.cache->update_rotary(layer, qs, ks, vs, *inv_freq, q_rot, kv);
    if (stored) {
      qs = q_rot;
    } else {
      const int64_t pos = s.cache->offset();
      qs = ops::rope(qs, *inv_freq, pos, 1.f, false);
      ks = ops::rope(ks, *inv_freq, pos, 1.f, false);
      kv = s.cache->update(layer, ks, vs);
    }
    const int64_t w = kv.positional ? opt.window : 0;
    Tensor a = ops::attention(qs, kv.k, kv.v, opt.scale, true, w, kv.q_offset, nullptr, nullptr, opt.softcap).out;
    ops::copy_rows_into(out, s.begin, a.reshape({T, H * D}));
  }
  return o.forward(out.reshape({1, N, H * D}));
}

}  // namespace lmtune::nn
