// The training loss's head + cross-entropy alone, fused in chunks (ag::linear_cross_entropy) against
// unfused (the whole logits, then ag::cross_entropy): time of loss + backward and the allocator's
// peak above the inputs. Default: the Qwen2-0.5B shape of issue 15 (batch 4 x 2048 tokens, n_embd
// 896, vocabulary 151,936, tied head frozen as under LoRA) on CUDA in bf16. Host clocks around
// backend synchronizations.
// Usage: bench_xent [--device cpu|cuda] [--rows N] [--embd C] [--vocab V] [--mask F]
//                   [--train-head] [--chunks a,b,...] [--reps R]
// --mask F: that fraction of the targets ignored (-100), as a masked prompt or padding;
// --train-head: the head weight is trainable too (full fine-tuning with train_embeddings);
// --chunks: the fused runs' chunk rows (0: the default budget of 256 MiB of logits).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "autograd/linear_cross_entropy.h"
#include "core/allocator.h"

using namespace lmtune;

int main(int argc, char** argv) {
  Device dev = Device::cuda;
  int64_t N = 4 * 2048, C = 896, V = 151936, reps = 5;
  double mask = 0;
  bool train_head = false;
  std::vector<int64_t> chunks{0, 2048, 512};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_xent: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--device") {
      dev = next() == "cpu" ? Device::cpu : Device::cuda;
    } else if (a == "--rows") {
      N = std::stoll(next());
    } else if (a == "--embd") {
      C = std::stoll(next());
    } else if (a == "--vocab") {
      V = std::stoll(next());
    } else if (a == "--mask") {
      mask = std::stod(next());
    } else if (a == "--train-head") {
      train_head = true;
    } else if (a == "--reps") {
      reps = std::stoll(next());
    } else if (a == "--chunks") {
      chunks.clear();
      std::stringstream ss(next());
      for (std::string s; std::getline(ss, s, ',');) chunks.push_back(std::stoll(s));
    } else {
      std::fprintf(stderr, "bench_xent: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  const DType dt = dev == Device::cuda ? DType::bf16 : DType::f32;
  Tensor h0 = ops::randn({N, C}, 1, 1.f, dt, dev), w0 = ops::randn({V, C}, 2, 0.02f, dt, dev);
  std::vector<float> u = ops::uniform({N}, 3, 0.f, 1.f).to_f32_vector();
  std::vector<int32_t> t(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) t[size_t(i)] = u[size_t(i)] < mask ? -100 : int32_t((i * 7919) % V);
  Tensor targets = Tensor::from_i32(t, {N});
  Backend& be = backend(dev);
  CachingAllocator& al = allocator(dev);
  std::printf("bench_xent: %s %s, rows %lld, n_embd %lld, vocab %lld, %.0f%% of targets ignored, head %s\n",
              device_name(dev), dtype_name(dt), (long long)N, (long long)C, (long long)V, 100 * mask,
              train_head ? "trained" : "frozen");
  std::printf("%-26s %12s %12s %16s\n", "path", "median ms", "min ms", "peak MiB above");
  auto run = [&](const char* name, int64_t chunk) {
    Tensor h = ag::param(h0), w = train_head ? ag::param(w0) : w0;
    auto step = [&] {
      ag::zero_grad(h);
      if (train_head) ag::zero_grad(w);
      ag::HeadWeight hw;
      hw.weight = w;
      Tensor loss =
          chunk < 0 ? ag::cross_entropy(ag::linear(h, w), targets) : ag::linear_cross_entropy(h, hw, targets, chunk);
      ag::backward(loss);
    };
    step();  // warm-up (allocator cache, cuBLASLt plans)
    be.synchronize();
    const size_t base = al.current_bytes();
    al.reset_peak();
    std::vector<double> ms;
    for (int64_t r = 0; r < reps; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      step();
      be.synchronize();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    std::printf("%-26s %12.2f %12.2f %16.1f\n", name, ms[ms.size() / 2], ms.front(),
                double(al.peak_bytes() - base) / (1 << 20));
  };
  run("unfused", -1);
  for (int64_t c : chunks) {
    std::string name =
        "fused, chunk " +
        (c == 0 ? "default (" + std::to_string(ag::default_xent_chunk_rows(V, dt)) + ")" : std::to_string(c));
    run(name.c_str(), c);
  }
  return 0;
}
