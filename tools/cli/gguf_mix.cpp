// The K-quant mixes (see gguf_mix.h), following llama.cpp's src/llama-quant.cpp for a dense model
// (n_expert 0, not Falcon, no imatrix, no --pure / --tensor-type / --output-tensor-type). llama-quantize
// visits tensors sorted by layer, so its attn_v and ffn_down counters equal the layer index here.
#include "gguf_mix.h"

#include <regex>

#include "core/error.h"

namespace lmtune::cli::gguf_export {

namespace {

using gguf::TensorType;

// llama-quant.cpp's use_more_bits: the first and last eighth of the layers and every third between.
bool use_more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

TensorType base_type(KMix mix) {
  switch (mix) {
    case KMix::q4_k_s:
    case KMix::q4_k_m: return TensorType::q4_k;
    case KMix::q5_k_s:
    case KMix::q5_k_m: return TensorType::q5_k;
    case KMix::q6_k: return TensorType::q6_k;
  }
  return TensorType::q4_k;
}

// tensor_type_fallback: a row that is not whole blocks of the chosen type takes a 32-block type,
// and F16 when it is not whole blocks of 32 either.
TensorType fallback(TensorType t, int64_t row) {
  if (row % gguf::block_elems(t) == 0) return t;
  switch (t) {
    case TensorType::q4_k: t = TensorType::q5_0; break;
    case TensorType::q5_k: t = TensorType::q5_1; break;
    case TensorType::q6_k: t = TensorType::q8_0; break;
    default: break;
  }
  return row % gguf::block_elems(t) == 0 ? t : TensorType::f16;
}

// LLM_TYPE_70B, the one model size llama-quant.cpp's rules look at (models/llama.cpp, qwen2.cpp).
bool is_70b(const MixModel& m) {
  return m.n_layer == 80 && ((m.arch == "llama" && m.n_head != m.n_kv_head) || m.arch == "qwen2");
}

}  // namespace

MixChoice k_mix_type(KMix mix, const MixModel& m, const std::string& name, int64_t row) {
  const TensorType base = base_type(mix);
  static const std::regex kBlock(R"(blk\.(\d+)\.(.+))");
  std::smatch b;
  const bool in_block = std::regex_match(name, b, kBlock);
  const int64_t layer = in_block ? std::stoll(b[1].str()) : -1;
  const std::string rest = in_block ? b[2].str() : "";
  LMT_CHECK(!in_block || layer < m.n_layer, "[gguf] tensor ", name, " names a layer beyond block_count ", m.n_layer);

  TensorType t = base;
  if (name == "output.weight" || (!m.has_output && name == "token_embd.weight")) {
    // The head: Q6_K, or Q8_0 where its rows are not whole super-blocks.
    if (row % gguf::block_elems(base) != 0) return {fallback(TensorType::q8_0, row), TensorType::q6_k};
    t = TensorType::q6_k;
  } else if (rest == "attn_v.weight") {
    if ((mix == KMix::q4_k_m || mix == KMix::q5_k_m) && use_more_bits(layer, m.n_layer))
      t = TensorType::q6_k;
    else if (mix == KMix::q4_k_s && layer < 4)
      t = TensorType::q5_k;
    if (is_70b(m) && t == TensorType::q4_k) t = TensorType::q5_k;  // 8 heads share each attn_v row
  } else if (rest == "attn_qkv.weight") {  // phi3's fused q/k/v (llama-quant.cpp's ATTENTION_QKV)
    if (mix == KMix::q4_k_m)
      t = TensorType::q5_k;
    else if (mix == KMix::q5_k_m)
      t = TensorType::q6_k;
  } else if (rest == "ffn_down.weight") {
    if ((mix == KMix::q4_k_m || mix == KMix::q5_k_m) && use_more_bits(layer, m.n_layer))
      t = TensorType::q6_k;
    else if (mix == KMix::q4_k_s && layer < m.n_layer / 8)
      t = TensorType::q5_k;
  }
  return {fallback(t, row), t};
}

uint32_t k_mix_file_type(KMix mix) {
  switch (mix) {
    case KMix::q4_k_s: return 14;
    case KMix::q4_k_m: return 15;
    case KMix::q5_k_s: return 16;
    case KMix::q5_k_m: return 17;
    case KMix::q6_k: return 18;
  }
  return 15;
}

}  // namespace lmtune::cli::gguf_export
