#include "models/llama.h"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "autograd/checkpoint.h"
#include "core/error.h"

namespace lmtune {

std::vector<TensorSpec> LlamaModel::tensor_specs() const {
  const ModelConfig& c = cfg_;
  int64_t q_out = c.n_head * c.head_dim, kv_out = c.n_kv_head * c.head_dim;
  std::vector<TensorSpec> s{{"model.embed_tokens.weight", {c.n_vocab, c.n_embd}}};
  for (int64_t i = 0; i < c.n_layer; ++i) {
    std::string p = "model.layers." + std::to_string(i) + ".";
    s.push_back({p + "input_layernorm.weight", {c.n_embd}});
    s.push_back({p + "self_attn.q_proj.weight", {q_out, c.n_embd}});
    s.push_back({p + "self_attn.k_proj.weight", {kv_out, c.n_embd}});
    s.push_back({p + "self_attn.v_proj.weight", {kv_out, c.n_embd}});
    s.push_back({p + "self_attn.o_proj.weight", {c.n_embd, q_out}});
    if (c.attention_bias || c.qkv_bias) {
      s.push_back({p + "self_attn.q_proj.bias", {q_out}});
      s.push_back({p + "self_attn.k_proj.bias", {kv_out}});
      s.push_back({p + "self_attn.v_proj.bias", {kv_out}});
    }
    if (c.attention_bias) s.push_back({p + "self_attn.o_proj.bias", {c.n_embd}});
    s.push_back({p + "post_attention_layernorm.weight", {c.n_embd}});
    s.push_back({p + "mlp.gate_proj.weight", {c.n_ff, c.n_embd}});
    s.push_back({p + "mlp.up_proj.weight", {c.n_ff, c.n_embd}});
    s.push_back({p + "mlp.down_proj.weight", {c.n_embd, c.n_ff}});
    if (c.mlp_bias) {
      s.push_back({p + "mlp.gate_proj.bias", {c.n_ff}});
      s.push_back({p + "mlp.up_proj.bias", {c.n_ff}});
      s.push_back({p + "mlp.down_proj.bias", {c.n_embd}});
    }
  }
  s.push_back({"model.norm.weight", {c.n_embd}});
  if (!c.tie_word_embeddings) s.push_back({"lm_head.weight", {c.n_vocab, c.n_embd}});
  return s;
}

void LlamaModel::on_weights_set() {
  std::vector<float> inv = rope_inv_freq(cfg_);
  inv_freq_ = ops::to(Tensor::from_f32(inv, {int64_t(inv.size())}), device());
}

nn::Linear LlamaModel::linear(const std::string& prefix) const {
  nn::Linear l{weight(prefix + ".weight"), {}};
  auto it = weights_.find(prefix + ".bias");
  if (it != weights_.end()) l.bias = it->second;
  if (auto a = adapters_.find(prefix); a != adapters_.end()) l.adapter = &a->second;
  return l;
}

Tensor LlamaModel::block(int64_t layer, const Tensor& x, int64_t pos_offset, KVCache* cache) {
  const ModelConfig& c = cfg_;
  std::string p = "model.layers." + std::to_string(layer) + ".";
  int64_t B = x.dim(0), T = x.dim(1);
  float eps = float(c.rms_norm_eps);

  // Decoding (a few rows, no autograd): products that share an input, and the residual add with
  // the norm after it, go to fused kernels where the backend has them (same values, fewer launches).
  const bool fuse = cache && !ag::grad_enabled() && B * T <= 4;
  auto plain = [](const nn::Linear& l) { return !l.adapter && !l.bias.defined(); };

  Tensor h = ag::rms_norm(x, weight(p + "input_layernorm.weight"), eps);
  nn::Linear lq = linear(p + "self_attn.q_proj"), lk = linear(p + "self_attn.k_proj"),
             lv = linear(p + "self_attn.v_proj");
  Tensor q, k, v;
  if (fuse && plain(lq) && plain(lk) && plain(lv)) {
    std::vector<Tensor> qkv = ops::linear_group(h, {lq.weight, lk.weight, lv.weight});
    q = qkv[0], k = qkv[1], v = qkv[2];
  } else {
    nn::AdapterInput hin(h);  // q, k and v's adapters share one f32 cast of h, freed at the brace
    q = lq.forward(hin), k = lk.forward(hin), v = lv.forward(hin);
  }
  q = ag::reshape(q, {B, T, c.n_head, c.head_dim});
  k = ag::reshape(k, {B, T, c.n_kv_head, c.head_dim});
  v = ag::reshape(v, {B, T, c.n_kv_head, c.head_dim});
  KVCache::View kv;
  Tensor q_rot;
  const bool stored = fuse && cache->update_rotary(layer, q, k, v, inv_freq_, q_rot, kv);  // rope + append
  if (stored) {
    q = q_rot;
  } else if (const Tensor* pos_at = cache ? cache->position() : nullptr) {  // a recorded decode step
    q = ops::rope(q, inv_freq_, 0, 1.f, false, pos_at);
    k = ops::rope(k, inv_freq_, 0, 1.f, false, pos_at);
  } else {
    q = ag::rope(q, inv_freq_, pos_offset, 1.f);
    k = ag::rope(k, inv_freq_, pos_offset, 1.f);
  }
  float scale = 1.f / std::sqrt(float(c.head_dim));
  int64_t window = c.layer_window[size_t(layer)];
  Tensor a;
  if (cache) {
    if (!stored) kv = cache->update(layer, k, v);
    int64_t w = kv.positional ? window : 0;
    if (kv.q_offset_at.defined())
      a = ops::attention(q, kv.k, kv.v, scale, true, w, kv.q_offset, &kv.q_offset_at).out;
    else
      a = ag::attention(q, kv.k, kv.v, scale, true, w, kv.q_offset);
  } else {
    a = ag::attention(q, k, v, scale, true, window, 0);
  }
  a = ag::reshape(a, {B, T, c.n_head * c.head_dim});
  Tensor o = linear(p + "self_attn.o_proj").forward(a), x1;
  const Tensor& post_norm = weight(p + "post_attention_layernorm.weight");
  if (fuse) {
    std::tie(x1, h) = ops::add_rms_norm(x, o, post_norm, eps);
  } else {
    x1 = ag::add(x, o);
    h = ag::rms_norm(x1, post_norm, eps);
  }
  nn::Linear lg = linear(p + "mlp.gate_proj"), lu = linear(p + "mlp.up_proj");
  Tensor act;
  if (fuse && plain(lg) && plain(lu)) {
    act = ops::swiglu_linear(h, lg.weight, lu.weight);
  } else {
    Tensor gate, up;
    {
      // One f32 cast of h for both adapters; gate before up, in statements, so that their
      // dropout draws keep their order (function arguments have none).
      nn::AdapterInput hin(h);
      gate = lg.forward(hin);
      up = lu.forward(hin);
    }
    act = ag::swiglu(gate, up);
  }
  return ag::add(x1, linear(p + "mlp.down_proj").forward(act));
}

Tensor LlamaModel::forward(const Tensor& ids, int64_t pos_offset) {
  LMT_CHECK(ids.ndim() == 2 && ids.dtype() == DType::i32, "[llama] ids must be i32 (B, T), got ", ids.describe());
  LMT_CHECK(!weights_.empty(), "[llama] forward before the weights were set");
  use_masters();
  Tensor x = ag::embedding(weight("model.embed_tokens.weight"), ids);
  for (int64_t i = 0; i < cfg_.n_layer; ++i) {
    if (grad_checkpoint_ && ag::grad_enabled()) {
      x = ag::checkpoint([this, i, pos_offset](const std::vector<Tensor>& in) { return block(i, in[0], pos_offset); },
                         {x});
    } else {
      x = block(i, x, pos_offset);
    }
  }
  return head(x);
}

Tensor LlamaModel::head(const Tensor& x) {
  Tensor h = ag::rms_norm(x, weight("model.norm.weight"), float(cfg_.rms_norm_eps));
  const Tensor& w = cfg_.tie_word_embeddings ? weight("model.embed_tokens.weight") : weight("lm_head.weight");
  return ag::linear(h, w);
}

Tensor LlamaModel::forward(const Tensor& ids, KVCache& cache, bool last_only) {
  LMT_CHECK(ids.ndim() == 2 && ids.dtype() == DType::i32, "[llama] ids must be i32 (B, T), got ", ids.describe());
  LMT_CHECK(!weights_.empty(), "[llama] forward before the weights were set");
  ag::NoGradGuard no_grad;
  use_masters();
  int64_t B = ids.dim(0), T = ids.dim(1);
  int64_t step = std::max<int64_t>(1, cache.max_step());
  if (T > step) {
    // The cache takes fewer tokens at once (a rotating cache about to wrap): run the pieces in
    // order and gather their logits.
    int64_t T_out = last_only ? 1 : T;
    Tensor out = ops::empty({B, T_out, cfg_.n_vocab}, dtype(), device());
    for (int64_t t0 = 0; t0 < T;) {
      int64_t n = std::min(T - t0, std::max<int64_t>(1, cache.max_step()));
      Tensor part_ids = Tensor::empty({B, n}, DType::i32);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < n; ++t) part_ids.data<int32_t>()[b * n + t] = ids.data<int32_t>()[b * T + t0 + t];
      bool last_piece = t0 + n == T;
      if (last_only && !last_piece) {
        forward_layers(part_ids, cache);
      } else {
        Tensor part = forward(part_ids, cache, last_only);
        if (last_only) return part;
        for (int64_t b = 0; b < B; ++b) {
          Tensor dst = out.slice_rows(b, b + 1).reshape({T, cfg_.n_vocab});
          ops::copy_rows_into(dst, t0, part.slice_rows(b, b + 1).reshape({n, cfg_.n_vocab}));
        }
      }
      t0 += n;
    }
    return out;
  }
  Tensor x = forward_layers(ids, cache);
  if (last_only && T > 1) {
    int64_t C = cfg_.n_embd;
    Tensor last = ops::empty({B, 1, C}, x.dtype(), x.device());
    for (int64_t b = 0; b < B; ++b) {
      Tensor dst = last.slice_rows(b, b + 1).reshape({1, C});
      ops::copy_rows_into(dst, 0, x.slice_rows(b, b + 1).reshape({T, C}).slice_rows(T - 1, T));
    }
    x = last;
  }
  return head(x);
}

Tensor LlamaModel::forward_layers(const Tensor& ids, KVCache& cache) {
  int64_t pos = cache.offset();
  Tensor x = ag::embedding(weight("model.embed_tokens.weight"), ids);
  for (int64_t i = 0; i < cfg_.n_layer; ++i) x = block(i, x, pos, &cache);
  cache.advance(ids.dim(1));
  return x;
}

}  // namespace lmtune
