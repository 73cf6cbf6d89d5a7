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

const char kUsage[] =
    "usage: lmtune benchmark --model DIR [options]\n"
    "\n"
    "Measure prompt and generation speed on random tokens (mlx_lm.benchmark).\n"
    "\n"
    "  --model DIR                   a local Hugging Face model folder\n"
    "  --prompt-tokens, -p N         prompt length (512)\n"
    "  --generation-tokens, -g N     tokens to generate (1024)\n"
    "  --batch-size, -b N            sequences at once (1)\n"
    "  --num-trials, -n N            timed trials after a warmup (5)\n"
    "  --prefill-step-size N         prompt tokens per prefill step (2048)\n"
    "  --delay S                     seconds to wait between trials (0)\n"
    "  --device cpu|cuda  --dtype float32|bfloat16|float16\n"
    "  -h, --help                    show this help\n";

struct Trial {
  double prompt_tps, generation_tps, peak_memory, total_time;
};

using Clock = std::chrono::steady_clock;

Trial run_trial(Model& model, int64_t P, int64_t G, int64_t B, int64_t step, uint64_t seed) {
  const ModelConfig& c = model.config();
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, int32_t(c.n_vocab - 1));
  std::vector<int32_t> prompt(size_t(B * P));
  for (int32_t& t : prompt) t = dist(rng);
  allocator(model.device()).reset_peak();
  DenseKVCache cache(c, model.device(), model.dtype(), B);
  auto start = Clock::now();
  Tensor logits;
  for (int64_t t0 = 0; t0 < P; t0 += step) {
    int64_t n = std::min(step, P - t0);
    Tensor ids = Tensor::empty({B, n}, DType::i32);
    for (int64_t b = 0; b < B; ++b)
      std::copy_n(prompt.begin() + b * P + t0, n, ids.data<int32_t>() + b * n);
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

}  // namespace

int run_benchmark(int argc, char** argv) {
  LoadOptions lo;
  int64_t P = 512, G = 1024, B = 1, N = 5, step = 2048;
  double delay = 0;
  try {
    Args a(argc, argv);
    while (a.next()) {
      if (a.is("-h", "--help")) {
        std::fputs(kUsage, stdout);
        return 0;
      } else if (read_load_flag(a, lo)) {
        // read by the shared flag readers (runtime_setup.h)
      } else if (a.is("--prompt-tokens", "-p")) P = a.int_value();
      else if (a.is("--generation-tokens", "-g")) G = a.int_value();
      else if (a.is("--batch-size", "-b")) B = a.int_value();
      else if (a.is("--num-trials", "-n")) N = a.int_value();
      else if (a.is("--prefill-step-size")) step = a.int_value();
      else if (a.is("--delay")) delay = a.float_value();
      else a.unknown();
    }
    if (lo.model.empty()) throw UsageError("--model is required (a local model folder)");
    if (P < 1 || G < 1 || B < 1 || N < 1 || step < 1)
      throw UsageError("-p, -g, -b, -n and --prefill-step-size must be positive");
  } catch (const UsageError& e) {
    std::fprintf(stderr, "lmtune benchmark: error: %s (see lmtune benchmark --help)\n", e.what());
    return 2;
  }
  LoadedModel lm = load_for_generation(lo);
  std::printf("Running warmup..\n");
  std::fflush(stdout);
  run_trial(*lm.model, P, G, B, step, 0);
  std::printf("Timing with prompt_tokens=%lld, generation_tokens=%lld, batch_size=%lld.\n", (long long)P,
              (long long)G, (long long)B);
  std::vector<Trial> trials;
  for (int64_t i = 0; i < N; ++i) {
    if (delay > 0) std::this_thread::sleep_for(std::chrono::duration<double>(delay));
    Trial t = run_trial(*lm.model, P, G, B, step, uint64_t(i + 1));
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
  std::printf("Averages: prompt_tps=%.3f, generation_tps=%.3f, peak_memory=%.3f\n", avg.prompt_tps,
              avg.generation_tps, avg.peak_memory);
  return 0;
}

}  // namespace lmtune::cli
