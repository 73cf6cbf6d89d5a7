// MLX's quantized weight format, exactly (mx.quantize / mx.dequantize; reference/mlx-lm.md §3.4):
// a weight (out, in) becomes packed codes, u32 (out, in * bits / 32), packed LSB-first along a row,
// with one scale (and for affine one bias) per group of group_size consecutive inputs of a row.
//   affine: w ~ scale * q + bias, q in [0, 2^bits); bits 2, 3, 4, 5, 6, 8; groups 32, 64, 128;
//           scales and biases (out, in / group_size) in the source weight's dtype.
//   mxfp4 (group 32, bits 4), nvfp4 (group 16, bits 4), mxfp8 (group 32, bits 8): floating-point
//           codes with u8 scales (out, in / group_size) and no biases.
// These are the reference (CPU, scalar) implementations: tests compare them bit for bit with MLX,
// and the fast kernels (CPU and CUDA) with them.
//
// The packing is one LSB-first bitstream per row in little-endian u32 words: code k of a row sits
// in bits [k * bits, (k + 1) * bits) of the stream, so with 3, 5 and 6 bits a code can straddle two
// words (code 10 at 3 bits: bits 30-31 of word 0 and bit 0 of word 1). A group always fills whole
// words (group_size * bits is a multiple of 32). The fp codes: E2M1 (mxfp4, nvfp4), E4M3 (mxfp8);
// scales E8M0 (2^(s - 127); mxfp4, mxfp8) or E4M3 (nvfp4); core/fp_formats.h decodes them.
#pragma once
#include <cstdint>
#include <string>

#include "core/quant_format.h"
#include "core/tensor.h"

namespace lmtune::quant {

// The mode and its parameters are core's (core/quant_format.h), named here as convert knows them.
using Mode = QuantMode;
using QuantParams = QuantFormat;

inline const char* mode_name(Mode m) { return quant_mode_name(m); }
inline Mode parse_mode(const std::string& name, const std::string& where) { return parse_quant_mode(name, where); }
inline void check_params(const QuantParams& p, int64_t in_features, const std::string& where) {
  check_quant_format(p, in_features, where);
}
inline QuantParams default_params(Mode m) { return default_quant_format(m); }

// A quantized weight: the three tensors of a checkpoint's <layer>.weight / .scales / .biases.
// Leading batch dimensions (stacked experts, (n_expert, out, in)) are allowed throughout.
struct QuantizedWeight {
  Tensor wq;      // u32 (..., out, in * bits / 32)
  Tensor scales;  // (..., out, in / group_size): the weight dtype (affine) or u8 (the fp modes)
  Tensor biases;  // (..., out, in / group_size), affine only; undefined otherwise
  QuantParams params;
  int64_t out_features() const { return wq.dim(-2); }
  int64_t in_features() const { return wq.dim(-1) * 32 / params.bits; }
};

// w: a float tensor (f32, bf16, f16) on the CPU, (..., in) with at least 2 dimensions and in a
// multiple of group_size. Equal, bit for bit, to mx.quantize(w, group_size, bits, mode) of MLX's
// CPU backend (0.32.4), which computes in f32 for affine and in the weight's dtype for the fp modes
// (nvfp4 without a global scale). Rows are split over the cores.
QuantizedWeight quantize(const Tensor& w, const QuantParams& p);
// The dense weight (..., out, in) in dtype out, equal bit for bit to mx.dequantize(..., dtype=out):
// affine computes scale * q, then + bias, each rounded to the scales' dtype, and converts that to
// out; the fp modes compute code * scale in out itself (mx.dequantize's default there is bf16).
// CPU tensors; q is validated first.
Tensor dequantize(const QuantizedWeight& q, DType out = DType::f32);
// Checks that wq, scales and biases have the shapes and dtypes params and in_features imply;
// throws naming `name` (the layer) and the tensor at fault ("<name>.scales").
void validate(const QuantizedWeight& q, int64_t in_features, const std::string& name);

}  // namespace lmtune::quant
