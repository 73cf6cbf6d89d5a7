// The gated MLP of Llama-style blocks: down(act(gate(x)) * up(x)).
#pragma once
#include "nn/activation.h"
#include "nn/linear.h"
#include "nn/norm.h"

namespace lmtune::nn {

struct GatedMlp {
  LinearRef gate, up;  // (n_ff, n_embd)
  LinearRef gate_up;   // or one fused (2 n_ff, n_embd) projection, gate's rows first (phi3); gate, up unset
  LinearRef down;      // (n_embd, n_ff)
  Activation act = Activation::silu;

  // x (B, T, n_embd) -> (B, T, n_embd), plus *residual (B, T, n_embd) when given. While decoding
  // (a few rows, no autograd), plain gate and up products with silu run as one kernel with swiglu
  // in its epilogue, and a plain quantized down product with the residual add in its epilogue,
  // where the backend has such kernels.
  // in_norm (decoding): x is the input of that norm, which a fused gate/up product takes inside its launch (else it
  // runs first); the same values.
  Tensor forward(const Tensor& x, bool decoding, const Tensor* residual = nullptr,
                 const RmsNorm* in_norm = nullptr) const;
  // Whether forward() adds a residual inside the down product's kernel (else it is a separate add).
  bool fuses_residual(bool decoding) const { return decoding && down.get().plain_quantized(); }
  // Decoding one row: x1 = x + o(a), then x1 + forward(norm(x1)), in one launch where the backend has it (ops::
  // quantized_decode_chain: o, gate, up and down quantized alike, silu); undefined where not (nothing written). With
  // next (the next layer's q, k and v, quantized as next_format says), those too in the same launch.
  Tensor forward_chained(const Tensor& a, const Linear& o, const Tensor& x, const RmsNorm& norm,
                         const ops::DecodeChainNext* next = nullptr, const QuantFormat* next_format = nullptr) const;

 private:
  // down(act_out), plus *residual when given (in the down product's epilogue where fuses_residual).
  Tensor finish(const Tensor& act_out, bool decoding, const Tensor* residual) const;
};

}  // namespace lmtune::nn
