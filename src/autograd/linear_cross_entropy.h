// Training's output head fused with its cross-entropy: the loss of logits = hidden @ W^T taken in
// chunks of rows, so that the (N, n_vocab) logits and their gradient are never whole in memory.
#pragma once
#include "autograd/tape.h"
#include "ops/ops.h"

namespace lmtune::ag {

// The head's weight (n_vocab, n_embd): dense (it may be trainable: full fine-tuning with
// train_embeddings, a tied embedding, a cast master), or frozen in MLX's quantized layout (scales
// defined; weight then u32 packed, dequantized to dense_dtype where a product needs it dense).
struct HeadWeight {
  Tensor weight;          // (V, C) in hidden's dtype, or u32 (V, C * bits / 32) when quantized
  Tensor scales, biases;  // (V, C / group_size) when quantized (biases for affine only), else undefined
  QuantFormat format{};
  DType dense_dtype = DType::f32;  // what a quantized weight dequantizes to (hidden's dtype)
  bool quantized() const { return scales.defined(); }
};

// Mean over the targets >= 0 of -log softmax(hidden @ W^T)[target], as cross_entropy(linear(hidden,
// W), targets) (functions.h) computes it: an f32 scalar, 0 with no supervised target. hidden (N, C),
// targets i32 (N) on any device. Only the supervised rows are gathered and taken, chunk_rows at a
// time (0: default_xent_chunk_rows). With gradients on, each chunk's dlogits are formed while its
// logits are live (the upstream gradient of the mean is then 1 / n_tokens) and reduced at once to
// d hidden (N, C) and, for a trainable dense weight, d W (V, C): a third product over the vocabulary
// (recomputing the logits in backward) is saved; backward scales them by the loss's gradient. d W
// is accumulated chunk by chunk in W's dtype (bf16 on CUDA: one rounding a chunk, where the unfused
// product rounds once).
Tensor linear_cross_entropy(const Tensor& hidden, const HeadWeight& head, const Tensor& targets,
                            int64_t chunk_rows = 0);

// The most rows whose logits (n_vocab wide, in dt) take at most 256 MiB, rounded down to a multiple
// of 256 (or of 64 below 256); at least 1. 768 for a 151,936-token vocabulary in bf16.
int64_t default_xent_chunk_rows(int64_t n_vocab, DType dt);

}  // namespace lmtune::ag
