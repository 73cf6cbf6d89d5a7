#include "runtime/generate.h"

#include "io/hub.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <nlohmann/json.hpp>

#include "core/allocator.h"
#include "core/error.h"
#include "ops/ops.h"

namespace lmtune {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::vector<float> last_logits(const Tensor& logits) {
  // (1, 1, V) on the model's device -> host f32 (V)
  return ops::to(logits, Device::cpu, DType::f32).to_f32_vector();
}

}  // namespace

Generator::Generator(Model& model, DenseKVCache& cache, Sampler& sampler)
    : model_(model), cache_(cache), sampler_(sampler) {}

bool Generator::trim_to(int64_t n) {
  if (n >= int64_t(cached_.size())) return true;
  if (!cache_.can_trim_to(n)) return false;
  cache_.trim_to(n);
  cached_.resize(size_t(n));
  return true;
}

void Generator::reset() {
  cache_.reset();
  cached_.clear();
  history_.clear();
}

bool longrope_reruns(const ModelConfig& cfg, int64_t held, int64_t n) {
  const int64_t limit = cfg.rope.original_max_position_embeddings;
  return cfg.rope.type == "longrope" && held > 0 && held <= limit && held + n > limit;
}

GenerationStats Generator::generate(const std::vector<int32_t>& prompt, const GenerationConfig& cfg,
                                    const std::function<bool(int32_t)>& on_token) {
  LMT_CHECK(!prompt.empty(), "[generate] the prompt is empty (nothing to predict from)");
  LMT_CHECK(cfg.prefill_step_size >= 1, "[generate] prefill_step_size must be >= 1, got ", cfg.prefill_step_size);
  const int64_t V = model_.config().n_vocab;
  for (int32_t t : prompt)
    LMT_CHECK(t >= 0 && t < V, "[generate] prompt token ", t, " is outside the model's vocabulary of ", V);
  GenerationStats st;
  st.prompt_tokens = int64_t(prompt.size());
  auto feed = [&](const int32_t* ids, int64_t n) {
    std::vector<int32_t> in(ids, ids + n);
    if (longrope_reruns(model_.config(), int64_t(cached_.size()), n) && cache_.offset() == int64_t(cached_.size())) {
      in.insert(in.begin(), cached_.begin(), cached_.end());
      cache_.reset();
      cached_.clear();
    }
    Tensor t = Tensor::from_i32(in, {1, int64_t(in.size())});
    Tensor lg = model_.forward(t, cache_, true);
    cached_.insert(cached_.end(), in.begin(), in.end());
    return lg;
  };

  Clock::time_point tic = Clock::now();
  const int32_t* p = prompt.data();
  int64_t left = int64_t(prompt.size());
  // mlx-lm prefills all but the last token in chunks, then feeds that one alone. With --kv-bits the
  // cache may be quantized between the two (after a forward leaves it holding quantized_kv_start
  // tokens), which changes what the last token attends over: split as mlx-lm does. Without it the
  // split changes nothing but speed, so the prompt goes in whole chunks.
  const bool split_last = cache_.quantization().enabled();
  const int64_t total = int64_t(prompt.size());
  // Stops after a prefill forward when on_prefill says so: the fed tokens stay cached and counted.
  auto stopped_in_prefill = [&]() {
    if (!cfg.on_prefill || cfg.on_prefill(total - left, total)) return false;
    history_.insert(history_.end(), prompt.begin(), prompt.end() - left);
    st.finish_reason = "stop";
    st.prompt_tps = double(total - left) / std::max(seconds_since(tic), 1e-9);
    st.peak_memory_gb = double(allocator(model_.device()).peak_bytes()) / 1e9;
    return true;
  };
  while (split_last ? left > 1 : left > cfg.prefill_step_size) {
    const int64_t n = split_last ? std::min(cfg.prefill_step_size, left - 1) : cfg.prefill_step_size;
    (void)feed(p, n);
    p += n;
    left -= n;
    if (stopped_in_prefill()) return st;
  }
  Tensor last = feed(p, left);
  left = 0;
  if (stopped_in_prefill()) return st;
  std::vector<float> logits = last_logits(last);
  history_.insert(history_.end(), prompt.begin(), prompt.end());
  int32_t token = sampler_.sample(logits, history_);
  double prompt_time = seconds_since(tic);
  st.prompt_tps = double(st.prompt_tokens) / std::max(prompt_time, 1e-9);
  tic = Clock::now();

  auto is_eos = [&](int32_t t) { return std::find(cfg.eos_ids.begin(), cfg.eos_ids.end(), t) != cfg.eos_ids.end(); };
  int64_t n = 0;
  for (;; ++n) {
    if (is_eos(token)) {
      st.finish_reason = "stop";
      break;
    }
    st.tokens.push_back(token);
    history_.push_back(token);
    if (on_token && !on_token(token)) {
      st.finish_reason = "stop";
      break;
    }
    if (cfg.max_tokens >= 0 && n + 1 >= cfg.max_tokens) {
      st.finish_reason = "length";
      break;
    }
    // The first step of a call runs eagerly (it also fills any lazily built state); the rest
    // replay one recorded step where the device has graphs.
    if (n >= 1 && !graph_ && !graph_off_ && DecodeGraph::usable(model_, cache_))
      graph_ = std::make_unique<DecodeGraph>(model_, cache_);
    bool fed = false;
    if (n >= 1 && graph_) {
      try {
        logits = graph_->step(token);
        cached_.push_back(token);
        fed = true;
      } catch (const Error& e) {  // recording failed (the cache is as it was): decode eagerly
        std::fprintf(stderr, "[generate] decoding without a CUDA graph: %s\n", e.what());
        graph_.reset();
        graph_off_ = true;
      }
    }
    if (!fed) logits = last_logits(feed(&token, 1));
    token = sampler_.sample(logits, history_);
  }
  st.generation_tokens = cfg.max_tokens == 0 ? 0 : n + 1;
  st.generation_tps = double(st.generation_tokens) / std::max(seconds_since(tic), 1e-9);
  st.peak_memory_gb = double(allocator(model_.device()).peak_bytes()) / 1e9;
  return st;
}

namespace {

void add_ids(const nlohmann::json& v, std::vector<int32_t>& out) {
  if (v.is_number_integer()) {
    out.push_back(v.get<int32_t>());
  } else if (v.is_array()) {
    for (const auto& x : v)
      if (x.is_number_integer()) out.push_back(x.get<int32_t>());
  }
}

void add_file_ids(const std::string& path, std::vector<int32_t>& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return;
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  LMT_CHECK(!j.is_discarded(), "[generate] cannot parse ", path, " as JSON");
  if (j.is_object() && j.contains("eos_token_id")) add_ids(j["eos_token_id"], out);
}

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

std::vector<int32_t> collect_eos_ids(const std::string& model_dir, const Tokenizer& tokenizer,
                                     const std::vector<std::string>& extra) {
  std::vector<int32_t> ids;
  add_file_ids(model_dir + "/config.json", ids);
  add_file_ids(model_dir + "/generation_config.json", ids);
  if (tokenizer.eos_id() >= 0) ids.push_back(tokenizer.eos_id());
  for (const std::string& e : extra) {
    int32_t id = tokenizer.token_to_id(e);
    if (id < 0 && all_digits(e) && e.size() < 10) id = std::stoi(e);
    LMT_CHECK(id >= 0, "'", e, "' is not a token for this model (--extra-eos-token takes a token or an id)");
    ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

std::string resolve_model_dir(const std::string& model) {
  namespace fs = std::filesystem;
  std::string dir = resolve_model(model);  // a local folder as is; org/name[@rev] through the Hub cache
  LMT_CHECK(fs::is_directory(dir), "--model ", model, ": no such folder");
  LMT_CHECK(fs::exists(fs::path(dir) / "config.json"), "model folder ", dir, " has no config.json");
  return dir;
}

std::string unescape_prompt(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && (s[i + 1] == 'n' || s[i + 1] == 't')) {
      out += s[i + 1] == 'n' ? '\n' : '\t';
      ++i;
    } else {
      out += s[i];
    }
  }
  return out;
}

}  // namespace lmtune
