// Backward rules of the differentiable ops.
#include "autograd/functions.h"

#include "core/error.h"

namespace lmtune::ag {

Tensor reshape(const Tensor& x, const Shape& shape) {
  Shape in = x.shape();
  return record("reshape", x.reshape(shape), {x}, [in](const Tensor& d) { return std::vector<Tensor>{d.reshape(in)}; });
}

Tensor cast(const Tensor& x, DType dt) {
  DType src = x.dtype();
  if (src == dt) return x;
  return record("cast", ops::cast(x, dt), {x},
                [src](const Tensor& d) { return std::vector<Tensor>{ops::cast(d, src)}; });
}

Tensor add(const Tensor& a, const Tensor& b) {
  Shape bs = b.shape();
  return record("add", ops::add(a, b), {a, b}, [bs](const Tensor& d) {
    return std::vector<Tensor>{d, ops::sum_to_shape(d, bs)};
  });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Shape bs = b.shape();
  return record("sub", ops::sub(a, b), {a, b}, [bs](const Tensor& d) {
    return std::vector<Tensor>{d, ops::scale(ops::sum_to_shape(d, bs), -1.f)};
  });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor ad = a.detach(), bd = b.detach();
  bool ga = requires_grad(a), gb = requires_grad(b);
  return record("mul", ops::mul(a, b), {a, b}, [ad, bd, ga, gb](const Tensor& d) {
    // b may broadcast over a's leading axes; its gradient sums over them.
    Tensor da = ga ? ops::mul(d, bd) : Tensor();
    Tensor db = gb ? ops::sum_to_shape(ops::mul(d, ad), bd.shape()) : Tensor();
    return std::vector<Tensor>{da, db};
  });
}

Tensor scale(const Tensor& x, float s) {
  return record("scale", ops::scale(x, s), {x}, [s](const Tensor& d) { return std::vector<Tensor>{ops::scale(d, s)}; });
}

Tensor add_scalar(const Tensor& x, float s) {
  return record("add_scalar", ops::unary(UnaryOp::add_scalar, x, s), {x},
                [](const Tensor& d) { return std::vector<Tensor>{d}; });
}

Tensor slice_last(const Tensor& x, int64_t begin, int64_t n) {
  const int64_t cols = x.dim(x.ndim() - 1);
  return record("slice_last", ops::slice_last(x, begin, n), {x},
                [cols, begin](const Tensor& d) { return std::vector<Tensor>{ops::place_last(d, cols, begin)}; });
}

Tensor gather_rows(const Tensor& x, const Tensor& ids) {
  const Tensor idc = ids;
  const int64_t R = x.dim(0);
  const DType dt = x.dtype();
  return record("gather_rows", ops::embedding(x, ids), {x}, [idc, R, dt](const Tensor& d) {
    return std::vector<Tensor>{ops::cast(ops::embedding_backward(d, idc, R), dt)};
  });
}

Tensor scatter_rows(const Tensor& y, const Tensor& ids, int64_t rows) {
  const Tensor idc = ids;
  const DType dt = y.dtype();
  return record("scatter_rows", ops::cast(ops::embedding_backward(y, ids, rows), dt), {y},
                [idc](const Tensor& d) { return std::vector<Tensor>{ops::embedding(d, idc)}; });
}

Tensor silu(const Tensor& x) {
  Tensor xd = x.detach();
  return record("silu", ops::unary(UnaryOp::silu, x), {x},
                [xd](const Tensor& d) { return std::vector<Tensor>{ops::unary_backward(UnaryOp::silu, xd, d)}; });
}

Tensor gelu_tanh(const Tensor& x) {
  Tensor xd = x.detach();
  return record("gelu_tanh", ops::unary(UnaryOp::gelu_tanh, x), {x},
                [xd](const Tensor& d) { return std::vector<Tensor>{ops::unary_backward(UnaryOp::gelu_tanh, xd, d)}; });
}

Tensor tanh(const Tensor& x) {
  Tensor xd = x.detach();
  return record("tanh", ops::unary(UnaryOp::tanh, x), {x},
                [xd](const Tensor& d) { return std::vector<Tensor>{ops::unary_backward(UnaryOp::tanh, xd, d)}; });
}

Tensor sum(const Tensor& x) {
  Shape s = x.shape();
  DType dt = x.dtype();
  Device dev = x.device();
  Tensor xs = x.dtype() == DType::f32 ? x : ops::cast(x, DType::f32);
  return record("sum", ops::sum_all(xs), {x},
                [s, dt, dev](const Tensor& d) { return std::vector<Tensor>{ops::full(s, ops::item(d), dt, dev)}; });
}

Tensor mean(const Tensor& x) {
  float n = float(x.numel());
  return scale(sum(x), n > 0 ? 1.f / n : 0.f);
}

Tensor matmul(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  Tensor ad = a.detach(), bd = b.detach();
  bool ga = requires_grad(a), gb = requires_grad(b);
  return record("matmul", ops::matmul(a, b, ta, tb), {a, b}, [ad, bd, ta, tb, ga, gb](const Tensor& d) {
    // C = op(A) op(B): dA = dC op(B)^T (transposed back when ta); dB likewise.
    Tensor da, db;
    if (ga) da = ta ? ops::matmul(bd, d, tb, true) : ops::matmul(d, bd, false, !tb);
    if (gb) {
      if (bd.ndim() == 2 && ad.ndim() > 2) {
        // b shared across a's batch: fold the batch into rows.
        LMT_CHECK(!ta, "[matmul backward] a transposed batched a with a shared b is not supported");
        Tensor a2 = ad.reshape({-1, ad.dim(-1)});
        Tensor d2 = d.reshape({-1, d.dim(-1)});
        db = tb ? ops::matmul(d2, a2, true, false) : ops::matmul(a2, d2, true, false);
      } else {
        db = tb ? ops::matmul(d, ad, true, ta) : ops::matmul(ad, d, !ta, false);
      }
    }
    return std::vector<Tensor>{da, db};
  });
}

Tensor grouped_linear(const Tensor& x, const std::vector<Tensor>& ws, const std::vector<int64_t>& offsets) {
  const bool gx = requires_grad(x);
  std::vector<Tensor> inputs{x}, wd;
  std::vector<bool> gw;
  bool any_w = false;
  for (const Tensor& w : ws) {
    inputs.push_back(w);
    wd.push_back(w.detach());
    gw.push_back(requires_grad(w));
    any_w = any_w || gw.back();
  }
  const Tensor xd = any_w ? x.detach() : Tensor();  // kept only for the weights' gradients (frozen experts: not)
  const size_t n = ws.size();
  return record("grouped_linear", ops::grouped_matmul(x, wd, offsets, true), inputs, [=](const Tensor& d) {
    std::vector<Tensor> g{gx ? ops::grouped_matmul(d, wd, offsets, false) : Tensor()};
    std::vector<Tensor> dw = any_w ? ops::grouped_matmul_wgrad(d, xd, offsets, gw) : std::vector<Tensor>(n);
    g.insert(g.end(), dw.begin(), dw.end());
    return g;
  });
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  Tensor xd = x.detach(), wd = w.detach();
  bool gx = requires_grad(x), gw = requires_grad(w), gb = bias.defined() && requires_grad(bias);
  std::vector<Tensor> inputs{x, w};
  if (bias.defined()) inputs.push_back(bias);
  bool has_bias = bias.defined();
  return record("linear", ops::linear(x, w, bias), inputs, [=](const Tensor& d) {
    Tensor d2 = d.reshape({d.numel() / d.dim(-1), d.dim(-1)});  // (N, out)
    std::vector<Tensor> g(has_bias ? 3 : 2);
    if (gx) g[0] = ops::matmul(d2, wd).reshape(xd.shape());                            // (N, out) @ (out, in)
    if (gw) g[1] = ops::matmul(d2, xd.reshape({d2.dim(0), xd.dim(-1)}), true, false);  // (out, in)
    if (gb) g[2] = ops::sum_axis(d2, 0, d2.dtype());
    return g;
  });
}

Tensor quantized_linear(const Tensor& x, const Tensor& wq, const Tensor& scales, const Tensor& biases,
                        const QuantFormat& f, const Tensor& bias) {
  const bool gx = requires_grad(x), gb = bias.defined() && requires_grad(bias);
  std::vector<Tensor> inputs{x};
  if (bias.defined()) inputs.push_back(bias);
  const bool has_bias = bias.defined();
  const Shape x_shape = x.shape();
  Tensor wqd = wq.detach(), sd = scales.detach(), bd = biases.defined() ? biases.detach() : Tensor();
  return record("quantized_linear", ops::quantized_linear(x, wq, scales, biases, f, bias), inputs,
                [=](const Tensor& d) {
                  Tensor d2 = d.reshape({d.numel() / d.dim(-1), d.dim(-1)});  // (N, out)
                  std::vector<Tensor> g(has_bias ? 2 : 1);
                  if (gx)
                    g[0] = ops::matmul(d2, ops::dequantize(wqd, sd, bd, f, d2.dtype(), "quantized_linear"))
                               .reshape(x_shape);  // (N, out) @ (out, in)
                  if (gb) g[1] = ops::sum_axis(d2, 0, d2.dtype());
                  return g;
                });
}

Tensor lora_down(const Tensor& x, const Tensor& a, const Tensor& mask, const Tensor& x_cast) {
  DType dt = a.dtype();
  LMT_CHECK(a.ndim() == 2 && x.ndim() >= 2 && x.dim(-1) == a.dim(0), "[lora_down] ", x.describe(), " @ ", a.describe());
  LMT_CHECK(!mask.defined() || (mask.shape() == x.shape() && mask.dtype() == dt), "[lora_down] mask ", mask.describe(),
            " for input ", x.describe());
  LMT_CHECK(!x_cast.defined() || (x_cast.shape() == x.shape() && x_cast.dtype() == dt), "[lora_down] x_cast ",
            x_cast.describe(), " for input ", x.describe());
  Tensor z;
  {
    // The cast (and its masked copy) live only in this scope: nothing of them is saved.
    Tensor xc = x_cast.defined() ? x_cast.detach() : ops::cast(x.detach(), dt);
    if (mask.defined()) xc = ops::mul(xc, mask);
    z = ops::matmul(xc, a.detach());
  }
  Tensor xd = x.detach(), ad = a.detach(), md = mask.defined() ? mask.detach() : Tensor();
  bool gx = requires_grad(x), ga = requires_grad(a);
  return record("lora_down", z, {x, a}, [xd, ad, md, gx, ga, dt](const Tensor& d) {
    // The same products, in the same order, as matmul(mul(cast(x), mask), a) recorded op by op.
    Tensor dx, da;
    if (ga) {
      Tensor xc = ops::cast(xd, dt);
      if (md.defined()) xc = ops::mul(xc, md);
      da = ops::matmul(xc.reshape({-1, xc.dim(-1)}), d.reshape({-1, d.dim(-1)}), true, false);  // (in, r)
    }  // xc is released before dx's (..., in) temporaries are made
    if (gx) {
      Tensor dxc = ops::matmul(d, ad, false, true);  // (..., in) in a's dtype
      if (md.defined()) dxc = ops::mul(dxc, md);
      dx = ops::cast(dxc, xd.dtype());
    }
    return std::vector<Tensor>{dx, da};
  });
}

Tensor lora_add(const Tensor& y, const Tensor& x, const Tensor& a, const Tensor& b, float scale, const Tensor& mask) {
  const DType dt = x.dtype();
  LMT_CHECK(a.ndim() == 2 && b.ndim() == 2 && x.ndim() >= 2 && x.dim(-1) == a.dim(0) && a.dim(1) == b.dim(0),
            "[lora_add] ", x.describe(), " @ ", a.describe(), " @ ", b.describe());
  const int64_t in = a.dim(0), r = a.dim(1), out = b.dim(1), rows = x.numel() / in;
  LMT_CHECK(y.dtype() == dt && y.dim(-1) == out && y.numel() == rows * out && y.device() == x.device(),
            "[lora_add] base output ", y.describe(), " for input ", x.describe(), " and ", b.describe());
  LMT_CHECK(!mask.defined() || mask.shape() == x.shape(), "[lora_add] mask ", mask.describe(), " for input ",
            x.describe());
  const Tensor a_dt = ops::cast(a.detach(), dt), b_dt = ops::cast(b.detach(), dt);
  const Tensor m_dt = mask.defined() ? ops::cast(mask.detach(), dt) : Tensor();
  const Tensor xd = x.detach();
  Tensor xa;  // (rows, r)
  {
    Tensor xm = m_dt.defined() ? ops::mul(xd, m_dt) : xd;  // the masked copy is not kept
    xa = ops::matmul(xm.reshape({rows, in}), a_dt);
  }
  Tensor res = y.detach();
  Tensor res2 = res.reshape({rows, out});
  ops::gemm_into(res2, xa, b_dt, false, false, scale, 1.f);
  const bool gx = requires_grad(x), ga = requires_grad(a), gb = requires_grad(b);
  return record("lora_add", res, {y, x, a, b}, [=](const Tensor& d) {
    const Device dev = d.device();
    const Tensor d2 = d.reshape({rows, out});
    Tensor dx, da, db;
    if (gb) {
      db = ops::empty({r, out}, DType::f32, dev);
      ops::gemm_into(db, xa, d2, true, false, scale, 0.f);
    }
    if (ga || gx) {
      Tensor dxa = ops::empty({rows, r}, dt, dev);
      ops::gemm_into(dxa, d2, b_dt, false, true, scale, 0.f);
      if (ga) {
        Tensor xm = m_dt.defined() ? ops::mul(xd, m_dt) : xd;
        da = ops::empty({in, r}, DType::f32, dev);
        ops::gemm_into(da, xm.reshape({rows, in}), dxa, true, false, 1.f, 0.f);
      }  // the masked copy is released before dx is made
      if (gx) {
        dx = ops::matmul(dxa, a_dt, false, true);  // (rows, in)
        if (m_dt.defined()) dx = ops::mul(dx, m_dt.reshape({rows, in}));
        dx = dx.reshape(xd.shape());
      }
    }
    return std::vector<Tensor>{d, dx, da, db};
  });
}

Tensor lora_linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& a, const Tensor& b,
                   float scale) {
  if (requires_grad(w) || (bias.defined() && requires_grad(bias))) return {};
  const Tensor xd = x.detach(), wd = w.detach(), ad = a.detach(), bd = b.detach();
  ops::LoraLinearOut o = ops::lora_linear(xd, wd, bias.defined() ? bias.detach() : Tensor(), ad, bd, scale);
  if (!o.y.defined()) return {};
  const bool gx = requires_grad(x), ga = requires_grad(a), gb = requires_grad(b);
  std::vector<Tensor> inputs{x, w, a, b};
  if (bias.defined()) inputs.push_back(bias);
  const size_t n = inputs.size();
  const Tensor xa = o.xa;
  return record("lora_linear", o.y, inputs, [=](const Tensor& d) {
    ops::LoraLinearGrads g = ops::lora_linear_backward(d, xd, xa, wd, ad, bd, scale, gx, ga, gb);
    LMT_CHECK(g.ok, "[lora_linear] the backend ran the forward but not the backward");
    std::vector<Tensor> out(n);
    out[0] = g.dx, out[2] = g.da, out[3] = g.db;
    return out;
  });
}

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  Tensor idc = ids.detach();
  int64_t V = weight.dim(0);
  DType dt = weight.dtype();
  return record("embedding", ops::embedding(weight, ids), {weight, Tensor()}, [idc, V, dt](const Tensor& d) {
    return std::vector<Tensor>{ops::cast(ops::embedding_backward(d, idc, V), dt), Tensor()};
  });
}

Tensor rms_norm(const Tensor& x, const Tensor& w, float eps) {
  ops::RmsNormOut r = ops::rms_norm(x, w, eps);
  Tensor xd = x.detach(), wd = w.detach(), rstd = r.rstd;
  return record("rms_norm", r.out, {x, w}, [xd, wd, rstd](const Tensor& d) {
    ops::RmsNormGrads g = ops::rms_norm_backward(xd, wd, rstd, d);
    return std::vector<Tensor>{g.dx, ops::cast(g.dw, wd.dtype())};
  });
}

Tensor rope(const Tensor& x, const Tensor& inv_freq, int64_t pos_offset, float mscale) {
  // The rotation is orthogonal (times mscale), so its transpose is the inverse rotation.
  return record("rope", ops::rope(x, inv_freq, pos_offset, mscale, false), {x},
                [=](const Tensor& d) { return std::vector<Tensor>{ops::rope(d, inv_freq, pos_offset, mscale, true)}; });
}

Tensor rope_at(const Tensor& x, const Tensor& inv_freq, const Tensor& positions, float mscale) {
  return record("rope", ops::rope_at(x, inv_freq, positions, mscale, false), {x}, [=](const Tensor& d) {
    return std::vector<Tensor>{ops::rope_at(d, inv_freq, positions, mscale, true)};
  });
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, bool causal, int64_t window,
                 int64_t q_offset, const Tensor* segments, float softcap) {
  ops::AttentionOut r = ops::attention(q, k, v, scale, causal, window, q_offset, nullptr, segments, softcap);
  Tensor qd = q.detach(), kd = k.detach(), vd = v.detach();
  ops::AttentionOut saved{r.out.detach(), r.lse};
  const Tensor seg = segments ? *segments : Tensor();  // kept alive by the backward closure
  return record("attention", r.out, {q, k, v}, [=](const Tensor& d) {
    ops::AttentionGrads g = ops::attention_backward(qd, kd, vd, saved, d, scale, causal, window, q_offset,
                                                    seg.defined() ? &seg : nullptr, softcap);
    return std::vector<Tensor>{g.dq, g.dk, g.dv};
  });
}

Tensor softmax(const Tensor& x) {
  Tensor y = ops::softmax(x);
  Tensor yd = y.detach();
  return record("softmax", y, {x}, [yd](const Tensor& d) { return std::vector<Tensor>{ops::softmax_backward(yd, d)}; });
}

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  Tensor gd = gate.detach(), ud = up.detach();
  return record("swiglu", ops::swiglu(gate, up), {gate, up}, [gd, ud](const Tensor& d) {
    ops::SwigluGrads g = ops::swiglu_backward(gd, ud, d);
    return std::vector<Tensor>{g.dgate, g.dup};
  });
}

CrossEntropySum cross_entropy_sum(const Tensor& logits, const Tensor& targets) {
  Tensor tc = ops::to(targets, Device::cpu);
  int64_t n = 0;
  for (int64_t i = 0; i < tc.numel(); ++i) n += tc.data<int32_t>()[i] >= 0;
  ops::CrossEntropyOut r = ops::cross_entropy(logits, targets);
  Tensor ld = logits.detach(), lse = r.lse, tdev = ops::to(targets, logits.device());
  int64_t N = logits.dim(0);
  Tensor total = ops::sum_all(r.loss);
  total = record("cross_entropy", total, {logits}, [ld, tdev, lse, N](const Tensor& d) {
    Tensor dl = ops::full({N}, ops::item(d), DType::f32, ld.device());
    return std::vector<Tensor>{ops::cross_entropy_backward(ld, tdev, lse, dl)};
  });
  return {total, n};
}

Tensor cross_entropy(const Tensor& logits, const Tensor& targets) {
  CrossEntropySum s = cross_entropy_sum(logits, targets);
  return scale(s.sum, s.n_tokens > 0 ? 1.f / float(s.n_tokens) : 0.f);
}

}  // namespace lmtune::ag
