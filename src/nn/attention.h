// Causal grouped-query self-attention with rotary positions: q/k/v projections (with optional
// RMS norms of q and k over head_dim), rope, attention over the block's own keys or a KV cache,
// and the output projection. Decoding's fused kernels are chosen here, not in the families.
#pragma once
#include "nn/kv_cache.h"
#include "nn/linear.h"
#include "nn/norm.h"

namespace lmtune::nn {

struct AttentionOptions {
  int64_t n_head = 0, n_kv_head = 0, head_dim = 0;
  float scale = 0.f;   // on q.k
  int64_t window = 0;  // sliding window (keys within the last `window` positions), 0 = full
};

struct Attention {
  LinearRef q, k, v;                 // (n_head * head_dim | n_kv_head * head_dim, n_embd)
  LinearRef o;                       // (n_embd, n_head * head_dim)
  RmsNorm q_norm, k_norm;            // (head_dim) before rope, or undefined (no norm)
  const Tensor* inv_freq = nullptr;  // f32 (head_dim / 2) on the weights' device
  AttentionOptions opt;

  // x (B, T, n_embd), normed -> (B, T, n_embd). Without a cache: causal over x's own keys at
  // positions pos_offset + t. With one: appends this layer's keys and values at cache->offset()
  // (rotary positions from it, or from the device position a recorded decode step binds) and
  // attends over what the cache holds. decoding: a few rows, no autograd (fused kernels allowed).
  Tensor forward(const Tensor& x, int64_t layer, int64_t pos_offset, KVCache* cache, bool decoding) const;
};

}  // namespace lmtune::nn
