#include "models/decoder.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>

#include "autograd/checkpoint.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/runtime_config.h"

namespace lmtune {

namespace {
std::string layer_prefix(int64_t i) { return "model.layers." + std::to_string(i) + "."; }
// v as the nearest value of dtype (a constant the reference multiplies in that dtype).
float round_to(DType dt, float v) {
  if (dt == DType::bf16) return bf16_to_f32(f32_to_bf16(v));
  if (dt == DType::f16) return f16_to_f32(f32_to_f16(v));
  return v;
}
}  // namespace

DecoderModel::DecoderModel(ModelConfig cfg) : Model(std::move(cfg)) {
  // A config built in code rather than read (tests) may leave the per-layer lists of later families
  // empty: every layer rotates and none is a mixture of experts.
  if (cfg_.layer_rope.empty()) cfg_.layer_rope.assign(size_t(cfg_.n_layer), true);
  if (cfg_.layer_moe.empty()) cfg_.layer_moe.assign(size_t(cfg_.n_layer), false);
  const ModelConfig& c = cfg_;
  LMT_CHECK(c.attn_logit_softcap >= 0 && c.final_logit_softcap >= 0, "[model] ", c.model_type,
            ": soft-caps must be >= 0, got ", c.attn_logit_softcap, " and ", c.final_logit_softcap);
  LMT_CHECK(int64_t(c.layer_window.size()) == c.n_layer, "[model] ", c.model_type, ": layer_window has ",
            c.layer_window.size(), " entries for ", c.n_layer, " layers");
  LMT_CHECK(int64_t(c.layer_rope.size()) == c.n_layer && int64_t(c.layer_moe.size()) == c.n_layer, "[model] ",
            c.model_type, ": layer_rope and layer_moe have ", c.layer_rope.size(), " and ", c.layer_moe.size(),
            " entries for ", c.n_layer, " layers");
}

std::vector<TensorSpec> DecoderModel::tensor_specs() const {
  const ModelConfig& c = cfg_;
  int64_t q_out = c.n_head * c.head_dim, kv_out = c.n_kv_head * c.head_dim;
  std::vector<TensorSpec> s{{"model.embed_tokens.weight", {c.n_vocab, c.n_embd}}};
  for (int64_t i = 0; i < c.n_layer; ++i) {
    std::string p = layer_prefix(i);
    if (c.norm_layout != NormLayout::post) s.push_back({p + "input_layernorm.weight", {c.n_embd}});
    if (c.fused_qkv) {
      s.push_back({p + "self_attn.qkv_proj.weight", {q_out + 2 * kv_out, c.n_embd}});
    } else {
      s.push_back({p + "self_attn.q_proj.weight", {q_out, c.n_embd}});
      s.push_back({p + "self_attn.k_proj.weight", {kv_out, c.n_embd}});
      s.push_back({p + "self_attn.v_proj.weight", {kv_out, c.n_embd}});
    }
    s.push_back({p + "self_attn.o_proj.weight", {c.n_embd, q_out}});
    if (c.fused_qkv && (c.attention_bias || c.qkv_bias)) {
      s.push_back({p + "self_attn.qkv_proj.bias", {q_out + 2 * kv_out}});
    } else if (c.attention_bias || c.qkv_bias) {
      s.push_back({p + "self_attn.q_proj.bias", {q_out}});
      s.push_back({p + "self_attn.k_proj.bias", {kv_out}});
      s.push_back({p + "self_attn.v_proj.bias", {kv_out}});
    }
    if (c.attention_bias) s.push_back({p + "self_attn.o_proj.bias", {c.n_embd}});
    if (c.qk_norm) {
      s.push_back({p + "self_attn.q_norm.weight", {c.qk_norm_whole ? q_out : c.head_dim}});
      s.push_back({p + "self_attn.k_norm.weight", {c.qk_norm_whole ? kv_out : c.head_dim}});
    }
    s.push_back({p + "post_attention_layernorm.weight", {c.n_embd}});
    if (c.norm_layout == NormLayout::sandwich) s.push_back({p + "pre_feedforward_layernorm.weight", {c.n_embd}});
    if (c.norm_layout != NormLayout::pre) s.push_back({p + "post_feedforward_layernorm.weight", {c.n_embd}});
    if (c.layer_moe[size_t(i)]) {
      const std::string m = p + c.moe_block + ".";
      s.push_back({m + "gate.weight", {c.n_expert, c.n_embd}});
      for (int64_t e = 0; e < c.n_expert; ++e) {
        const std::string x = m + "experts." + std::to_string(e) + ".";
        s.push_back({x + c.expert_gate + ".weight", {c.n_ff_expert, c.n_embd}});
        s.push_back({x + c.expert_up + ".weight", {c.n_ff_expert, c.n_embd}});
        s.push_back({x + c.expert_down + ".weight", {c.n_embd, c.n_ff_expert}});
      }
      continue;  // no dense MLP in this layer (and no MLP biases in these families)
    }
    if (c.fused_gate_up) {
      s.push_back({p + "mlp.gate_up_proj.weight", {2 * c.n_ff, c.n_embd}});
    } else {
      s.push_back({p + "mlp.gate_proj.weight", {c.n_ff, c.n_embd}});
      s.push_back({p + "mlp.up_proj.weight", {c.n_ff, c.n_embd}});
    }
    s.push_back({p + "mlp.down_proj.weight", {c.n_embd, c.n_ff}});
    if (c.mlp_bias && c.fused_gate_up) {
      s.push_back({p + "mlp.gate_up_proj.bias", {2 * c.n_ff}});
      s.push_back({p + "mlp.down_proj.bias", {c.n_embd}});
    } else if (c.mlp_bias) {
      s.push_back({p + "mlp.gate_proj.bias", {c.n_ff}});
      s.push_back({p + "mlp.up_proj.bias", {c.n_ff}});
      s.push_back({p + "mlp.down_proj.bias", {c.n_embd}});
    }
  }
  s.push_back({"model.norm.weight", {c.n_embd}});
  if (!c.tie_word_embeddings) s.push_back({"lm_head.weight", {c.n_vocab, c.n_embd}});
  return s;
}

void DecoderModel::on_weights_set() {
  std::vector<float> inv = rope_inv_freq(cfg_);
  inv_freq_ = ops::to(Tensor::from_f32(inv, {int64_t(inv.size())}), device());
  rope_long_ = false;
  if (cfg_.rope.type == "longrope") rope_inv_freq(cfg_, false, true);  // the long set's size checked at load
  inv_freq_sliding_ = Tensor();
  if (cfg_.rope_sliding) {
    std::vector<float> local = rope_inv_freq(cfg_, true);
    inv_freq_sliding_ = ops::to(Tensor::from_f32(local, {int64_t(local.size())}), device());
  }
  rope_perm_ = Tensor();
  if (const int64_t R = cfg_.rotary_dim, D = cfg_.head_dim; R > 0 && R < D) {
    // Original dimension -> the rope kernels' place: i and i + R/2 (i < R/2) to i and i + D/2; the
    // unrotated R + t to R/2 + t and D/2 + R/2 + t (pairs at angle 0). longrope's attention factor
    // scales the rotated dimensions only (transformers multiplies cos and sin by it), so it goes
    // here rather than into the score scale.
    const float f = cfg_.rope.type == "longrope" ? float(cfg_.rope.attention_factor) : 1.f;
    std::vector<float> p(size_t(D * D), 0.f);
    auto to = [&](int64_t from, int64_t place, float v) { p[size_t(from * D + place)] = v; };
    for (int64_t i = 0; i < R / 2; ++i) to(i, i, f), to(i + R / 2, i + D / 2, f);
    for (int64_t t = 0; t < (D - R) / 2; ++t)
      to(R + t, R / 2 + t, 1.f), to(R + (D - R) / 2 + t, D / 2 + R / 2 + t, 1.f);
    rope_perm_ = ops::to(Tensor::from_f32(p, {D, D}), device(), dtype());
  }
  inv_freq_none_ = Tensor();
  if (std::find(cfg_.layer_rope.begin(), cfg_.layer_rope.end(), false) != cfg_.layer_rope.end()) {
    std::vector<float> zeros(inv.size(), 0.f);  // cos 0 = 1, sin 0 = 0: every kernel's rotation is the identity
    inv_freq_none_ = ops::to(Tensor::from_f32(zeros, {int64_t(zeros.size())}), device());
  }
}

void DecoderModel::use_rope_for(int64_t positions) {
  if (cfg_.rope.type != "longrope") return;
  const bool want_long = positions > cfg_.rope.original_max_position_embeddings;
  if (want_long == rope_long_) return;
  std::vector<float> inv = rope_inv_freq(cfg_, false, want_long);
  ops::copy_into(inv_freq_, Tensor::from_f32(inv, {int64_t(inv.size())}));
  rope_long_ = want_long;
}

void DecoderModel::bind() {
  const ModelConfig& c = cfg_;
  LMT_CHECK(!weights_.empty(), "[model] forward before the weights were set");
  auto w = [&](const std::string& name) -> const Tensor* {
    auto it = weights_.find(name);
    LMT_CHECK(it != weights_.end(), "[model] no weight named '", name, "'");
    return &it->second;
  };
  auto optional = [&](const std::string& name) -> const Tensor* {
    auto it = weights_.find(name);
    return it == weights_.end() ? nullptr : &it->second;
  };
  const DType dtype = this->dtype();  // what quantized weights dequantize to
  auto linear = [&](const std::string& prefix) {
    auto a = adapters_.find(prefix);
    nn::LinearRef l{w(prefix + ".weight"), optional(prefix + ".bias"), a == adapters_.end() ? nullptr : &a->second};
    if (auto q = quantized_.find(prefix); q != quantized_.end()) {
      l.scales = w(prefix + ".scales"), l.biases = q->second.has_biases() ? w(prefix + ".biases") : nullptr;
      l.format = q->second, l.dense_dtype = dtype;
    }
    return l;
  };
  const float eps = float(c.rms_norm_eps);
  const bool off = c.norm_unit_offset;
  embed_ = {linear("model.embed_tokens")};
  embed_.scale = round_to(dtype, float(c.embed_scale));
  blocks_.assign(size_t(c.n_layer), {});
  for (int64_t i = 0; i < c.n_layer; ++i) {
    std::string p = layer_prefix(i);
    Block& b = blocks_[size_t(i)];
    if (c.norm_layout != NormLayout::post) b.attn_norm = {w(p + "input_layernorm.weight"), eps, off};
    nn::Attention& at = b.attn;
    if (c.fused_qkv) {
      at.qkv = linear(p + "self_attn.qkv_proj");
    } else {
      at.q = linear(p + "self_attn.q_proj"), at.k = linear(p + "self_attn.k_proj");
      at.v = linear(p + "self_attn.v_proj");
    }
    at.o = linear(p + "self_attn.o_proj");
    if (c.qk_norm)
      at.q_norm = {w(p + "self_attn.q_norm.weight"), eps, off},
      at.k_norm = {w(p + "self_attn.k_norm.weight"), eps, off};
    at.qk_norm_whole = c.qk_norm_whole;
    const bool sliding = c.layer_window[size_t(i)] > 0;
    at.inv_freq = sliding && inv_freq_sliding_.defined() ? &inv_freq_sliding_ : &inv_freq_;
    if (!c.layer_rope[size_t(i)]) at.inv_freq = &inv_freq_none_;
    at.rope_perm = rope_perm_.defined() ? &rope_perm_ : nullptr;
    float scale = c.attn_scale > 0 ? float(c.attn_scale) : 1.f / std::sqrt(float(c.head_dim));
    // longrope's attention factor multiplies q's and k's rotations alike: its square on the scores.
    // (With a partial rotary it scales the rotated dimensions alone: in rope_perm_.)
    if (c.rope.type == "longrope" && !rope_perm_.defined())
      scale *= float(c.rope.attention_factor * c.rope.attention_factor);
    at.opt = {c.n_head, c.n_kv_head, c.head_dim, scale, c.layer_window[size_t(i)], float(c.attn_logit_softcap)};
    if (c.norm_layout == NormLayout::pre) {
      b.mlp_norm = {w(p + "post_attention_layernorm.weight"), eps, off};
    } else {
      b.post_attn_norm = {w(p + "post_attention_layernorm.weight"), eps, off};
      b.post_mlp_norm = {w(p + "post_feedforward_layernorm.weight"), eps, off};
      if (c.norm_layout == NormLayout::sandwich) b.mlp_norm = {w(p + "pre_feedforward_layernorm.weight"), eps, off};
    }
    b.residual_scale = float(c.residual_scale);
    if (c.layer_moe[size_t(i)]) {
      const std::string m = p + c.moe_block + ".";
      b.moe.router = linear(m + "gate");
      b.moe.top_k = c.n_expert_used, b.moe.norm_topk = c.norm_topk_prob;
      b.moe.experts.clear();
      for (int64_t e = 0; e < c.n_expert; ++e) {
        const std::string x = m + "experts." + std::to_string(e) + ".";
        b.moe.experts.push_back(
            {linear(x + c.expert_gate), linear(x + c.expert_up), {}, linear(x + c.expert_down), c.activation});
      }
    } else if (c.fused_gate_up)
      b.mlp = {{}, {}, linear(p + "mlp.gate_up_proj"), linear(p + "mlp.down_proj"), c.activation};
    else
      b.mlp = {linear(p + "mlp.gate_proj"), linear(p + "mlp.up_proj"), {}, linear(p + "mlp.down_proj"), c.activation};
  }
  head_ = {{w("model.norm.weight"), eps, off}, linear(c.tie_word_embeddings ? "model.embed_tokens" : "lm_head")};
  head_.scale = float(c.logit_scale);
  head_.softcap = float(c.final_logit_softcap);
}

Tensor DecoderModel::block(int64_t layer, const Tensor& x, int64_t pos_offset, const nn::Segments* seg) {
  const Block& b = blocks_[size_t(layer)];
  Tensor a = b.attn.forward(b.attn_input(x), layer, pos_offset, nullptr, false, seg);
  return b.finish(x, a, false);
}

Tensor DecoderModel::Block::finish(const Tensor& x, Tensor a, bool decoding) const {
  auto [x1, m] = finish_parts(x, std::move(a), decoding);
  return m.defined() ? ag::add(x1, m) : x1;
}

std::pair<Tensor, Tensor> DecoderModel::Block::finish_parts(const Tensor& x, Tensor a, bool decoding) const {
  if (post_attn_norm.defined()) a = post_attn_norm.forward(a);
  if (residual_scale != 1.f) a = ag::scale(a, residual_scale);
  Tensor x1, h;
  if (mlp_norm.defined())
    std::tie(x1, h) = mlp_norm.add_forward(x, a, decoding);
  else
    x1 = h = ag::add(x, a);
  // Llama's layout: the MLP's residual add fused into the down product where it can be.
  const bool plain = moe.experts.empty() && !post_mlp_norm.defined() && residual_scale == 1.f;
  if (plain && mlp.fuses_residual(decoding)) return {mlp.forward(h, decoding, &x1), Tensor()};
  Tensor m = moe.experts.empty() ? mlp.forward(h, decoding) : moe.forward(h);
  if (post_mlp_norm.defined()) m = post_mlp_norm.forward(m);
  if (residual_scale != 1.f) m = ag::scale(m, residual_scale);
  return {x1, m};
}

bool DecoderModel::Block::fuses_norms(bool decoding) const {
  return decoding && runtime_config().fused_norms && attn_norm.defined() && mlp_norm.defined() &&
         !post_attn_norm.defined() && !post_mlp_norm.defined() && residual_scale == 1.f && moe.experts.empty() &&
         mlp.fuses_residual(decoding) && attn.o.get().plain_quantized();
}

Tensor DecoderModel::Block::decode_fused(const Tensor& x, int64_t layer, int64_t pos, KVCache& cache,
                                         const nn::Attention::Projected* pre, const Block* next,
                                         std::optional<nn::Attention::Projected>* next_pre) const {
  // With the decode chain, o, the norm, gate/up and down in one launch where it runs (and the next block's q, k and v
  // with cuda_decode_chain_qkv); else (or where it declines) o with the residual, then the MLP.
  const RuntimeConfig& rc = runtime_config();
  const bool chain = rc.cuda_decode_chain;
  const nn::Attention::DecodeFusion fuse{&attn_norm, &x, chain, pre};
  Tensor h = attn.forward(x, layer, pos, &cache, true, nullptr, &fuse);  // x + attention; chain: attention alone
  if (chain) {
    if (next && next_pre && rc.cuda_decode_chain_qkv) {
      Tensor out;
      auto run = [&](const ops::DecodeChainNext& nx, const QuantFormat& f) {
        out = mlp.forward_chained(h, attn.o.get(), x, mlp_norm, &nx, &f);
        return out.defined();
      };
      nn::Attention::Projected projected;
      if (next->attn.project_by(layer + 1, cache, x.dtype(), next->attn_norm, run, projected)) {
        *next_pre = std::move(projected);
        return out;
      }
    }
    if (Tensor out = mlp.forward_chained(h, attn.o.get(), x, mlp_norm); out.defined()) return out;
    h = attn.output(h, &x);
  }
  return mlp.forward(h, true, &h, &mlp_norm);
}

Tensor DecoderModel::Block::input_after(Tensor& x, const Tensor& pending, bool decoding) const {
  if (!pending.defined()) return attn_input(x);
  Tensor h;
  if (attn_norm.defined())
    std::tie(x, h) = attn_norm.add_forward(x, pending, decoding);
  else
    x = h = ag::add(x, pending);
  return h;
}

Tensor DecoderModel::forward(const Tensor& ids, int64_t pos_offset) {
  return head_.forward(forward_blocks(ids, pos_offset));
}

Tensor DecoderModel::forward(const Tensor& ids, const PackedRows& rows) {
  const nn::Segments seg = segments(ids, rows);
  return head_.forward(forward_blocks(ids, 0, &seg));
}

nn::Segments DecoderModel::segments(const Tensor& ids, const PackedRows& rows) const {
  LMT_CHECK(ids.ndim() == 2 && ids.dtype() == DType::i32, "[model] ids must be i32 (B, T), got ", ids.describe());
  check_packed_rows(ids, rows);
  LMT_CHECK(!weights_.empty(), "[model] forward before the weights were set");
  return {ops::to(rows.positions, device()), ops::to(rows.segments, device())};
}

bool DecoderModel::forward_hidden(const Tensor& ids, Tensor& hidden, nn::Linear& head, const PackedRows* rows) {
  LMT_CHECK(!weights_.empty(), "[model] forward before the weights were set");
  ensure_bound();
  if (head_.weight.adapter || head_.weight.bias || head_.softcap > 0.f)
    return false;  // the fused loss takes plain logits
  std::optional<nn::Segments> seg;
  if (rows) seg = segments(ids, *rows);
  hidden = head_.hidden(forward_blocks(ids, 0, seg ? &*seg : nullptr));
  head = head_.weight.get();  // after forward_blocks: a master's cast is made there
  return true;
}

Tensor DecoderModel::forward_blocks(const Tensor& ids, int64_t pos_offset, const nn::Segments* seg) {
  LMT_CHECK(ids.ndim() == 2 && ids.dtype() == DType::i32, "[model] ids must be i32 (B, T), got ", ids.describe());
  LMT_CHECK(!weights_.empty(), "[model] forward before the weights were set");
  use_masters();
  ensure_bound();
  if (cfg_.rope.type == "longrope") {
    int64_t reach = pos_offset + ids.dim(1);
    if (seg) {  // packed rows: the largest per-token position
      Tensor pos = ops::to(seg->positions, Device::cpu);
      reach = 0;
      for (int64_t i = 0; i < pos.numel(); ++i) reach = std::max<int64_t>(reach, pos.data<int32_t>()[i] + 1);
    }
    use_rope_for(reach);
  }
  Tensor x = embed_.forward(ids);
  BlockHooks* hooks = block_hooks_;
  LMT_CHECK(!hooks || grad_checkpoint_ || !ag::grad_enabled(),
            "[model] block hooks (sharded training) free a block's weights after it: they need gradient checkpointing");
  for (int64_t i = 0; i < cfg_.n_layer; ++i) {
    if (grad_checkpoint_ && ag::grad_enabled()) {
      // The block is run again in backward, after this forward returned: the closure keeps its
      // own copy of the segments. Hooks see the first run (recording nothing) end, and the
      // recomputed one's backward.
      x = ag::checkpoint(
          [this, i, pos_offset, hooks,
           sc = seg ? std::optional<nn::Segments>(*seg) : std::nullopt](const std::vector<Tensor>& in) {
            if (hooks) hooks->before_block(i);
            Tensor out = block(i, in[0], pos_offset, sc ? &*sc : nullptr);
            if (hooks && !ag::grad_enabled()) hooks->after_block(i);
            return out;
          },
          {x}, hooks ? std::function<void()>([hooks, i] { hooks->after_block_backward(i); }) : nullptr);
    } else {
      if (hooks) hooks->before_block(i);
      x = block(i, x, pos_offset, seg);
      if (hooks) hooks->after_block(i);
    }
  }
  return x;
}

Tensor DecoderModel::forward(const Tensor& ids, KVCache& cache, bool last_only) {
  LMT_CHECK(ids.ndim() == 2 && ids.dtype() == DType::i32, "[model] ids must be i32 (B, T), got ", ids.describe());
  LMT_CHECK(!weights_.empty(), "[model] forward before the weights were set");
  ag::NoGradGuard no_grad;
  use_masters();
  ensure_bound();
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
  return head_.forward(x);
}

Tensor DecoderModel::forward_layers(const Tensor& ids, KVCache& cache) {
  int64_t pos = cache.offset();
  use_rope_for(pos + ids.dim(1));
  // Decoding: a few rows and no autograd, so the blocks may use their fused kernels. Each block's
  // last residual add is left to the next block's input norm.
  const bool decoding = !ag::grad_enabled() && ids.numel() <= 4;
  Tensor x = embed_.forward(ids), pending;
  // Decoding one token with the decode chain's fourth phase: the next block's q, k and v, projected by this one.
  std::optional<nn::Attention::Projected> pre;
  const bool one_token = decoding && ids.numel() == 1;
  for (int64_t i = 0; i < cfg_.n_layer; ++i) {
    const Block& b = blocks_[size_t(i)];
    if (!pending.defined() && b.fuses_norms(decoding)) {
      const Block* next = one_token && i + 1 < cfg_.n_layer && blocks_[size_t(i + 1)].fuses_norms(decoding)
                              ? &blocks_[size_t(i + 1)]
                              : nullptr;
      std::optional<nn::Attention::Projected> next_pre;
      x = b.decode_fused(x, i, pos, cache, pre ? &*pre : nullptr, next, &next_pre);
      pre = std::move(next_pre);
      continue;
    }
    LMT_CHECK(!pre, "[model] layer ", i, " was projected by the layer before but does not take it");
    Tensor a = b.attn.forward(b.input_after(x, pending, decoding), i, pos, &cache, decoding, nullptr);
    std::tie(x, pending) = b.finish_parts(x, a, decoding);
  }
  cache.advance(ids.dim(1));
  return pending.defined() ? ag::add(x, pending) : x;
}

Tensor DecoderModel::forward_packed(const Tensor& ids, const std::vector<PackedSequence>& seqs) {
  LMT_CHECK(ids.ndim() == 2 && ids.dim(0) == 1 && ids.dtype() == DType::i32,
            "[model] packed ids must be i32 (1, N), got ", ids.describe());
  LMT_CHECK(!seqs.empty(), "[model] a packed forward needs at least one sequence");
  const int64_t N = ids.dim(1), C = cfg_.n_embd;
  std::vector<nn::PackedSpan> spans;
  int64_t begin = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const PackedSequence& s = seqs[i];
    LMT_CHECK(s.cache && s.length >= 1 && s.length <= std::max<int64_t>(1, s.cache->max_step()),
              "[model] packed sequence ", i, ": length ", s.length, " (its cache takes at most ",
              s.cache ? s.cache->max_step() : 0, " at once)");
    spans.push_back({begin, s.length, s.cache});
    begin += s.length;
  }
  LMT_CHECK(begin == N, "[model] the packed lengths sum to ", begin, ", not ", N);
  int64_t out_rows = 0;
  for (const PackedSequence& s : seqs) out_rows += s.every_row ? s.length : 1;
  if (seqs.size() == 1) return forward(ids, *seqs[0].cache, !seqs[0].every_row).reshape({out_rows, cfg_.n_vocab});
  if (cfg_.rope.type == "longrope") {
    // One set of frequencies rotates a forward's rows (use_rope_for, by the furthest position):
    // the sequences within original_max_position_embeddings and those past it run as two packed
    // forwards, their logits rows put back in order. (A sequence whose cache holds rows made with
    // the short set and that now crosses the limit must be run again whole by its caller first:
    // runtime/generate.h's longrope_reruns.)
    std::vector<size_t> part[2];
    for (size_t i = 0; i < seqs.size(); ++i)
      part[seqs[i].cache->offset() + seqs[i].length > cfg_.rope.original_max_position_embeddings].push_back(i);
    if (!part[0].empty() && !part[1].empty()) return forward_packed_parts(ids, seqs, spans, part);
  }
  LMT_CHECK(!weights_.empty(), "[model] forward before the weights were set");
  ag::NoGradGuard no_grad;
  use_masters();
  ensure_bound();
  const bool decoding = N <= 4;  // as block(): few rows may take the fused kernels
  int64_t reach = 0;
  for (const nn::PackedSpan& s : spans) reach = std::max(reach, s.cache->offset() + s.length);
  use_rope_for(reach);
  Tensor x = embed_.forward(ids), pending;  // each block's last residual add left to the next one's norm
  for (int64_t i = 0; i < cfg_.n_layer; ++i) {
    const Block& b = blocks_[size_t(i)];
    Tensor a = b.attn.forward_packed(b.input_after(x, pending, decoding), i, spans, decoding);
    std::tie(x, pending) = b.finish_parts(x, a, decoding);
  }
  if (pending.defined()) x = ag::add(x, pending);
  for (const nn::PackedSpan& s : spans) s.cache->advance(s.length);
  // Only each sequence's last row reaches the head, or its every row with every_row (all rows,
  // without copies, when each sequence fed one token, a decoding step, or wants all of them).
  if (out_rows == N) return head_.forward(x).reshape({N, cfg_.n_vocab});
  Tensor rows = x.reshape({N, C});
  Tensor last = ops::empty({out_rows, C}, x.dtype(), x.device());
  for (size_t i = 0, at = 0; i < spans.size(); ++i) {
    const int64_t end = spans[i].begin + spans[i].length, n = seqs[i].every_row ? spans[i].length : 1;
    ops::copy_rows_into(last, int64_t(at), rows.slice_rows(end - n, end));
    at += size_t(n);
  }
  return head_.forward(last.reshape({1, out_rows, C})).reshape({out_rows, cfg_.n_vocab});
}

Tensor DecoderModel::forward_packed_parts(const Tensor& ids, const std::vector<PackedSequence>& seqs,
                                          const std::vector<nn::PackedSpan>& spans,
                                          const std::vector<size_t> (&part)[2]) {
  const Tensor host_ids = ops::to(ids, Device::cpu);
  const int32_t* all = host_ids.data<int32_t>();
  // Each sequence's first output row (a sequence has `length` rows with every_row, else one).
  std::vector<int64_t> first(seqs.size() + 1, 0);
  for (size_t i = 0; i < seqs.size(); ++i) first[i + 1] = first[i] + (seqs[i].every_row ? seqs[i].length : 1);
  Tensor out;
  for (const std::vector<size_t>& p : part) {
    std::vector<int32_t> sub_ids;
    std::vector<PackedSequence> sub;
    for (size_t i : p) {
      sub_ids.insert(sub_ids.end(), all + spans[i].begin, all + spans[i].begin + spans[i].length);
      sub.push_back(seqs[i]);
    }
    const Tensor lg = forward_packed(Tensor::from_i32(sub_ids, {1, int64_t(sub_ids.size())}), sub);
    if (!out.defined()) out = ops::empty({first.back(), cfg_.n_vocab}, lg.dtype(), lg.device());
    for (size_t k = 0, at = 0; k < p.size(); ++k) {
      const int64_t n = first[p[k] + 1] - first[p[k]];
      ops::copy_rows_into(out, first[p[k]], lg.slice_rows(int64_t(at), int64_t(at) + n));
      at += size_t(n);
    }
  }
  return out;
}

std::unique_ptr<Model> build_decoder(const ModelConfig& cfg) { return std::make_unique<DecoderModel>(cfg); }

}  // namespace lmtune
