// Decoding's fused quantized products: those that share x (quantized_linear_group), gate and up
// with swiglu, a product with the residual add; one launch each where the backend can, the rms_norm before the first
// two inside it too.
#include "core/error.h"
#include "ops/ops.h"

namespace lmtune::ops {

namespace {
// The norm (where given) and the rope epilogue (where given) inside the products' launch (one row of x, affine weights
// of x's dtype and device): their outputs (with rope, q's alone), or none where the backend cannot.
std::vector<Tensor> normed_products(const Tensor& x, const std::vector<QuantizedWeight>& ws, const QuantFormat& f,
                                    const InputNorm* norm, bool swiglu, const Backend::RopeAppendArgs* rope = nullptr) {
  const int64_t K = x.dim(-1);
  if (x.numel() != K || f.mode != QuantMode::affine ||
      (norm && (norm->weight->dtype() != x.dtype() || norm->weight->shape() != Shape{K} ||
                norm->weight->device() != x.device())))
    return {};
  std::vector<const uint32_t*> wp;
  std::vector<const void*> sp, bp;
  std::vector<void*> yp;
  std::vector<int64_t> ns;
  std::vector<Tensor> out;
  for (const QuantizedWeight& w : ws) {
    if (w.wq->dim(1) * 32 / f.bits != K || w.scales->dtype() != x.dtype() || w.wq->device() != x.device()) return {};
    Shape os = x.shape();
    os.back() = w.wq->dim(0);
    if ((!swiglu && !rope) || out.empty()) {
      out.push_back(empty(os, x.dtype(), x.device()));
      yp.push_back(out.back().raw());
    }
    wp.push_back(static_cast<const uint32_t*>(w.wq->raw()));
    sp.push_back(w.scales->raw());
    bp.push_back(w.biases->raw());
    ns.push_back(w.wq->dim(0));
  }
  while (yp.size() < ws.size()) yp.push_back(yp[0]);  // swiglu's one output; with rope, the cache planes take k, v
  if (!backend(x.device())
           .quantized_gemv_normed(x.raw(), norm ? norm->weight->raw() : nullptr, norm ? norm->eps : 0.f, wp.data(),
                                  sp.data(), bp.data(), yp.data(), ns.data(), int(ws.size()), swiglu, K, f.bits,
                                  f.group_size, x.dtype(), rope))
    return {};
  return out;
}
}  // namespace

namespace {
// quantized_qkv_rope_append's inputs checked (a clear error where they do not fit) and put as the backend takes them.
Backend::RopeAppendArgs rope_args(const Tensor& x, const std::vector<QuantizedWeight>& qkv, const QuantFormat& f,
                                  const RopeAppend& rope, const char* what) {
  LMT_CHECK(qkv.size() == 3, "[", what, "] takes q, k and v, got ", qkv.size(), " weights");
  for (const QuantizedWeight& w : qkv) check_quantized(*w.wq, *w.scales, *w.biases, f, what);
  const Tensor &kc = *rope.k_cache, &vc = *rope.v_cache, &inv_freq = *rope.inv_freq;
  const int64_t D = inv_freq.numel() * 2;
  LMT_CHECK(inv_freq.dtype() == DType::f32 && inv_freq.device() == x.device() && D > 0, "[", what, "] inv_freq ",
            inv_freq.describe(), " for x ", x.describe());
  LMT_CHECK(kc.ndim() == 3 && kc.shape() == vc.shape() && kc.dim(2) == D && kc.dim(1) * D == qkv[1].wq->dim(0) &&
                qkv[1].wq->dim(0) == qkv[2].wq->dim(0) && qkv[0].wq->dim(0) % D == 0 && kc.dtype() == x.dtype() &&
                vc.dtype() == x.dtype() && kc.device() == x.device() && vc.device() == x.device(),
            "[", what, "] cache ", kc.describe(), " for k of ", qkv[1].wq->dim(0), " rows, head_dim ", D, ", x ",
            x.describe());
  const int32_t* pos_at = nullptr;
  if (rope.pos_at) {
    LMT_CHECK(rope.pos_at->dtype() == DType::i32 && rope.pos_at->numel() == 1 && rope.pos_at->device() == x.device(),
              "[", what, "] a run-time position must be one i32 on x's device, got ", rope.pos_at->describe());
    pos_at = static_cast<const int32_t*>(rope.pos_at->raw());
  }
  LMT_CHECK(pos_at || (rope.pos >= 0 && rope.pos < kc.dim(0)), "[", what, "] row ", rope.pos, " out of range for ",
            kc.describe());
  return {static_cast<const float*>(inv_freq.raw()), rope.k_cache->raw(), rope.v_cache->raw(), rope.pos, pos_at, D};
}
}  // namespace

Tensor quantized_qkv_rope_append(const Tensor& x, const std::vector<QuantizedWeight>& qkv, const QuantFormat& f,
                                 const InputNorm* norm, const RopeAppend& rope) {
  const Backend::RopeAppendArgs args = rope_args(x, qkv, f, rope, "quantized_qkv_rope_append");
  std::vector<Tensor> out = normed_products(x, qkv, f, norm, false, &args);
  return out.empty() ? Tensor() : out[0];
}

std::vector<Tensor> quantized_linear_group(const Tensor& x, const std::vector<QuantizedWeight>& ws,
                                           const QuantFormat& f, const InputNorm* norm) {
  LMT_CHECK(!ws.empty() && ws.size() <= 3, "[quantized_linear_group] takes 1 to 3 weights, got ", ws.size());
  if (norm) {
    for (const QuantizedWeight& w : ws) check_quantized(*w.wq, *w.scales, *w.biases, f, "quantized_linear_group");
    std::vector<Tensor> out = normed_products(x, ws, f, norm, false);
    if (!out.empty()) return out;
    return quantized_linear_group(rms_norm(x, *norm->weight, norm->eps).out, ws, f);
  }
  const int64_t K = x.dim(-1), M = x.numel() / (K ? K : 1);
  std::vector<Tensor> out;
  std::vector<const uint32_t*> wp;
  std::vector<const void*> sp, bp;
  std::vector<void*> yp;
  std::vector<int64_t> ns;
  // The grouped kernel is affine's; the fp modes run their products one by one.
  bool fits = M >= 1 && M <= 8 && f.mode == QuantMode::affine;
  const int bits = f.bits, group_size = f.group_size;
  for (const QuantizedWeight& w : ws) {
    check_quantized(*w.wq, *w.scales, *w.biases, f, "quantized_linear_group");
    fits = fits && w.wq->dim(1) * 32 / bits == K && w.scales->dtype() == x.dtype() && w.wq->device() == x.device();
    if (!fits) break;
    Shape os = x.shape();
    os.back() = w.wq->dim(0);
    out.push_back(empty(os, x.dtype(), x.device()));
    wp.push_back(static_cast<const uint32_t*>(w.wq->raw()));
    sp.push_back(w.scales->raw());
    bp.push_back(w.biases->raw());
    yp.push_back(out.back().raw());
    ns.push_back(w.wq->dim(0));
  }
  if (fits && backend(x.device())
                  .quantized_gemv_group(x.raw(), wp.data(), sp.data(), bp.data(), yp.data(), ns.data(), int(ws.size()),
                                        M, K, bits, group_size, x.dtype()))
    return out;
  out.clear();
  for (const QuantizedWeight& w : ws) out.push_back(quantized_linear(x, *w.wq, *w.scales, *w.biases, f));
  return out;
}

namespace {
// The fused kernels' conditions: affine, a few rows, x's dtype in the scales, x on W's device.
bool fusable(const Tensor& x, const QuantizedWeight& w, const QuantFormat& f, int64_t& M, int64_t& K) {
  K = x.dim(-1), M = x.numel() / (K ? K : 1);
  return M >= 1 && M <= 8 && f.mode == QuantMode::affine && w.wq->dim(1) * 32 / f.bits == K &&
         w.scales->dtype() == x.dtype() && w.wq->device() == x.device();
}
}  // namespace

Tensor quantized_swiglu_linear(const Tensor& x, const QuantizedWeight& gate, const QuantizedWeight& up,
                               const QuantFormat& f, const InputNorm* norm) {
  check_quantized(*gate.wq, *gate.scales, *gate.biases, f, "quantized_swiglu_linear");
  check_quantized(*up.wq, *up.scales, *up.biases, f, "quantized_swiglu_linear");
  if (norm) {
    if (gate.wq->shape() == up.wq->shape()) {
      std::vector<Tensor> out = normed_products(x, {gate, up}, f, norm, true);
      if (!out.empty()) return out[0];
    }
    return quantized_swiglu_linear(rms_norm(x, *norm->weight, norm->eps).out, gate, up, f);
  }
  int64_t M = 0, K = 0;
  if (fusable(x, gate, f, M, K) && fusable(x, up, f, M, K) && gate.wq->shape() == up.wq->shape()) {
    const int64_t N = gate.wq->dim(0);
    Shape os = x.shape();
    os.back() = N;
    Tensor out = empty(os, x.dtype(), x.device());
    const uint32_t* wqs[2] = {static_cast<const uint32_t*>(gate.wq->raw()), static_cast<const uint32_t*>(up.wq->raw())};
    const void* sc[2] = {gate.scales->raw(), up.scales->raw()};
    const void* bi[2] = {gate.biases->raw(), up.biases->raw()};
    if (backend(x.device())
            .quantized_gemv_swiglu(x.raw(), wqs, sc, bi, out.raw(), M, N, K, f.bits, f.group_size, x.dtype()))
      return out;
  }
  std::vector<Tensor> gu = quantized_linear_group(x, {gate, up}, f);
  return swiglu(gu[0], gu[1]);
}

Tensor quantized_linear_add(const Tensor& x, const QuantizedWeight& w, const Tensor& residual, const QuantFormat& f) {
  check_quantized(*w.wq, *w.scales, *w.biases, f, "quantized_linear_add");
  int64_t M = 0, K = 0;
  const int64_t N = w.wq->dim(0);
  Shape os = x.shape();
  os.back() = N;
  if (fusable(x, w, f, M, K) && residual.shape() == os && residual.dtype() == x.dtype() &&
      residual.device() == x.device()) {
    Tensor y = empty(os, x.dtype(), x.device());
    if (backend(x.device())
            .quantized_gemv_add(x.raw(), static_cast<const uint32_t*>(w.wq->raw()), w.scales->raw(), w.biases->raw(),
                                residual.raw(), y.raw(), M, N, K, f.bits, f.group_size, x.dtype()))
      return y;
  }
  return add(residual, quantized_linear(x, *w.wq, *w.scales, *w.biases, f));
}

Tensor quantized_decode_chain(const Tensor& a, const QuantizedWeight& o, const Tensor& x, const InputNorm& norm,
                              const QuantizedWeight& gate, const QuantizedWeight& up, const QuantizedWeight& down,
                              const QuantFormat& f, const DecodeChainNext* next) {
  const QuantizedWeight ws[4] = {o, gate, up, down};
  for (const QuantizedWeight& w : ws) check_quantized(*w.wq, *w.scales, *w.biases, f, "quantized_decode_chain");
  const int64_t n_attn = a.dim(-1), n_embd = x.dim(-1), n_ff = gate.wq->dim(0);
  const DType dt = x.dtype();
  auto fits = [&](const QuantizedWeight& w, int64_t rows, int64_t in) {
    return w.wq->dim(0) == rows && w.wq->dim(1) * 32 / f.bits == in && w.scales->dtype() == dt &&
           w.wq->device() == x.device();
  };
  if (f.mode != QuantMode::affine || a.numel() != n_attn || x.numel() != n_embd || a.dtype() != dt ||
      a.device() != x.device() || !fits(o, n_embd, n_attn) || !fits(gate, n_ff, n_embd) || !fits(up, n_ff, n_embd) ||
      !fits(down, n_embd, n_ff) || norm.weight->shape() != Shape{n_embd} || norm.weight->dtype() != dt ||
      norm.weight->device() != x.device())
    return {};
  Backend::QuantizedDecodeChain c{};
  c.a = a.raw(), c.x = x.raw();
  c.norm_w = norm.weight->raw(), c.eps = norm.eps;
  for (int i = 0; i < 4; ++i) {
    c.wq[i] = static_cast<const uint32_t*>(ws[i].wq->raw());
    c.scales[i] = ws[i].scales->raw();
    c.biases[i] = ws[i].biases->raw();
  }
  c.n_embd = n_embd, c.n_attn = n_attn, c.n_ff = n_ff;
  c.bits = f.bits, c.group_size = f.group_size, c.dt = dt;
  if (next) {  // as quantized_qkv_rope_append of out would run them
    const Tensor& nw = *next->norm.weight;
    if (next->qkv.size() != 3 || nw.shape() != Shape{n_embd} || nw.dtype() != dt || nw.device() != x.device())
      return {};
    for (const QuantizedWeight& w : next->qkv)
      if (!fits(w, w.wq->dim(0), n_embd)) return {};  // any rows, of out's width
    c.next_rope = rope_args(x, next->qkv, f, next->rope, "quantized_decode_chain");
    for (int i = 0; i < 3; ++i) {
      c.next_wq[i] = static_cast<const uint32_t*>(next->qkv[size_t(i)].wq->raw());
      c.next_scales[i] = next->qkv[size_t(i)].scales->raw();
      c.next_biases[i] = next->qkv[size_t(i)].biases->raw();
      c.next_n[i] = next->qkv[size_t(i)].wq->dim(0);
    }
    c.next_norm_w = nw.raw(), c.next_eps = next->norm.eps;
  }
  Backend& be = backend(x.device());
  if (!be.takes_decode_chain(c)) return {};  // before allocating outputs it would not write
  Tensor x1 = empty(x.shape(), dt, x.device()), act = empty({n_ff}, dt, x.device()),
         out = empty(x.shape(), dt, x.device()), q;
  c.x1 = x1.raw(), c.act = act.raw(), c.out = out.raw();
  if (next) {
    q = empty({c.next_n[0]}, dt, x.device());
    c.next_q = q.raw();
  }
  if (!be.quantized_decode_chain(c)) return {};
  if (next) *next->q = q;
  return out;
}

}  // namespace lmtune::ops
