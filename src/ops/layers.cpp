// Fused layer ops: embedding, rms_norm, rope, attention, softmax, swiglu, cross-entropy, AdamW.
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "ops/ops.h"

namespace lmtune::ops {

namespace {
void check_same(const Tensor& a, const Tensor& b, const char* op, const char* what) {
  LMT_CHECK(a.device() == b.device() && a.dtype() == b.dtype() && a.shape() == b.shape(), "[", op, "] ", what, ": ",
            a.describe(), " vs ", b.describe());
}
}  // namespace

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  LMT_CHECK(weight.ndim() == 2, "[embedding] weight must be (n_vocab, n_embd), got ", weight.describe());
  LMT_CHECK(ids.dtype() == DType::i32, "[embedding] ids must be i32, got ", ids.describe());
  if (ids.device() == Device::cpu) {
    const int32_t* p = ids.data<int32_t>();
    for (int64_t i = 0; i < ids.numel(); ++i)
      LMT_CHECK(p[i] >= 0 && p[i] < weight.dim(0), "[embedding] token id ", p[i], " at position ", i,
                " outside the vocabulary of ", weight.dim(0));
  }
  Tensor dev_ids = to(ids, weight.device());
  Shape os = ids.shape();
  os.push_back(weight.dim(1));
  Tensor out = empty(os, weight.dtype(), weight.device());
  if (ids.numel() > 0)
    backend(weight.device())
        .embedding(weight.raw(), static_cast<const int32_t*>(dev_ids.raw()), out.raw(), ids.numel(), weight.dim(1),
                   weight.dtype());
  return out;
}

Tensor embedding_backward(const Tensor& dout, const Tensor& ids, int64_t n_vocab) {
  int64_t D = dout.dim(-1);
  LMT_CHECK(dout.numel() == ids.numel() * D, "[embedding_backward] dout ", dout.describe(), " for ids ",
            ids.describe());
  Tensor dw = zeros({n_vocab, D}, DType::f32, dout.device());
  Tensor dev_ids = to(ids, dout.device());
  if (ids.numel() > 0)
    backend(dout.device())
        .embedding_backward(dout.raw(), static_cast<const int32_t*>(dev_ids.raw()), static_cast<float*>(dw.raw()),
                            ids.numel(), D, dout.dtype());
  return dw;
}

RmsNormOut rms_norm(const Tensor& x, const Tensor& w, float eps) {
  LMT_CHECK(w.ndim() == 1 && x.ndim() >= 1 && x.dim(-1) == w.dim(0) && x.dtype() == w.dtype() &&
                x.device() == w.device(),
            "[rms_norm] input ", x.describe(), " does not match weight ", w.describe());
  int64_t dim = w.dim(0), rows = x.numel() / (dim ? dim : 1);
  Tensor out = empty(x.shape(), x.dtype(), x.device());
  Tensor rstd = empty({rows}, DType::f32, x.device());
  if (x.numel() > 0)
    backend(x.device())
        .rms_norm(x.raw(), w.raw(), out.raw(), static_cast<float*>(rstd.raw()), rows, dim, eps, x.dtype());
  return {out, rstd};
}

RmsNormGrads rms_norm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy) {
  check_same(x, dy, "rms_norm_backward", "dy must match x");
  int64_t dim = w.dim(0), rows = x.numel() / (dim ? dim : 1);
  Tensor dx = empty(x.shape(), x.dtype(), x.device());
  Tensor dw = empty({dim}, DType::f32, x.device());
  backend(x.device())
      .rms_norm_backward(x.raw(), w.raw(), static_cast<const float*>(rstd.raw()), dy.raw(), dx.raw(),
                         static_cast<float*>(dw.raw()), rows, dim, x.dtype());
  return {dx, dw};
}

std::pair<Tensor, Tensor> add_rms_norm(const Tensor& x, const Tensor& y, const Tensor& w, float eps) {
  check_same(x, y, "add_rms_norm", "x and y must match");
  LMT_CHECK(w.ndim() == 1 && x.ndim() >= 1 && x.dim(-1) == w.dim(0) && x.dtype() == w.dtype() &&
                x.device() == w.device(),
            "[add_rms_norm] input ", x.describe(), " does not match weight ", w.describe());
  const int64_t dim = w.dim(0), rows = x.numel() / (dim ? dim : 1);
  Tensor sum = empty(x.shape(), x.dtype(), x.device()), out = empty(x.shape(), x.dtype(), x.device());
  if (x.numel() > 0 &&
      backend(x.device()).add_rms_norm(x.raw(), y.raw(), w.raw(), sum.raw(), out.raw(), rows, dim, eps, x.dtype()))
    return {sum, out};
  sum = add(x, y);
  return {sum, rms_norm(sum, w, eps).out};
}

namespace {
const int32_t* position_ptr(const Tensor* pos, const Tensor& like, const char* op) {
  if (!pos) return nullptr;
  LMT_CHECK(pos->dtype() == DType::i32 && pos->numel() == 1 && pos->device() == like.device(), "[", op,
            "] a run-time position must be one i32 on ", device_name(like.device()), ", got ", pos->describe());
  return static_cast<const int32_t*>(pos->raw());
}
}  // namespace

void copy_rows_at(Tensor& dst, const Tensor& row_at, const Tensor& src) {
  LMT_CHECK(dst.ndim() >= 1 && src.ndim() == dst.ndim() && dst.dtype() == src.dtype() && dst.device() == src.device() &&
                src.dim(0) <= dst.dim(0),
            "[copy_rows_at] ", src.describe(), " into ", dst.describe());
  for (int i = 1; i < dst.ndim(); ++i)
    LMT_CHECK(dst.dim(i) == src.dim(i), "[copy_rows_at] row shape of ", src.describe(), " differs from ",
              dst.describe());
  const int32_t* row = position_ptr(&row_at, dst, "copy_rows_at");
  if (src.numel() == 0) return;
  backend(dst.device()).copy_rows_at(dst.raw(), src.raw(), int64_t(src.nbytes()) / src.dim(0), src.dim(0), row);
}

Tensor rope(const Tensor& x, const Tensor& inv_freq, int64_t pos_offset, float mscale, bool inverse,
            const Tensor* pos_at) {
  LMT_CHECK(x.ndim() == 4, "[rope] x must be (B, T, H, D), got ", x.describe());
  LMT_CHECK(inv_freq.dtype() == DType::f32 && inv_freq.numel() * 2 == x.dim(3) && inv_freq.device() == x.device(),
            "[rope] inv_freq ", inv_freq.describe(), " for head_dim ", x.dim(3));
  Tensor out = empty(x.shape(), x.dtype(), x.device());
  if (x.numel() > 0)
    backend(x.device())
        .rope(x.raw(), out.raw(), static_cast<const float*>(inv_freq.raw()), x.dim(0), x.dim(1), x.dim(2), x.dim(3),
              pos_offset, position_ptr(pos_at, x, "rope"), mscale, inverse, x.dtype());
  return out;
}

Tensor rope_at(const Tensor& x, const Tensor& inv_freq, const Tensor& positions, float mscale, bool inverse) {
  LMT_CHECK(x.ndim() == 4, "[rope_at] x must be (B, T, H, D), got ", x.describe());
  LMT_CHECK(inv_freq.dtype() == DType::f32 && inv_freq.numel() * 2 == x.dim(3) && inv_freq.device() == x.device(),
            "[rope_at] inv_freq ", inv_freq.describe(), " for head_dim ", x.dim(3));
  LMT_CHECK(positions.dtype() == DType::i32 && (positions.shape() == Shape{x.dim(0), x.dim(1)}) &&
                positions.device() == x.device(),
            "[rope_at] positions must be i32 (B, T) on x's device, got ", positions.describe(), " for x ",
            x.describe());
  Tensor out = empty(x.shape(), x.dtype(), x.device());
  if (x.numel() > 0)
    backend(x.device())
        .rope_at(x.raw(), out.raw(), static_cast<const float*>(inv_freq.raw()),
                 static_cast<const int32_t*>(positions.raw()), x.dim(0), x.dim(1), x.dim(2), x.dim(3), mscale, inverse,
                 x.dtype());
  return out;
}

Tensor rope_append(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& inv_freq, int64_t pos_offset,
                   const Tensor* pos_at, Tensor& k_cache, Tensor& v_cache) {
  LMT_CHECK(q.ndim() == 4 && k.ndim() == 4 && q.dim(0) == 1 && k.dim(0) == 1 && k.shape() == v.shape() &&
                q.dim(1) == k.dim(1) && q.dim(3) == k.dim(3) && q.dtype() == k.dtype() && k.dtype() == v.dtype() &&
                q.device() == k.device() && k.device() == v.device(),
            "[rope_append] q ", q.describe(), ", k ", k.describe(), ", v ", v.describe());
  LMT_CHECK(k_cache.ndim() == 3 && k_cache.shape() == v_cache.shape() && k_cache.dim(1) == k.dim(2) &&
                k_cache.dim(2) == k.dim(3) && k_cache.dtype() == k.dtype() && k_cache.device() == k.device() &&
                v_cache.dtype() == k.dtype() && v_cache.device() == k.device(),
            "[rope_append] cache ", k_cache.describe(), " for k ", k.describe());
  LMT_CHECK(inv_freq.dtype() == DType::f32 && inv_freq.numel() * 2 == q.dim(3) && inv_freq.device() == q.device(),
            "[rope_append] inv_freq ", inv_freq.describe(), " for head_dim ", q.dim(3));
  LMT_CHECK(pos_at || pos_offset + k.dim(1) <= k_cache.dim(0), "[rope_append] rows [", pos_offset, ", ",
            pos_offset + k.dim(1), ") out of range for ", k_cache.describe());
  Tensor out = empty(q.shape(), q.dtype(), q.device());
  if (!backend(q.device())
           .rope_append(q.raw(), k.raw(), v.raw(), out.raw(), k_cache.raw(), v_cache.raw(),
                        static_cast<const float*>(inv_freq.raw()), q.dim(1), q.dim(2), k.dim(2), q.dim(3), pos_offset,
                        position_ptr(pos_at, q, "rope_append"), q.dtype()))
    return Tensor();
  return out;
}

namespace {
AttentionArgs attention_args(const Tensor& q, const Tensor& k, const Tensor& v, float scale, bool causal,
                             int64_t window, int64_t q_offset) {
  LMT_CHECK(q.ndim() == 4 && k.ndim() == 4, "[attention] q and k must be (B, T, heads, head_dim), got ", q.describe(),
            " and ", k.describe());
  check_same(k, v, "attention", "k and v must match");
  LMT_CHECK(q.dtype() == k.dtype() && q.device() == k.device() && q.dim(0) == k.dim(0) && q.dim(3) == k.dim(3),
            "[attention] q ", q.describe(), " and k ", k.describe(), " disagree");
  LMT_CHECK(k.dim(2) > 0 && q.dim(2) % k.dim(2) == 0, "[attention] n_head ", q.dim(2),
            " is not a multiple of n_kv_head ", k.dim(2));
  AttentionArgs a;
  a.q = q.raw();
  a.k = k.raw();
  a.v = v.raw();
  a.dtype = q.dtype();
  a.B = q.dim(0);
  a.T = q.dim(1);
  a.S = k.dim(1);
  a.n_head = q.dim(2);
  a.n_kv_head = k.dim(2);
  a.head_dim = q.dim(3);
  a.scale = scale;
  a.causal = causal;
  a.window = window;
  a.q_offset = q_offset;
  return a;
}

// Packed rows' segment ids into a: only for causal self-attention over the same rows.
void set_segments(AttentionArgs& a, const Tensor* segments, const Tensor& q) {
  if (!segments) return;
  LMT_CHECK(
      segments->dtype() == DType::i32 && (segments->shape() == Shape{a.B, a.T}) && segments->device() == q.device(),
      "[attention] segments must be i32 (B, T) on q's device, got ", segments->describe(), " for q ", q.describe());
  LMT_CHECK(a.causal && a.S == a.T && a.q_offset == 0 && !a.q_offset_at,
            "[attention] segments (packed rows) are for causal self-attention without a cache");
  a.segment = static_cast<const int32_t*>(segments->raw());
}
}  // namespace

AttentionOut attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, bool causal, int64_t window,
                       int64_t q_offset, const Tensor* q_offset_at, const Tensor* segments, float softcap) {
  LMT_CHECK(softcap >= 0.f && std::isfinite(softcap), "[attention] softcap must be >= 0, got ", softcap);
  AttentionArgs a = attention_args(q, k, v, scale, causal, window, q_offset);
  a.softcap = softcap;
  a.q_offset_at = position_ptr(q_offset_at, q, "attention");
  set_segments(a, segments, q);
  AttentionOut r{empty(q.shape(), q.dtype(), q.device()), empty({a.B, a.n_head, a.T}, DType::f32, q.device())};
  a.out = r.out.raw();
  a.lse = static_cast<float*>(r.lse.raw());
  if (q.numel() > 0 && a.S > 0) backend(q.device()).attention(a);
  return r;
}

AttentionGrads attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOut& fwd,
                                  const Tensor& dout, float scale, bool causal, int64_t window, int64_t q_offset,
                                  const Tensor* segments, float softcap) {
  check_same(q, dout, "attention_backward", "dout must match q");
  AttentionBackwardArgs ab;
  ab.fwd = attention_args(q, k, v, scale, causal, window, q_offset);
  ab.fwd.softcap = softcap;
  set_segments(ab.fwd, segments, q);
  ab.fwd.out = fwd.out.raw();
  ab.fwd.lse = static_cast<float*>(fwd.lse.raw());
  AttentionGrads g{empty(q.shape(), q.dtype(), q.device()), empty(k.shape(), k.dtype(), k.device()),
                   empty(v.shape(), v.dtype(), v.device())};
  ab.dout = dout.raw();
  ab.dq = g.dq.raw();
  ab.dk = g.dk.raw();
  ab.dv = g.dv.raw();
  if (q.numel() > 0 && ab.fwd.S > 0) backend(q.device()).attention_backward(ab);
  return g;
}

Tensor softmax(const Tensor& x) {
  Tensor y = empty(x.shape(), x.dtype(), x.device());
  int64_t n = x.ndim() ? x.dim(-1) : 1;
  if (x.numel() > 0) backend(x.device()).softmax(x.raw(), y.raw(), x.numel() / n, n, x.dtype());
  return y;
}

Tensor softmax_backward(const Tensor& y, const Tensor& dy) {
  check_same(y, dy, "softmax_backward", "dy must match y");
  Tensor dx = empty(y.shape(), y.dtype(), y.device());
  int64_t n = y.ndim() ? y.dim(-1) : 1;
  if (y.numel() > 0) backend(y.device()).softmax_backward(y.raw(), dy.raw(), dx.raw(), y.numel() / n, n, y.dtype());
  return dx;
}

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  check_same(gate, up, "swiglu", "gate and up must match");
  Tensor out = empty(gate.shape(), gate.dtype(), gate.device());
  if (gate.numel() > 0) backend(gate.device()).swiglu(gate.raw(), up.raw(), out.raw(), gate.numel(), gate.dtype());
  return out;
}

SwigluGrads swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout) {
  check_same(gate, dout, "swiglu_backward", "dout must match gate");
  SwigluGrads g{empty(gate.shape(), gate.dtype(), gate.device()), empty(up.shape(), up.dtype(), up.device())};
  if (gate.numel() > 0)
    backend(gate.device())
        .swiglu_backward(gate.raw(), up.raw(), dout.raw(), g.dgate.raw(), g.dup.raw(), gate.numel(), gate.dtype());
  return g;
}

CrossEntropyOut cross_entropy(const Tensor& logits, const Tensor& targets) {
  LMT_CHECK(logits.ndim() == 2 && targets.dtype() == DType::i32 && targets.numel() == logits.dim(0),
            "[cross_entropy] logits ", logits.describe(), " and targets ", targets.describe(),
            " (expected (N, V) and i32 (N))");
  int64_t N = logits.dim(0), V = logits.dim(1);
  if (targets.device() == Device::cpu) {
    const int32_t* t = targets.data<int32_t>();
    for (int64_t i = 0; i < N; ++i)
      LMT_CHECK(t[i] < V, "[cross_entropy] target ", t[i], " at row ", i, " outside the vocabulary of ", V);
  }
  Tensor dt = to(targets, logits.device());
  CrossEntropyOut r{empty({N}, DType::f32, logits.device()), empty({N}, DType::f32, logits.device())};
  if (N > 0)
    backend(logits.device())
        .cross_entropy(logits.raw(), static_cast<const int32_t*>(dt.raw()), static_cast<float*>(r.loss.raw()),
                       static_cast<float*>(r.lse.raw()), N, V, logits.dtype());
  return r;
}

Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& dloss) {
  int64_t N = logits.dim(0), V = logits.dim(1);
  LMT_CHECK(dloss.dtype() == DType::f32 && dloss.numel() == N, "[cross_entropy_backward] dloss ", dloss.describe());
  Tensor dt = to(targets, logits.device());
  Tensor dl = empty(logits.shape(), logits.dtype(), logits.device());
  if (N > 0)
    backend(logits.device())
        .cross_entropy_backward(logits.raw(), static_cast<const int32_t*>(dt.raw()),
                                static_cast<const float*>(lse.raw()), static_cast<const float*>(dloss.raw()), dl.raw(),
                                N, V, logits.dtype());
  return dl;
}

void adamw_(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, float lr, float b1, float b2, float eps, float wd,
            float bc1, float bc2) {
  for (const Tensor* t :
       {static_cast<const Tensor*>(&p), &g, static_cast<const Tensor*>(&m), static_cast<const Tensor*>(&v)})
    LMT_CHECK(t->dtype() == DType::f32 && t->shape() == p.shape() && t->device() == p.device(),
              "[adamw] parameter, gradient and state must be f32 of one shape; got ", t->describe(), " for ",
              p.describe());
  backend(p.device())
      .adamw(static_cast<float*>(p.raw()), static_cast<const float*>(g.raw()), static_cast<float*>(m.raw()),
             static_cast<float*>(v.raw()), p.numel(), lr, b1, b2, eps, wd, bc1, bc2);
}

}  // namespace lmtune::ops
