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
  RmsNorm norm;      // the final norm
  LinearRef weight;  // (n_vocab, n_embd): lm_head, or the embedding when tied
  // x (B, T, n_embd) -> logits (B, T, n_vocab) in the weight's dtype.
  Tensor forward(const Tensor& x) const { return weight.get().base(norm.forward(x)); }
};

}  // namespace lmtune::nn
