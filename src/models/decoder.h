// The dense decoder every family so far declares itself as: embedding, n_layer pre-norm blocks
// (nn::Attention and nn::GatedMlp), final norm and head. The config's typed fields say what
// differs (biases, q/k norms, windows, rope, tied head); family files only parse them.
#pragma once
#include <optional>

#include "models/model.h"
#include "nn/attention.h"
#include "nn/embedding.h"
#include "nn/mlp.h"
#include "nn/moe.h"

namespace lmtune {

class DecoderModel final : public Model {
 public:
  // Throws where the config asks for a declared difference the blocks do not implement yet.
  explicit DecoderModel(ModelConfig cfg);
  std::vector<TensorSpec> tensor_specs() const override;
  Tensor forward(const Tensor& ids, int64_t pos_offset = 0) override;
  Tensor forward(const Tensor& ids, const PackedRows& rows) override;
  bool forward_hidden(const Tensor& ids, Tensor& hidden, nn::Linear& head, const PackedRows* rows = nullptr) override;
  Tensor forward(const Tensor& ids, KVCache& cache, bool last_only = false) override;
  // One sequence: forward(ids, cache, true) itself. More: every projection, norm and MLP once over
  // all rows; attention per sequence against its cache (nn::Attention::forward_packed).
  Tensor forward_packed(const Tensor& ids, const std::vector<PackedSequence>& seqs) override;

 private:
  struct Block {
    nn::RmsNorm attn_norm;  // input_layernorm (undefined in the post layout)
    nn::Attention attn;     // self_attn
    nn::RmsNorm mlp_norm;   // post_attention_layernorm (sandwich: pre_feedforward_layernorm; post: undefined)
    nn::GatedMlp mlp;       // mlp
    nn::MoeMlp moe;         // a mixture of experts in place of mlp (experts empty: dense)
    // On the attention's and the MLP's outputs before their residual adds (sandwich and post
    // layouts): post_attention_layernorm and post_feedforward_layernorm; undefined otherwise.
    nn::RmsNorm post_attn_norm, post_mlp_norm;
    float residual_scale = 1.f;  // on both outputs before their residual adds (granite)
    // The attention's input: x normed, or x itself where the block has no input norm.
    Tensor attn_input(const Tensor& x) const { return attn_norm.defined() ? attn_norm.forward(x) : x; }
    // x + attention a, then the MLP half of the block: the residual stream after the block.
    Tensor finish(const Tensor& x, Tensor a, bool decoding) const;
    // The same as (x1, m), the stream after the block being x1 + m, so that an inference forward
    // adds m in the next block's input norm (one fused kernel); m undefined where the add was made
    // already (a quantized down product's fused epilogue while decoding).
    std::pair<Tensor, Tensor> finish_parts(const Tensor& x, Tensor a, bool decoding) const;
    // The attention's input from the stream x + pending (pending undefined: x alone); x becomes
    // the sum. The same values as attn_input(x + pending).
    Tensor input_after(Tensor& x, const Tensor& pending, bool decoding) const;
    // Whether a decoding step runs this block as x + attn(norm(x)) -> x1, x1 + mlp(norm(x1)) with each norm inside the
    // products after it and each residual add in the product before it (a plain pre-norm block of quantized weights:
    // no post norms, no scale, no experts): the same values as the plain path.
    bool fuses_norms(bool decoding) const;
    // That path: the stream after the block. pre: this block's q, k and v already projected by the block before
    // (else null). next (the block after, also on this path; else null): its q, k and v projected in this block's
    // decode chain where that runs (RuntimeConfig::cuda_decode_chain_qkv), into *next_pre (left alone otherwise).
    Tensor decode_fused(const Tensor& x, int64_t layer, int64_t pos, KVCache& cache,
                        const nn::Attention::Projected* pre = nullptr, const Block* next = nullptr,
                        std::optional<nn::Attention::Projected>* next_pre = nullptr) const;
  };
  void on_weights_set() override;
  void bind() override;
  // Attention over x's own keys at positions pos_offset + t (or, with seg, at its positions within
  // its segments): training and scoring (forward_layers runs the cached inference forward).
  Tensor block(int64_t layer, const Tensor& x, int64_t pos_offset, const nn::Segments* seg = nullptr);
  Tensor forward_layers(const Tensor& ids, KVCache& cache);  // hidden states (B, T, n_embd)
  // The same without a cache, before the final norm; packed rows when seg is set.
  Tensor forward_blocks(const Tensor& ids, int64_t pos_offset, const nn::Segments* seg = nullptr);
  // Packed rows' layout checked and moved to the weights' device.
  nn::Segments segments(const Tensor& ids, const PackedRows& rows) const;
  Tensor inv_freq_;          // f32 (head_dim / 2) on the weights' device
  Tensor inv_freq_sliding_;  // the sliding layers' own (config rope_sliding), or undefined
  Tensor inv_freq_none_;     // zeros: a layer without rotary positions turns by angle 0, or undefined
  Tensor rope_perm_;         // a partial rotary's permutation (nn::Attention::rope_perm), or undefined
  // longrope: inv_freq_ holds the short or the long set, chosen before each forward by the largest
  // position it reaches (written in place, so recorded launches would see it; the decode graphs
  // stay off for such models anyway: runtime/decode_graph.cpp).
  bool rope_long_ = false;
  void use_rope_for(int64_t positions);  // positions: the largest position of the forward + 1
  // forward_packed of a longrope model whose sequences straddle the limit: part[0] (within) and
  // part[1] (past it) as two packed forwards.
  Tensor forward_packed_parts(const Tensor& ids, const std::vector<PackedSequence>& seqs,
                              const std::vector<nn::PackedSpan>& spans, const std::vector<size_t> (&part)[2]);
  nn::Embedding embed_;
  std::vector<Block> blocks_;
  nn::LmHead head_;
};

std::unique_ptr<Model> build_decoder(const ModelConfig& cfg);

}  // namespace lmtune
