#include "nn/mlp.h"

#include "core/runtime_config.h"

namespace lmtune::nn {

Tensor GatedMlp::forward(const Tensor& x, bool decoding) const {
  Linear lg = gate.get(), lu = up.get();
  Tensor act_out;
  if (decoding && act == Activation::silu && lg.plain() && lu.plain()) {
    act_out = ops::swiglu_linear(x, lg.weight, lu.weight);
  } else if (decoding && runtime_config().group_gate_up && lg.quantized_like(lu)) {
    std::vector<Tensor> gu = ops::quantized_linear_group(x, {lg.packed(), lu.packed()}, lg.format);
    act_out = act == Activation::silu ? ag::swiglu(gu[0], gu[1]) : ag::mul(ag::gelu_tanh(gu[0]), gu[1]);
  } else {
    // Quantized gate and up stay two launches: one grouped launch measured 48.9 us against 2 x 21.9
    // for Mistral 7B's 4-bit gate/up on the H200 (the grouped kernel runs 3 blocks a multiprocessor,
    // the single one 4; bench/NOTES.md), while q/k/v gain from grouping (10.8 us against 21.5).
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
