// Names, defaults and the accepted combinations of MLX's quantization modes.
#include "core/quant_format.h"

#include "core/error.h"

namespace lmtune {

const char* quant_mode_name(QuantMode m) {
  switch (m) {
    case QuantMode::affine: return "affine";
    case QuantMode::mxfp4: return "mxfp4";
    case QuantMode::nvfp4: return "nvfp4";
    case QuantMode::mxfp8: return "mxfp8";
  }
  return "?";
}

QuantMode parse_quant_mode(const std::string& name, const std::string& where) {
  for (QuantMode m : {QuantMode::affine, QuantMode::mxfp4, QuantMode::nvfp4, QuantMode::mxfp8})
    if (name == quant_mode_name(m)) return m;
  fail("[", where, "] unknown quantization mode '", name, "' (affine, mxfp4, nvfp4, mxfp8)");
}

QuantFormat default_quant_format(QuantMode m) {
  switch (m) {
    case QuantMode::affine: return {QuantMode::affine, 4, 64};
    case QuantMode::mxfp4: return {QuantMode::mxfp4, 4, 32};
    case QuantMode::nvfp4: return {QuantMode::nvfp4, 4, 16};
    case QuantMode::mxfp8: return {QuantMode::mxfp8, 8, 32};
  }
  return {};
}

std::string quant_format_error(const QuantFormat& f, int64_t in_features) {
  if (f.mode == QuantMode::affine) {
    const int b = f.bits, g = f.group_size;
    if (!(b == 2 || b == 3 || b == 4 || b == 5 || b == 6 || b == 8))
      return str_cat("affine quantization supports bits 2, 3, 4, 5, 6 and 8, got ", b);
    if (!(g == 32 || g == 64 || g == 128))
      return str_cat("affine quantization supports group sizes 32, 64 and 128, got ", g);
  } else {
    const QuantFormat d = default_quant_format(f.mode);
    if (f.bits != d.bits || f.group_size != d.group_size)
      return str_cat(quant_mode_name(f.mode), " quantization needs group size ", d.group_size, " and bits ", d.bits,
                     ", got group size ", f.group_size, " and bits ", f.bits);
  }
  if (in_features > 0 && in_features % f.group_size != 0)
    return str_cat("the input dimension ", in_features, " is not a multiple of the group size ", f.group_size);
  return {};
}

void check_quant_format(const QuantFormat& f, int64_t in_features, const std::string& where) {
  const std::string e = quant_format_error(f, in_features);
  if (!e.empty()) fail("[", where, "] ", e);
}

std::string describe(const QuantFormat& f) {
  return str_cat(quant_mode_name(f.mode), " (", f.bits, " bits, group ", f.group_size, ")");
}

}  // namespace lmtune
