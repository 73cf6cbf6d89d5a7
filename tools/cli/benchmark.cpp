// `lmtune benchmark`: mlx_lm.benchmark. Random prompt tokens (batch B), greedy decode with EOS
// ignored; a warmup run, then per trial and on average the prompt and generation tokens/s and
// the peak memory.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <thread>

#include "cli_commands.h"
#include "core/allocator.h"
#include "ops/ops.h"
#include "runtime/kv_cache.h"
#include "runtime_setup.h"

namespace lmtune::cli {

namespace {

struct BenchmarkOptions {
  LoadOptions load;
  int64_t prompt_tokens = 512, generation_tokens = 1024, batch_size = 1, num_trials = 5, prefill_step_size = 2048;
  double delay = 0;
  KVQuantOptions kv;
};

void declare(Options& t, BenchmarkOptions& o) {
  t.add("--model", &o.load.model, "MODEL", kModelHelp);
  t.add("--prompt-tokens, -p", &o.prompt_tokens, "N", "prompt length");
  t.add("--generation-tokens, -g", &o.generation_tokens, "N", "tokens to generate");
  t.add("--batch-size, -b", &o.batch_size, "N", "sequences at once");
  t.add("--num-trials, -n", &o.num_trials, "N", "timed trials after a warmup");
  t.add("--prefill-step-size", &o.prefill_step_size, "N", "prompt tokens per prefill step");
  t.add("--delay", &o.delay, "S", "seconds to wait between trials");
  t.group("lmtune's additions");
  t.add("--adapter-path", &o.load.adapter_path, "PATH",
        "run the model with these adapters (lmtune lora / mlx_lm.lora, or a Hugging Face PEFT folder)");
  add_kv_quant_options(t, o.kv);
  add_device_options(t, o.load);
}

struct Trial {
  double prompt_tps, generation_tps, peak_memory, total_time;
};

using Clock = std::chrono::steady_clock;

Trial run_trial(Model& model, int64_t P, int64_t G, int64_t B, int64_t step, const KVQuantization& kv, uint64_t seed) {
  const ModelConfig& c = model.config();
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, int32_t(c.n_vocab - 1));
  std::vector<int32_t> prompt(size_t(B * P));
  for (int32_t& t : prompt) t = dist(rng);
  allocator(model.device()).reset_peak();
  DenseKVCache cache(c, model.device(), model.dtype(), B);
  cache.set_quantization(kv);
  auto start = Clock::now();
  Tensor logits;
  for (int64_t t0 = 0; t0 < P; t0 += step) {
    int64_t n = std::min(step, P - t0);
    Tensor ids = Tensor::empty({B, n}, DType::i32);
    for (int64_t b = 0; b < B; ++b) std::copy_n(prompt.begin() + b * P + t0, n, ids.data<int32_t>() + b * n);
    logits = model.forward(ids, cache, true);
  }
  auto argmax_rows = [&](const Tensor& lg) {
    std::vector<float> h = ops::to(lg, Device::cpu, DType::f32).to_f32_vector();
    std::vector<int32_t> next(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b)
      next[size_t(b)] = int32_t(std::max_element(h.begin() + b * c.n_vocab, h.begin() + (b + 1) * c.n_vocab) -
                                (h.begin() + b * c.n_vocab));
    return next;
  };
  std::vector<int32_t> next = argmax_rows(logits);
  double prompt_time = std::chrono::duration<double>(Clock::now() - start).count();
  auto gen_start = Clock::now();
  for (int64_t g = 1; g < G; ++g) next = argmax_rows(model.forward(Tensor::from_i32(next, {B, 1}), cache, true));
  auto end = Clock::now();
  double gen_time = std::chrono::duration<double>(end - gen_start).count();
  return {double(B * P) / std::max(prompt_time, 1e-9), double(B * G) / std::max(gen_time, 1e-9),
          double(allocator(model.device()).peak_bytes()) / 1e9, std::chrono::duration<double>(end - start).count()};
}

int benchmark(const BenchmarkOptions& o) {
  const int64_t P = o.prompt_tokens, G = o.generation_tokens, B = o.batch_size, N = o.num_trials,
                step = o.prefill_step_size;
  const double delay = o.delay;
  const LoadOptions& lo = o.load;
  LoadedModel lm = load_for_generation(lo);
  const KVQuantization kv = kv_quantization(o.kv, lm.model->config().head_dim);
  std::printf("Running warmup..\n");
  std::fflush(stdout);
  run_trial(*lm.model, P, G, B, step, kv, 0);
  std::printf("Timing with prompt_tokens=%lld, generation_tokens=%lld, batch_size=%lld.\n", (long long)P, (long long)G,
              (long long)B);
  std::fflush(stdout);  // marks the warm-up's end for a reader of a pipe (bench/bench_memory_flat.sh)
  std::vector<Trial> trials;
  for (int64_t i = 0; i < N; ++i) {
    if (delay > 0) std::this_thread::sleep_for(std::chrono::duration<double>(delay));
    Trial t = run_trial(*lm.model, P, G, B, step, kv, uint64_t(i + 1));
    trials.push_back(t);
    std::printf("Trial %lld:  prompt_tps=%.3f, generation_tps=%.3f, peak_memory=%.3f, total_time=%.3f\n",
                (long long)(i + 1), t.prompt_tps, t.generation_tps, t.peak_memory, t.total_time);
    std::fflush(stdout);
  }
  Trial avg{0, 0, 0, 0};
  for (const Trial& t : trials) {
    avg.prompt_tps += t.prompt_tps / double(N);
    avg.generation_tps += t.generation_tps / double(N);
    avg.peak_memory += t.peak_memory / double(N);
  }
  std::printf("Averages: prompt_tps=%.3f, generation_tps=%.3f, peak_memory=%.3f\n", avg.prompt_tps, avg.generation_tps,
              avg.peak_memory);
  return 0;
}

}  // namespace

int run_benchmark(int argc, char** argv) {
  BenchmarkOptions o;
  Options t("benchmark", "lmtune benchmark --model MODEL [options]",
            "Measure prompt and generation speed on random tokens (mlx_lm.benchmark): greedy decoding with EOS "
            "ignored, a warmup run, then the timed trials and their averages.");
  declare(t, o);
  return run_with_options(t, argc, argv, [&] {
    if (o.load.model.empty()) throw UsageError("--model is required (a local model folder or a Hub repo id)");
    if (o.prompt_tokens < 1 || o.generation_tokens < 1 || o.batch_size < 1 || o.num_trials < 1 ||
        o.prefill_step_size < 1)
      throw UsageError("-p, -g, -b, -n and --prefill-step-size must be positive");
    (void)kv_quantization(o.kv);
    return benchmark(o);
  });
}

}  // namespace lmtune::cli
