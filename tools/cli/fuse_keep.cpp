// See fuse_keep.h. Why a projection: re-quantizing W + dW where W already lies on the quantization
// grid moves an element only when its change passes half a step, so small deltas round back to W
// (mlx-lm issue #1172); the projection measures what of dW the written weight still carries.
#include "fuse_keep.h"

#include <algorithm>
#include <cstdio>

#include "core/error.h"
#include "ops/ops.h"

namespace lmtune::cli::fuse_keep {

double kept_fraction(const Tensor& source, const Tensor& target, const Tensor& written) {
  Tensor w = ops::cast(source, DType::f32), t = ops::cast(target, DType::f32), o = ops::cast(written, DType::f32);
  LMT_CHECK(w.numel() == t.numel() && w.numel() == o.numel(), "[fuse] kept_fraction: sizes differ");
  const float *pw = w.data<float>(), *pt = t.data<float>(), *po = o.data<float>();
  double dot = 0, norm2 = 0;
  for (int64_t i = 0; i < w.numel(); ++i) {
    double d = double(pt[i]) - double(pw[i]);
    dot += (double(po[i]) - double(pw[i])) * d;
    norm2 += d * d;
  }
  return norm2 > 0 ? dot / norm2 : 1.0;
}

namespace {

std::string bits_label(const quant::QuantParams& p) {
  std::string s = str_cat(p.bits, "-bit");
  if (p.mode != quant::Mode::affine) s += str_cat(" ", quant::mode_name(p.mode));
  return s;
}

// The next quantized step up from p: 8-bit affine for affine, mxfp8 for mxfp4 / nvfp4; none at 8 bits.
std::optional<quant::QuantParams> eight_bits(const quant::QuantParams& p) {
  if (p.bits >= 8) return std::nullopt;
  if (p.mode == quant::Mode::affine) {
    quant::QuantParams q = p;
    q.bits = 8;
    return q;
  }
  return quant::default_params(quant::Mode::mxfp8);
}

double kept_quantized(const Tensor& source, const Tensor& target, const Tensor& merged, const quant::QuantParams& p) {
  quant::QuantizedWeight q = quant::quantize(merged, p);
  return kept_fraction(source, target, quant::dequantize(q, DType::f32));
}

}  // namespace

std::vector<Choice> choose(const convert::Plan& plan, double threshold) {
  std::vector<Choice> out;
  for (const convert::Leaf& l : plan.leaves()) {
    if (!l.merge || !l.out_quant) continue;
    Tensor source = plan.source_dense(l);
    Tensor target = plan.merged(l, true);   // f32: the change the adapter makes
    Tensor merged = plan.merged(l, false);  // in the merged dtype, as mlx-lm quantizes it
    Choice c;
    c.path = l.path;
    c.kept_requantized = kept_quantized(source, target, merged, *l.out_quant);
    c.kept = c.kept_requantized;
    c.output.quant = l.out_quant;
    c.label = bits_label(*l.out_quant);
    if (c.kept < threshold) {
      if (auto p8 = eight_bits(*l.out_quant); p8 && (l.shape[1] % p8->group_size) == 0) {
        c.kept = kept_quantized(source, target, merged, *p8);
        c.output.quant = p8;
        c.label = bits_label(*p8);
      }
    }
    if (c.kept < threshold && l.merged_dtype != DType::f32) {
      c.kept = kept_fraction(source, target, merged);
      c.output = {};
      c.label = str_cat("dense ", dtype_name(l.merged_dtype));
    }
    if (c.kept < threshold) {
      c.kept = kept_fraction(source, target, target);
      c.output = {};
      c.output.f32_merge = true;
      c.label = "dense f32";
    }
    c.changed = !c.output.quant || !(*c.output.quant == *l.out_quant);
    out.push_back(std::move(c));
  }
  return out;
}

void print_summary(const std::vector<Choice>& choices, double threshold, double bpw, double bpw_requantized) {
  if (choices.empty()) return;
  std::vector<std::pair<std::string, int>> counts;
  for (const Choice& c : choices) {
    auto it = std::find_if(counts.begin(), counts.end(), [&](const auto& p) { return p.first == c.label; });
    if (it == counts.end())
      counts.emplace_back(c.label, 1);
    else
      ++it->second;
  }
  std::string list;
  for (const auto& [label, n] : counts) list += str_cat(list.empty() ? "" : ", ", n, " ", label);
  int changed = 0;
  for (const Choice& c : choices) changed += c.changed;
  auto worst = std::min_element(choices.begin(), choices.end(), [](const Choice& a, const Choice& b) {
    return a.kept_requantized < b.kept_requantized;
  });
  double mean_re = 0, mean = 0;
  for (const Choice& c : choices) mean_re += c.kept_requantized, mean += c.kept;
  mean_re /= double(choices.size()), mean /= double(choices.size());
  std::printf(
      "[INFO] Keeping the fine-tune: %zu merged layers written as %s (each keeps >= %.2f of its change; %d differ "
      "from the base's quantization)\n",
      choices.size(), list.c_str(), threshold, changed);
  std::printf(
      "[INFO] Change kept per layer: mean %.3f (re-quantized with the base's parameters, as mlx_lm.fuse: mean %.3f, "
      "lowest %.3f at %s)\n",
      mean, mean_re, worst->kept_requantized, worst->path.c_str());
  std::printf("[INFO] Fused model: %.3f bits per weight (%.3f with every merged layer re-quantized as mlx_lm.fuse)\n",
              bpw, bpw_requantized);
  std::fflush(stdout);
}

std::unique_ptr<convert::Plan> make_plan(convert::Request req, bool keep, double threshold) {
  auto plan = std::make_unique<convert::Plan>(req);
  if (!keep) return plan;
  std::vector<Choice> choices = choose(*plan, threshold);
  if (choices.empty()) return plan;
  const double bpw_requantized = plan->bits_per_weight();
  for (const Choice& c : choices)
    if (c.changed) req.merge_outputs[c.path] = c.output;
  plan = std::make_unique<convert::Plan>(req);
  print_summary(choices, threshold, plan->bits_per_weight(), bpw_requantized);
  return plan;
}

}  // namespace lmtune::cli::fuse_keep
