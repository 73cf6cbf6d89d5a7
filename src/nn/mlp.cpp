#include "nn/mlp.h"

#include "core/runtime_config.h"

namespace lmtune::nn {

Tensor GatedMlp::forward(const Tensor& x_in, bool decoding, const Tensor* residual, const RmsNorm* in_norm) const {
  Linear lg, lu;
  Tensor act_out;
  if (in_norm) {  // inside the fused gate/up product's launch where it runs (below), else here
    const Linear g = gate.weight ? gate.get() : Linear(), u = up.weight ? up.get() : Linear();
    if (decoding && act == Activation::silu && gate.weight && up.weight && runtime_config().group_gate_up &&
        g.quantized_like(u)) {
      const FusedNorm norm(in_norm);
      return finish(ops::quantized_swiglu_linear(x_in, g.packed(), u.packed(), g.format, norm.get()), decoding,
                    residual);
    }
    return forward(in_norm->forward(x_in), decoding, residual);
  }
  const Tensor& x = x_in;
  if (gate_up.weight) {
    Linear l = gate_up.get();
    const int64_t n = l.out_features() / 2;
    if (!decoding || !(l.plain() || l.plain_quantized())) {  // one product (and adapter), then its halves
      Tensor y = l.forward(x);
      Tensor g = ag::slice_last(y, 0, n), u = ag::slice_last(y, n, n);
      act_out = act == Activation::silu ? ag::swiglu(g, u) : ag::mul(ag::gelu_tanh(g), u);
    } else {  // row views of the fused weight take the decoding kernels below
      lg = l.rows(0, n), lu = l.rows(n, n);
    }
  } else {
    lg = gate.get(), lu = up.get();
  }
  if (act_out.defined()) {
    // done above
  } else if (decoding && act == Activation::silu && lg.plain() && lu.plain()) {
    act_out = ops::swiglu_linear(x, lg.weight, lu.weight);
  } else if (decoding && act == Activation::silu && runtime_config().group_gate_up && lg.quantized_like(lu)) {
    act_out = ops::quantized_swiglu_linear(x, lg.packed(), lu.packed(), lg.format);
  } else if (decoding && runtime_config().group_gate_up && lg.quantized_like(lu)) {
    std::vector<Tensor> gu = ops::quantized_linear_group(x, {lg.packed(), lu.packed()}, lg.format);
    act_out = act == Activation::silu ? ag::swiglu(gu[0], gu[1]) : ag::mul(ag::gelu_tanh(gu[0]), gu[1]);
  } else {
    // Training, prefill, adapters on gate or up, or LMTUNE_GROUP_GATE_UP=0: one product each.
    Tensor g, u;
    {
      // One f32 cast of x for both adapters; gate before up, in statements, so that their
      // dropout draws keep their order (function arguments have none).
      AdapterInput in(x);
      g = lg.forward(in);
      u = lu.forward(in);
    }
    act_out = act == Activation::silu ? ag::swiglu(g, u) : ag::mul(ag::gelu_tanh(g), u);
  }
  return finish(act_out, decoding, residual);
}

Tensor GatedMlp::forward_chained(const Tensor& a, const Linear& o, const Tensor& x, const RmsNorm& norm,
                                 const ops::DecodeChainNext* next, const QuantFormat* next_format) const {
  if (act != Activation::silu || !gate.weight || !up.weight) return {};
  const Linear g = gate.get(), u = up.get(), d = down.get();
  const FusedNorm fused(&norm);
  if (!fused.get() || !o.quantized_like(g) || !g.quantized_like(u) || !g.quantized_like(d)) return {};
  if (next && !(next_format && *next_format == g.format)) return {};  // one format for the whole launch
  return ops::quantized_decode_chain(a, o.packed(), x, *fused.get(), g.packed(), u.packed(), d.packed(), g.format,
                                     next);
}

Tensor GatedMlp::finish(const Tensor& act_out, bool decoding, const Tensor* residual) const {
  if (!residual) return down.forward(act_out);
  if (fuses_residual(decoding)) {
    Linear ld = down.get();
    return ops::quantized_linear_add(act_out, ld.packed(), *residual, ld.format);
  }
  return ag::add(*residual, down.forward(act_out));
}

}  // namespace lmtune::nn
