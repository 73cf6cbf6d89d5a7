// How a weight is stored in MLX's quantized layout (reference/mlx-lm.md §3.4; quant/quant.h has the
// reference (de)quantization): the mode, the bits of a code and the inputs a scale covers. Shared by
// the loader, the ops, the kernels and convert, so that every layer names one description.
//   affine: bits 2, 3, 4, 5, 6, 8; groups 32, 64, 128; float scales and biases
//   mxfp4 (bits 4, group 32), nvfp4 (4, 16), mxfp8 (8, 32): fp codes, u8 scales, no biases
#pragma once
#include <cstdint>
#include <string>

namespace lmtune {

enum class QuantMode { affine, mxfp4, nvfp4, mxfp8 };

struct QuantFormat {
  QuantMode mode = QuantMode::affine;
  int bits = 4;
  int group_size = 64;
  // Affine keeps a float bias per group; the fp modes have none.
  bool has_biases() const { return mode == QuantMode::affine; }
  bool operator==(const QuantFormat&) const = default;
};

// "affine" | "mxfp4" | "nvfp4" | "mxfp8" (as config.json and mx.quantize spell them).
const char* quant_mode_name(QuantMode m);
// The mode named name; throws naming where otherwise.
QuantMode parse_quant_mode(const std::string& name, const std::string& where);
// MLX's defaults for a mode: affine 64/4, mxfp4 32/4, nvfp4 16/4, mxfp8 32/8.
QuantFormat default_quant_format(QuantMode m);
// Throws "[where] ..." unless f is a combination MLX accepts; in_features (when > 0) must be a
// multiple of the group size.
void check_quant_format(const QuantFormat& f, int64_t in_features, const std::string& where);
// The same check's message without the "[where] " prefix; empty when f is accepted.
std::string quant_format_error(const QuantFormat& f, int64_t in_features);
// "mxfp4 (4 bits, group 32)".
std::string describe(const QuantFormat& f);

}  // namespace lmtune
