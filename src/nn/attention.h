// Causal grouped-query self-attention with rotary positions: q/k/v projections (with optional
// RMS norms of q and k over head_dim), rope, attention over the block's own keys or a KV cache,
// and the output projection. Decoding's fused kernels are chosen here, not in the families.
#pragma once
#include "nn/kv_cache.h"
#include "nn/linear.h"
#include "nn/norm.h"

#include <functional>
#include <vector>

namespace lmtune::nn {

struct AttentionOptions {
  int64_t n_head = 0, n_kv_head = 0, head_dim = 0;
  float scale = 0.f;    // on q.k
  int64_t window = 0;   // sliding window (keys within the last `window` positions), 0 = full
  float softcap = 0.f;  // > 0: scores soft-capped, softcap * tanh(score / softcap) (gemma2)
};

// Packed training rows (lmtune lora --pack): several examples concatenated along T. Per token its
// rotary position (restarting at 0 for each example) and its segment id (the example's index in
// the row, non-decreasing along T), i32 (B, T) on the weights' device. A query attends only to
// keys of its own segment, causally.
struct Segments {
  Tensor positions, ids;
};

// One sequence's rows in a packed batch (Attention::forward_packed): rows [begin, begin + length)
// of the packed input are its new tokens, appended to its own cache at cache->offset().
struct PackedSpan {
  int64_t begin = 0, length = 0;
  KVCache* cache = nullptr;
};

struct Attention {
  LinearRef q, k, v;                 // (n_head * head_dim | n_kv_head * head_dim, n_embd)
  LinearRef qkv;                     // or one fused projection, q's rows then k's then v's (phi3); q, k, v unset
  LinearRef o;                       // (n_embd, n_head * head_dim)
  RmsNorm q_norm, k_norm;            // (head_dim) before rope, or undefined (no norm)
  bool qk_norm_whole = false;        // the norms over all heads' features at once: (n_head | n_kv_head * head_dim)
  const Tensor* inv_freq = nullptr;  // f32 (head_dim / 2) on the weights' device
  // A partial rotary (phi3's partial_rotary_factor): a (head_dim, head_dim) permutation in the
  // weights' dtype that q and k take after projection, moving each rotated pair (i, i + R/2) of
  // the first R dimensions to the rope kernels' pair (i, i + head_dim/2) and the unrotated rest to
  // the pairs inv_freq gives angle 0. q and k share it, so q.k and the attention are unchanged
  // (but for longrope's attention factor, which it carries on the rotated dimensions); or null.
  const Tensor* rope_perm = nullptr;
  AttentionOptions opt;

  // x (B, T, n_embd), normed -> (B, T, n_embd). Without a cache: causal over x's own keys at
  // positions pos_offset + t. With one: appends this layer's keys and values at cache->offset()
  // (rotary positions from it, or from the device position a recorded decode step binds) and
  // attends over what the cache holds. decoding: a few rows, no autograd (fused kernels allowed).
  // seg (no cache, pos_offset 0): packed rows, rotated at seg->positions, attention per segment.
  // fuse (decoding with a cache; DecoderModel's plain pre-norm layers): x is the stream before the input norm, which
  // the q, k and v products take inside their launch, and the o product adds *fuse->residual (-> x + block's
  // attention); where a kernel cannot, the plain ops run, with the same values.
  // before_o: the attention's output (B, T, n_head * head_dim) is returned as it is, o's product left to the caller
  // (the decode chain, ops::quantized_decode_chain).
  // pre: this layer's q, k and v already projected, rotated and stored by the launch before (project_by), so the step
  // starts at the attention.
  struct Projected {
    Tensor q_rot;  // (1, 1, n_head, head_dim)
    KVCache::View kv;
  };
  struct DecodeFusion {
    const RmsNorm* in_norm;
    const Tensor* residual;
    bool before_o = false;
    const Projected* pre = nullptr;
  };
  Tensor forward(const Tensor& x, int64_t layer, int64_t pos_offset, KVCache* cache, bool decoding,
                 const Segments* seg = nullptr, const DecodeFusion* fuse = nullptr) const;
  // o's product of the attention's output a, + *residual where given (inside the product's launch where it is
  // quantized): forward's last step.
  Tensor output(const Tensor& a, const Tensor* residual) const;
  // Decoding one token (batch 1): this layer's q, k and v of the stream normed with in_norm, computed by `run` inside
  // a launch that does other work first (the previous layer's decode chain), as forward's fused projection would
  // compute them. run gets them as ops::DecodeChainNext takes them (its q to fill) with their format, and returns
  // false where it declined (having written nothing). True: stored in the cache, and pre set for DecodeFusion::pre.
  // False where the fused projection would not run or run declined: nothing stored.
  using ProjectRun = std::function<bool(const ops::DecodeChainNext&, const QuantFormat&)>;
  bool project_by(int64_t layer, KVCache& cache, DType dt, const RmsNorm& in_norm, const ProjectRun& run,
                  Projected& pre) const;
  // Several sequences packed along T: x (1, N, n_embd), normed -> (1, N, n_embd). The projections
  // run once over all N rows (one read of each weight); rope, the cache update and attention run
  // per span against its own cache, as forward() does for that span alone. decoding: N is small
  // enough for the fused projection kernels (the block decides, as for forward()).
  Tensor forward_packed(const Tensor& x, int64_t layer, const std::vector<PackedSpan>& spans, bool decoding) const;

 private:
  // q (B, T, n_head, head_dim), k and v (B, T, n_kv_head, head_dim), q/k norms applied, no rope.
  // in_norm: x is its input, normed here (inside the grouped quantized products where they run).
  void project(const Tensor& x, bool decoding, Tensor& qt, Tensor& kt, Tensor& vt,
               const RmsNorm* in_norm = nullptr) const;
  // The projections' layers: q, k and v (a fused qkv's row blocks when decoding can take them), or whole (the fused
  // layer as one product).
  void split_qkv(bool decoding, Linear& lq, Linear& lk, Linear& lv, Linear& whole) const;
  // One decoding token: q, k and v's products with the rope and the cache append in their launch (the same values as
  // project, then update_rotary): q_rot (1, 1, n_head, head_dim) and kv set; false where they cannot, nothing done.
  bool project_rotary(const Tensor& x, int64_t layer, KVCache& cache, const RmsNorm* in_norm, Tensor& q_rot,
                      KVCache::View& kv) const;
  // What project_rotary and project_by share: where the fused projection can run, `product` gets q, k and v's packed
  // weights, their format, the input norm (null: none) and the cache's rope target, writes k and v there and returns q
  // rotated (undefined where it declined, nothing written); q_rot (1, 1, n_head, head_dim) and kv then set.
  using RotaryProduct = std::function<Tensor(const std::vector<ops::QuantizedWeight>&, const QuantFormat&,
                                             const ops::InputNorm*, const ops::RopeAppend&)>;
  bool rotary_by(int64_t layer, KVCache& cache, DType dt, const RmsNorm* in_norm, const RotaryProduct& product,
                 Tensor& q_rot, KVCache::View& kv) const;
};

}  // namespace lmtune::nn
