// lmtune's fuse on a quantized base: per merged layer, how much of the merge's change dW survives
// re-quantization (kept = <written - W, dW> / ||dW||^2, W the dequantized source weight, dW the
// merge computed in f32), and the smallest output that keeps at least the threshold: the layer's
// own parameters (mlx-lm's way), 8 bits, dense in the merged dtype, dense f32.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "convert_plan.h"

namespace lmtune::cli::fuse_keep {

// The written weight's share of dW along dW (1: all of it; 0: rounded away).
double kept_fraction(const Tensor& source, const Tensor& target, const Tensor& written);

struct Choice {
  std::string path;
  double kept_requantized = 0;  // with the layer's own parameters (mlx_lm.fuse's output)
  double kept = 0;              // with the chosen output
  convert::Request::MergeOutput output;
  std::string label;     // "4-bit", "8-bit", "8-bit mxfp8", "dense bf16", "dense f32"
  bool changed = false;  // the output differs from the layer's own parameters
};

// Every merged, quantized layer of `plan` (built from a request without merge_outputs), in the
// plan's order. threshold in [0, 1].
std::vector<Choice> choose(const convert::Plan& plan, double threshold);

// The summary lines fuse prints: how many layers at which output, the kept fractions, the bits
// per weight of the output (bpw) and of mlx_lm.fuse's (bpw_requantized).
void print_summary(const std::vector<Choice>& choices, double threshold, double bpw, double bpw_requantized);

// The plan fuse writes: req's as it is, or with keep, each merged layer's output chosen by choose()
// (print_summary's lines printed when there are merged quantized layers).
std::unique_ptr<convert::Plan> make_plan(convert::Request req, bool keep, double threshold);

}  // namespace lmtune::cli::fuse_keep
