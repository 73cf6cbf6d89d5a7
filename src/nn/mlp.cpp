#include "nn/mlp.h"

namespace lmtune::nn {

Tensor GatedMlp::forward(const Tensor& x, bool decoding) const {
  Linear lg = gate.get(), lu = up.get();
  Tensor act_out;
  if (decoding && act == Activation::silu && lg.plain() && lu.plain()) {
    act_out = ops::swiglu_linear(x, lg.weight, lu.weight);
  } else if (decoding && act == Activation::silu && lg.quantized_like(lu)) {
    std::vector<Tensor> gu = ops::quantized_linear_group(x, {lg.packed(), lu.packed()}, lg.format);
    act_out = ops::swiglu(gu[0], gu[1]);
  } else {
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
  return down.forward(act_out);
}

}  // namespace lmtune::nn
