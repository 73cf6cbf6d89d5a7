// Each step mirrors mlx_lm/sample_utils.py (0.32): the order, the tie rules (top-p keeps tokens whose
// ascending cumulative probability exceeds 1 - p; XTC cuts every token above the threshold but
// the least likely of them) and the penalties' context windows.
#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>

#include "core/error.h"

namespace lmtune {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

std::vector<int32_t> tail(const std::vector<int32_t>& h, int n) {
  if (n <= 0 || size_t(n) >= h.size()) return h;
  return std::vector<int32_t>(h.end() - n, h.end());
}
}  // namespace

Sampler::Sampler(SamplerOptions opts, uint64_t seed) : opts_(std::move(opts)), rng_(seed) {
  LMT_CHECK(opts_.temp >= 0.f, "[sampler] temp must be >= 0, got ", opts_.temp);
  LMT_CHECK(opts_.top_p >= 0.f && opts_.top_p <= 1.f, "[sampler] top_p must be in [0, 1], got ", opts_.top_p);
  LMT_CHECK(opts_.top_k >= 0, "[sampler] top_k must be >= 0, got ", opts_.top_k);
  LMT_CHECK(opts_.min_p >= 0.f && opts_.min_p <= 1.f, "[sampler] min_p must be in [0, 1], got ", opts_.min_p);
  LMT_CHECK(opts_.min_tokens_to_keep >= 1, "[sampler] min_tokens_to_keep must be >= 1, got ", opts_.min_tokens_to_keep);
  LMT_CHECK(opts_.xtc_probability >= 0.f && opts_.xtc_probability <= 1.f,
            "[sampler] xtc_probability must be in [0, 1], got ", opts_.xtc_probability);
  LMT_CHECK(opts_.xtc_threshold >= 0.f && opts_.xtc_threshold <= 0.5f,
            "[sampler] xtc_threshold must be in [0, 0.5], got ", opts_.xtc_threshold);
  LMT_CHECK(opts_.repetition_penalty >= 0.f, "[sampler] repetition_penalty must be >= 0, got ",
            opts_.repetition_penalty);
}

void Sampler::apply_penalties(std::vector<float>& logits, const std::vector<int32_t>& history) const {
  const int64_t V = int64_t(logits.size());
  auto valid = [V](int32_t t) { return t >= 0 && t < V; };
  for (const auto& [t, bias] : opts_.logit_bias)
    if (valid(t)) logits[size_t(t)] += bias;
  if (opts_.repetition_penalty != 0.f && !history.empty()) {
    // CTRL: each distinct recent token once; positive logits divided, negative multiplied.
    std::vector<int32_t> ctx = tail(history, opts_.repetition_context_size);
    for (int32_t t : std::set<int32_t>(ctx.begin(), ctx.end())) {
      if (!valid(t)) continue;
      float& l = logits[size_t(t)];
      l = l < 0 ? l * opts_.repetition_penalty : l / opts_.repetition_penalty;
    }
  }
  if (opts_.presence_penalty != 0.f && !history.empty()) {
    std::vector<int32_t> ctx = tail(history, opts_.presence_context_size);
    for (int32_t t : std::set<int32_t>(ctx.begin(), ctx.end()))
      if (valid(t)) logits[size_t(t)] -= opts_.presence_penalty;
  }
  if (opts_.frequency_penalty != 0.f && !history.empty()) {
    for (int32_t t : tail(history, opts_.frequency_context_size))
      if (valid(t)) logits[size_t(t)] -= opts_.frequency_penalty;
  }
}

void Sampler::log_softmax(std::vector<float>& x) {
  float m = *std::max_element(x.begin(), x.end());
  double s = 0;
  for (float v : x) s += std::exp(double(v) - m);
  float lse = m + float(std::log(s));
  for (float& v : x) v -= lse;
}

void Sampler::apply_top_p(std::vector<float>& lp, float top_p) {
  std::vector<int32_t> order(lp.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return lp[size_t(a)] < lp[size_t(b)]; });
  double cum = 0;
  std::vector<bool> drop(lp.size(), false);
  for (int32_t i : order) {
    cum += std::exp(double(lp[size_t(i)]));
    if (!(cum > 1.0 - top_p)) drop[size_t(i)] = true;
  }
  for (size_t i = 0; i < lp.size(); ++i)
    if (drop[i]) lp[i] = kNegInf;
}

void Sampler::apply_min_p(std::vector<float>& lp, float min_p, int min_tokens_to_keep) {
  std::vector<int32_t> order(lp.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return lp[size_t(a)] > lp[size_t(b)]; });
  float cut = lp[size_t(order[0])] + std::log(min_p);
  for (size_t r = size_t(std::max(min_tokens_to_keep, 0)); r < order.size(); ++r)
    if (lp[size_t(order[r])] < cut) lp[size_t(order[r])] = kNegInf;
}

void Sampler::apply_xtc(std::vector<float>& lp) {
  // mlx-lm draws the uniform number every step and cuts only when it is <= probability.
  double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
  if (u > opts_.xtc_probability) return;
  float thr = opts_.xtc_threshold;
  float min_above = std::numeric_limits<float>::infinity();
  for (float v : lp) {
    float p = std::exp(v);
    if (p > thr) min_above = std::min(min_above, p);
  }
  std::vector<bool> keep(lp.size(), false);
  for (int32_t t : opts_.xtc_special_tokens)
    if (t >= 0 && size_t(t) < lp.size()) keep[size_t(t)] = true;
  for (size_t i = 0; i < lp.size(); ++i)
    if (std::exp(lp[i]) > min_above && !keep[i]) lp[i] = kNegInf;
}

void Sampler::apply_top_k(std::vector<float>& lp, int top_k) {
  if (top_k <= 0 || size_t(top_k) >= lp.size()) return;
  std::vector<int32_t> order(lp.size());
  std::iota(order.begin(), order.end(), 0);
  std::nth_element(order.begin(), order.begin() + top_k, order.end(),
                   [&](int32_t a, int32_t b) { return lp[size_t(a)] > lp[size_t(b)]; });
  for (size_t r = size_t(top_k); r < order.size(); ++r) lp[size_t(order[r])] = kNegInf;
}

int32_t Sampler::argmax(const std::vector<float>& x) {
  return int32_t(std::max_element(x.begin(), x.end()) - x.begin());  // first of ties, like mx.argmax
}

int32_t Sampler::categorical(const std::vector<float>& lp, float temp) {
  // softmax(logprobs / temp) by inverse CDF in double.
  float m = kNegInf;
  for (float v : lp) m = std::max(m, v);
  LMT_CHECK(std::isfinite(m), "[sampler] every token was filtered out");
  std::vector<double> w(lp.size());
  double s = 0;
  for (size_t i = 0; i < lp.size(); ++i) s += (w[i] = std::exp((double(lp[i]) - m) / temp));
  double u = std::uniform_real_distribution<double>(0.0, s)(rng_);
  for (size_t i = 0; i < w.size(); ++i) {
    if (u < w[i]) return int32_t(i);
    u -= w[i];
  }
  for (size_t i = w.size(); i-- > 0;)  // rounding left u past the end: the last possible token
    if (w[i] > 0) return int32_t(i);
  return argmax(lp);
}

int32_t Sampler::sample(std::vector<float>& logits, const std::vector<int32_t>& history) {
  apply_penalties(logits, history);
  if (opts_.keep_logprobs) {  // before any constraint: the model's own view of the chosen token
    last_logprobs_ = logits;
    log_softmax(last_logprobs_);
  }
  if (!constraint_) return choose(logits);
  constraint_->mask(logits);
  const int32_t token = choose(logits);
  constraint_->accept(token);
  return token;
}

int32_t Sampler::choose(std::vector<float>& logits) {
  if (opts_.temp == 0.f) return argmax(logits);
  log_softmax(logits);
  if (opts_.top_p > 0.f && opts_.top_p < 1.f) apply_top_p(logits, opts_.top_p);
  if (opts_.min_p != 0.f) apply_min_p(logits, opts_.min_p, opts_.min_tokens_to_keep);
  if (opts_.xtc_probability > 0.f) apply_xtc(logits);
  if (opts_.top_k > 0) apply_top_k(logits, opts_.top_k);
  return categorical(logits, opts_.temp);
}

}  // namespace lmtune
