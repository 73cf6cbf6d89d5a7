// llama-quantize's K-quant mixes (q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k): which ggml type each 2-D
// tensor of a dense model (no experts) gets, as llama-quant.cpp's llama_tensor_get_type
// and tensor_type_fallback choose it without an importance matrix or overrides.
#pragma once
#include <cstdint>
#include <string>

#include "io/gguf.h"

namespace lmtune::cli::gguf_export {

enum class KMix { q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k };

struct MixModel {
  std::string arch;  // general.architecture (llama, qwen2, ...)
  int64_t n_layer = 0, n_head = 0, n_kv_head = 0;
  bool has_output = false;  // output.weight present (untied); else token_embd is the head too
};

struct MixChoice {
  gguf::TensorType type;    // what is written
  gguf::TensorType wanted;  // the mix's choice before the row-length fallback (== type when it fits)
};

// name: the GGUF tensor name (blk.N.attn_v.weight, output.weight, ...) of a 2-D weight; row: its
// row length (ggml's ne[0]).
MixChoice k_mix_type(KMix mix, const MixModel& m, const std::string& name, int64_t row);

uint32_t k_mix_file_type(KMix mix);  // llama_ftype: 14 .. 18

}  // namespace lmtune::cli::gguf_export
