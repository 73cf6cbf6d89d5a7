// The round: the draft cache holds seq[:k] and is fed seq[k:] (one or two tokens) and then its own
// proposals but the last; the model is fed seq's last token plus every proposal in one forward.
// Proposals and checks go through the one sampler with the history the plain loop would give it
// (penalties see the same tokens), so temp 0 picks exactly what Generator::generate picks.
#include "runtime/speculative.h"

#include <algorithm>
#include <chrono>

#include "core/allocator.h"
#include "core/error.h"
#include "ops/ops.h"

namespace lmtune {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace

SpeculativeGenerator::SpeculativeGenerator(Model& model, DenseKVCache& cache, Model& draft, DenseKVCache& draft_cache,
                                           Sampler& sampler, int64_t num_draft_tokens)
    : model_(model),
      cache_(cache),
      draft_(draft),
      draft_cache_(draft_cache),
      sampler_(sampler),
      num_draft_(num_draft_tokens) {
  LMT_CHECK(num_draft_tokens >= 1, "[speculative] num_draft_tokens must be >= 1, got ", num_draft_tokens);
  LMT_CHECK(!cache.rotating() && !draft_cache.rotating(),
            "[speculative] speculative decoding needs trimmable caches; a rotating cache (max_kv_size) is not");
  LMT_CHECK(&cache != &draft_cache, "[speculative] the model and the draft need caches of their own");
}

std::vector<float> SpeculativeGenerator::feed(Model& m, DenseKVCache& c, std::vector<int32_t>& fed, const int32_t* ids,
                                              int64_t n, int64_t n_out) {
  std::vector<int32_t> in(ids, ids + n);
  if (longrope_reruns(m.config(), int64_t(fed.size()), n) && c.offset() == int64_t(fed.size())) {
    in.insert(in.begin(), fed.begin(), fed.end());  // the whole sequence again (runtime/generate.h)
    c.reset();
    fed.clear();
  }
  Tensor t = Tensor::from_i32(in, {1, int64_t(in.size())});
  Tensor lg = m.forward(t, c, n_out <= 1);  // (1, in.size() or 1, V)
  fed.insert(fed.end(), in.begin(), in.end());
  if (n_out == 0) return {};
  std::vector<float> all = ops::to(lg, Device::cpu, DType::f32).to_f32_vector();
  const size_t V = size_t(m.config().n_vocab);
  return std::vector<float>(all.end() - ptrdiff_t(size_t(n_out) * V), all.end());
}

SpeculativeStats SpeculativeGenerator::generate(const std::vector<int32_t>& prompt, const GenerationConfig& cfg,
                                                const std::function<bool(int32_t, bool)>& on_token) {
  LMT_CHECK(!prompt.empty(), "[speculative] the prompt is empty (nothing to predict from)");
  LMT_CHECK(cfg.prefill_step_size >= 1, "[speculative] prefill_step_size must be >= 1, got ", cfg.prefill_step_size);
  LMT_CHECK(cache_.offset() == 0 && draft_cache_.offset() == 0, "[speculative] the caches must start empty (they hold ",
            cache_.offset(), " and ", draft_cache_.offset(), " tokens)");
  const int64_t V = model_.config().n_vocab, Vd = draft_.config().n_vocab;
  const size_t V_shared = size_t(std::min(V, Vd));
  for (int32_t t : prompt)
    LMT_CHECK(t >= 0 && t < std::min(V, Vd), "[speculative] prompt token ", t,
              " is outside the vocabulary shared by the model (", V, ") and the draft (", Vd, ")");
  fed_.clear();
  draft_fed_.clear();
  SpeculativeStats out;
  GenerationStats& st = out.gen;
  st.prompt_tokens = int64_t(prompt.size());

  Clock::time_point tic = Clock::now();
  // As mlx-lm's _prefill: everything but the last token, in chunks, into both caches.
  auto prefill = [&](Model& m, DenseKVCache& c, std::vector<int32_t>& fed) {
    for (int64_t i = 0; i + 1 < int64_t(prompt.size()); i += cfg.prefill_step_size) {
      const int64_t n = std::min(cfg.prefill_step_size, int64_t(prompt.size()) - 1 - i);
      (void)feed(m, c, fed, prompt.data() + i, n, 0);
    }
  };
  prefill(draft_, draft_cache_, draft_fed_);
  prefill(model_, cache_, fed_);

  std::vector<int32_t> seq = prompt;  // every token so far; the caches hold at most seq[:-1]
  auto is_eos = [&](int32_t t) { return std::find(cfg.eos_ids.begin(), cfg.eos_ids.end(), t) != cfg.eos_ids.end(); };
  bool first = true, done = false;
  // Emits one chosen token; false once generation is over (EOS, on_token, max_tokens).
  auto emit = [&](int32_t t, bool from_draft) {
    if (first) {
      st.prompt_tps = double(st.prompt_tokens) / std::max(seconds_since(tic), 1e-9);
      tic = Clock::now();
      first = false;
    }
    ++st.generation_tokens;
    seq.push_back(t);
    if (is_eos(t)) {
      st.finish_reason = "stop";
      return false;
    }
    st.tokens.push_back(t);
    if (on_token && !on_token(t, from_draft)) {
      st.finish_reason = "stop";
      return false;
    }
    if (cfg.max_tokens >= 0 && st.generation_tokens >= cfg.max_tokens) {
      st.finish_reason = "length";
      return false;
    }
    return true;
  };

  while (!done) {
    int64_t n_draft = num_draft_;
    if (cfg.max_tokens >= 0) n_draft = std::min(n_draft, cfg.max_tokens - st.generation_tokens);
    // Draft: feed what the draft cache lacks of seq, then each proposal but the last.
    std::vector<int32_t> drafts;
    std::vector<int32_t> history = seq;
    size_t k = draft_fed_.size();
    std::vector<int32_t> step(seq.begin() + ptrdiff_t(k), seq.end());
    for (int64_t i = 0; i < n_draft; ++i) {
      std::vector<float> lg = feed(draft_, draft_cache_, draft_fed_, step.data(), int64_t(step.size()), 1);
      lg.resize(V_shared);  // ids past the shared vocabulary are padding rows the model cannot take
      int32_t d = sampler_.sample(lg, history);
      drafts.push_back(d);
      history.push_back(d);
      step.assign(1, d);
    }
    // Verify: seq's last token and the proposals in one forward; row i scores the token after them.
    std::vector<int32_t> ids{seq.back()};
    ids.insert(ids.end(), drafts.begin(), drafts.end());
    out.drafted += n_draft;
    std::vector<float> rows = feed(model_, cache_, fed_, ids.data(), int64_t(ids.size()), int64_t(ids.size()));
    int64_t n = 0;
    for (; n <= n_draft && !done; ++n) {
      std::vector<float> row(rows.begin() + ptrdiff_t(size_t(n) * size_t(V)),
                             rows.begin() + ptrdiff_t(size_t(n + 1) * size_t(V)));
      const int32_t t = sampler_.sample(row, seq);
      const bool agree = n < n_draft && t == drafts[size_t(n)];
      if (agree) ++out.accepted;
      done = !emit(t, agree);
      if (!agree) break;
    }
    // Keep what agrees with seq: the model holds seq[:-1]; the draft its longest prefix of it.
    const size_t keep = std::min(fed_.size(), seq.size() - 1);
    cache_.trim_to(int64_t(keep));
    fed_.resize(keep);
    size_t common = 0;
    while (common < draft_fed_.size() && common < seq.size() - 1 && draft_fed_[common] == seq[common]) ++common;
    draft_cache_.trim_to(int64_t(common));
    draft_fed_.resize(common);
  }
  st.generation_tps = double(st.generation_tokens) / std::max(seconds_since(tic), 1e-9);
  st.peak_memory_gb = double(allocator(model_.device()).peak_bytes()) / 1e9;
  return out;
}

}  // namespace lmtune
