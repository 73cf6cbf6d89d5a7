// What each llama.cpp architecture takes (gguf_export.h's families): the HF -> GGUF tensor names,
// the refusals of configs its loader or graph cannot hold, its hyper-parameter metadata and the
// tensors it computes from the config (rope frequency factors). Facts from llama.cpp's
// src/models/<arch>.cpp, src/llama-model.cpp and convert_hf_to_gguf.py.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "gguf_export.h"
#include "io/gguf.h"
#include "models/config.h"

namespace lmtune::cli::gguf_export {

// HF name -> llama.cpp name in architecture `arch`; "" for a name llama.cpp has no place for.
std::string gguf_name(const std::string& hf, const std::string& arch);

// {arch}.* keys: sizes, norms, rope (and its scaling), the architecture's own (soft-caps, windows,
// granite's multipliers). Prints a note where llama.cpp reads a config otherwise than transformers.
void add_arch_metadata(gguf::Writer& w, const ModelConfig& c, const Arch& a, const std::string& dir);

// Tensors made from the config, not the checkpoint (f32, 1-D): llama3's rope_freqs, longrope's
// rope_factors_long / rope_factors_short.
std::vector<std::pair<std::string, std::vector<float>>> config_tensors(const ModelConfig& c, const Arch& a);

}  // namespace lmtune::cli::gguf_export
