// Token embedding and the output head (final norm, then the lm_head or the tied embedding).
#pragma once
#include "nn/linear.h"
#include "nn/norm.h"

namespace lmtune::nn {

struct Embedding {
  LinearRef table;  // (n_vocab, n_embd), dense or quantized
  // The rows are multiplied by this (Gemma: sqrt(n_embd), rounded to the model's dtype first as
  // transformers and mlx-lm do); 1 = left as they are.
  float scale = 1.f;
  // ids i32 (B, T) on the CPU -> (B, T, n_embd) in the weight's dtype. A quantized table gathers
  // the ids' packed rows and dequantizes only those (frozen: no gradient).
  Tensor forward(const Tensor& ids) const;

 private:
  Tensor gather(const Tensor& ids) const;  // the rows, unscaled
};

struct LmHead {
  RmsNorm norm;       // the final norm
  LinearRef weight;   // (n_vocab, n_embd): lm_head, or the embedding when tied
  float scale = 1.f;  // logits times this (granite's 1 / logits_scaling), applied to the normed input
  // What the head's linear layer takes: x normed (and scaled).
  Tensor hidden(const Tensor& x) const {
    Tensor h = norm.forward(x);
    return scale == 1.f ? h : ag::scale(h, scale);
  }
  float softcap = 0.f;  // > 0: logits softcap * tanh(logits / softcap) (gemma2's final_logit_softcapping)
  // x (B, T, n_embd) -> logits (B, T, n_vocab) in the weight's dtype.
  Tensor forward(const Tensor& x) const {
    Tensor logits = weight.get().base(hidden(x));
    return softcap > 0.f ? ag::scale(ag::tanh(ag::scale(logits, 1.f / softcap)), softcap) : logits;
  }
};

}  // namespace lmtune::nn
