// Generation speed of lmtune's runtime (Generator: prefill, then greedy decode, batch 1) on a
// Mistral-7B-shaped bf16 model with random weights on the GPU (n_embd 4096, n_ff 14336, 32 layers,
// 32 heads, 8 kv heads, vocab 32000), with the device-to-device copy bandwidth measured in the same
// run and decode judged against the memory-bandwidth bound (weight bytes read per token / copy
// bandwidth). bench/bench_generate_gpu.sh runs it beside transformers' generate
// (bench_generate_peer.py). No checkpoint: one modest random block is drawn on the host, uploaded
// once, and copied on the device into every weight (values finite and varied, never zeros).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/allocator.h"
#include "core/error.h"
#include "core/runtime_config.h"
#include "models/model.h"
#include "ops/ops.h"
#include "runtime/generate.h"

namespace {

using namespace lmtune;
using Clock = std::chrono::steady_clock;

struct Config {
  int64_t embd = 4096, ff = 14336, layer = 32, head = 32, kv_head = 8, head_dim = 128, vocab = 32000;
  int64_t prompt = 512, gen = 128, trials = 3;
  int64_t copy_elems = int64_t(1) << 29;  // 1 GiB of bf16
  Device device = Device::cuda;
  DType dtype = DType::bf16;
};
Config g;

double secs(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Fills rows (n, C) with device copies of rows of pool (R, C), from a different pool offset each time.
void fill_from_pool(Tensor& rows, const Tensor& pool) {
  static int64_t start = 0;
  const int64_t R = pool.dim(0), n = rows.dim(0);
  for (int64_t r = 0; r < n;) {
    start = (start + 389) % R;
    int64_t k = std::min(R - start, n - r);
    ops::copy_rows_into(rows, r, pool.slice_rows(start, start + k));
    r += k;
  }
}

Tensor random_pool() {  // one host draw, uploaded once: (R, n_embd)
  return ops::randn({std::min<int64_t>(1024, g.vocab), g.embd}, 7, 0.02f, g.dtype, g.device);
}

// Every 2-D weight is filled by device copies of rows of one random pool (R, C) uploaded once.
std::unique_ptr<Model> make_model() {
  char json[640];
  std::snprintf(json, sizeof json,
                "{\"model_type\": \"mistral\", \"vocab_size\": %lld, \"hidden_size\": %lld, "
                "\"intermediate_size\": %lld, \"num_hidden_layers\": %lld, \"num_attention_heads\": %lld, "
                "\"num_key_value_heads\": %lld, \"head_dim\": %lld, \"rms_norm_eps\": 1e-5, "
                "\"rope_theta\": 1000000.0, \"max_position_embeddings\": 32768, \"sliding_window\": null, "
                "\"tie_word_embeddings\": false, \"hidden_act\": \"silu\", \"torch_dtype\": \"bfloat16\"}",
                (long long)g.vocab, (long long)g.embd, (long long)g.ff, (long long)g.layer, (long long)g.head,
                (long long)g.kv_head, (long long)g.head_dim);
  auto model = create_model(ModelConfig::from_json_text(json, "bench_generate"));
  const int64_t C = g.embd;
  Tensor pool = random_pool();  // std 0.02, transformers' initializer_range
  std::map<std::string, Tensor> w;
  for (const TensorSpec& s : model->tensor_specs()) {
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    if (s.shape.size() == 1) {
      w[s.name] = ops::full(s.shape, 1.f, g.dtype, g.device);  // rms_norm weights start at one
      continue;
    }
    LMT_CHECK(n % C == 0, "[bench_generate] weight ", s.name, " of ", n, " elements is not a multiple of ", C);
    Tensor t = ops::empty(s.shape, g.dtype, g.device);
    Tensor rows = t.reshape({n / C, C});
    fill_from_pool(rows, pool);
    w[s.name] = t;
  }
  model->set_weights(std::move(w));
  backend(g.device).synchronize();
  return model;
}

// Device-to-device copy of 1 GiB, bytes read + written over time: the bandwidth ceiling.
double copy_bandwidth_gbps() {
  Tensor src = ops::empty({g.copy_elems / g.embd, g.embd}, g.dtype, g.device);  // random, not zeros
  fill_from_pool(src, random_pool());
  Tensor dst = ops::empty(src.shape(), g.dtype, g.device);
  for (int i = 0; i < 3; ++i) ops::copy_into(dst, src);
  backend(g.device).synchronize();
  std::vector<double> t;
  for (int r = 0; r < 5; ++r) {
    auto t0 = Clock::now();
    for (int i = 0; i < 10; ++i) ops::copy_into(dst, src);
    backend(g.device).synchronize();
    t.push_back(secs(t0) / 10);
  }
  std::sort(t.begin(), t.end());
  return 2.0 * double(src.nbytes()) / t[t.size() / 2] / 1e9;
}

// Decoding's weight products alone, as the model runs them (x (M, K) W (N, K)^T; M = 1 for one
// sequence, M > 1 for a batched server step), through gemv.cu (M <= 4; cuBLASLt above) and through cuBLASLt
// (RuntimeConfig::cuda_gemv off): time per call, W's bytes over it, and their sum over one step's
// products. Several copies of W are cycled so that L2 (50 MB on an H100) holds none of them
// between calls. Returns the per-step milliseconds {gemv, cublas}.
std::pair<double, double> gemv_report(int64_t M = 1) {
  struct Shape {
    const char* name;
    int64_t N, K, per_token;
  };
  const Shape shapes[] = {{"q_proj, o_proj", g.head * g.head_dim, g.embd, 2 * g.layer},
                          {"k_proj, v_proj", g.kv_head * g.head_dim, g.embd, 2 * g.layer},
                          {"gate_proj, up_proj", g.ff, g.embd, 2 * g.layer},
                          {"down_proj", g.embd, g.ff, g.layer},
                          {"lm_head", g.vocab, g.embd, 1}};
  Tensor pool = random_pool();
  double total[2] = {0, 0};
  std::printf("weight products of one decode step (x (%lld, K) W (N, K)^T, %s):\n", (long long)M, dtype_name(g.dtype));
  std::printf(
      "| product | N x K | calls/token | gemv.cu us | GB/s | cuBLASLt us | GB/s |\n| --- | --- | --- | "
      "--- | --- | --- "
      "| --- |\n");
  for (const Shape& sh : shapes) {
    const double bytes = double(sh.N * sh.K) * (g.dtype == DType::bf16 ? 2.0 : 4.0);
    const int copies = g.device == Device::cpu ? 1 : int(std::max(1.0, std::ceil(256e6 / bytes)));
    std::vector<Tensor> ws;
    for (int i = 0; i < copies; ++i) {
      Tensor w = ops::empty({sh.N, sh.K}, g.dtype, g.device);
      Tensor rows = w.reshape({sh.N * sh.K / g.embd, g.embd});
      fill_from_pool(rows, pool);
      ws.push_back(w);
    }
    Tensor x = ops::randn({M, sh.K}, 9, 0.5f, g.dtype, g.device);  // K is not always a multiple of n_embd
    double us[2];
    for (int mode = 0; mode < 2; ++mode) {
      RuntimeConfig rc = runtime_config();
      rc.cuda_gemv = mode == 0;
      ScopedRuntimeConfig scoped(rc);
      for (int i = 0; i < 3; ++i) (void)ops::linear(x, ws[size_t(i % copies)], Tensor());
      backend(g.device).synchronize();
      const int calls = 10 * copies;
      auto t0 = Clock::now();
      for (int i = 0; i < calls; ++i) (void)ops::linear(x, ws[size_t(i % copies)], Tensor());
      backend(g.device).synchronize();
      us[mode] = secs(t0) / calls * 1e6;
      total[mode] += us[mode] * double(sh.per_token) / 1e3;
    }
    std::printf("| %s | %lld x %lld | %lld | %.1f | %.0f | %.1f | %.0f |\n", sh.name, (long long)sh.N, (long long)sh.K,
                (long long)sh.per_token, us[0], bytes / us[0] / 1e3, us[1], bytes / us[1] / 1e3);
  }
  std::printf("per token: gemv.cu %.3f ms, cuBLASLt %.3f ms (eager launches included)\n", total[0], total[1]);
  return {total[0], total[1]};
}

struct Trial {
  double prompt_tps, decode_tps, peak_gb;
};

Trial run_trial(Model& model, int64_t P, int64_t G, uint64_t seed) {
  std::vector<int32_t> prompt(static_cast<size_t>(P));
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int32_t& t : prompt) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    t = int32_t(x % uint64_t(g.vocab));
  }
  allocator(g.device).reset_peak();
  DenseKVCache cache(model.config(), g.device, g.dtype);
  Sampler sampler(SamplerOptions{}, 0);  // temp 0: greedy
  Generator gen(model, cache, sampler);
  GenerationConfig gc;
  gc.max_tokens = G;  // no EOS ids: exactly G tokens
  GenerationStats st = gen.generate(prompt, gc);
  LMT_CHECK(st.generation_tokens == G, "[bench_generate] generated ", st.generation_tokens, " of ", G);
  // Generator counts G tokens over G - 1 forwards (mlx-lm's way); per forward here.
  return {st.prompt_tps, st.generation_tps * double(G - 1) / double(G), st.peak_memory_gb};
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  std::vector<int64_t> product_rows;  // --rows 8,32: only the product table at these row counts
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
      json_path = argv[++i];
    } else if (std::strcmp(argv[i], "--rows") == 0 && i + 1 < argc) {
      for (const char* c = argv[++i]; *c;) {
        char* end = nullptr;
        const long long m = std::strtoll(c, &end, 10);
        if (end == c || m < 1) {
          std::fprintf(stderr, "bench_generate: --rows takes row counts such as 8,32\n");
          return 2;
        }
        product_rows.push_back(m);
        c = *end == ',' ? end + 1 : end;
      }
    } else if (std::strcmp(argv[i], "--smoke") == 0) {  // tiny, on the CPU: a check of this program
      g = Config{256, 512, 2, 4, 2, 64, 1000, 64, 8, 2, int64_t(1) << 20, Device::cpu, DType::f32};
    } else {
      std::fprintf(stderr, "usage: bench_generate [--json PATH] [--smoke] [--rows M1,M2,...]\n");
      return 2;
    }
  }
  try {
    if (g.device == Device::cuda) LMT_CHECK(cuda_available(), "[bench_generate] no CUDA device");
    std::string dev = g.device == Device::cuda ? cuda_device_name() : std::string("cpu (smoke)");
    if (!product_rows.empty()) {
      std::printf("bench_generate --rows: %s, %s\n", dev.c_str(), dtype_name(g.dtype));
      for (int64_t m : product_rows) (void)gemv_report(m);
      return 0;
    }
    auto t0 = Clock::now();
    auto model = make_model();
    double build_s = secs(t0);
    double params = 0, read_params = 0;
    for (auto& [name, t] : model->weights()) {
      params += double(t.numel());
      if (name != "model.embed_tokens.weight") read_params += double(t.numel());
    }
    read_params += double(g.embd);  // the embedding row a token reads
    const double esize = g.dtype == DType::bf16 ? 2.0 : 4.0;
    // KV bytes read per decode token at the mean context of a trial's decode.
    double mean_ctx = double(g.prompt) + double(g.gen) / 2;
    double kv_bytes = 2.0 * double(g.layer) * double(g.kv_head * g.head_dim) * esize * mean_ctx;
    double bytes_per_token = read_params * esize + kv_bytes;
    std::printf("bench_generate: %s, %s, %.3f B parameters (%.2f GB), built in %.1f s\n", dev.c_str(),
                dtype_name(g.dtype), params / 1e9, params * esize / 1e9, build_s);
    double bw = copy_bandwidth_gbps();
    double bound_tps = bw * 1e9 / bytes_per_token;
    std::printf("copy bandwidth (d2d, read + write): %.0f GB/s\n", bw);
    std::printf("bytes per decode token: %.3f GB weights + %.1f MB kv (mean context %.0f) -> bound %.1f tok/s\n",
                read_params * esize / 1e9, kv_bytes / 1e6, mean_ctx, bound_tps);
    auto [gemv_ms, cublas_ms] = gemv_report();
    (void)run_trial(*model, g.prompt, 8, 0);  // warm-up: handles, algorithms, allocator
    std::vector<double> ptps, dtps;
    double peak = 0;
    for (int64_t i = 0; i < g.trials; ++i) {
      Trial t = run_trial(*model, g.prompt, g.gen, uint64_t(i + 1));
      std::printf("trial %lld: prompt %lld tokens %.1f tok/s, decode %lld tokens %.2f tok/s, peak %.2f GB\n",
                  (long long)(i + 1), (long long)g.prompt, t.prompt_tps, (long long)g.gen, t.decode_tps, t.peak_gb);
      std::fflush(stdout);
      ptps.push_back(t.prompt_tps);
      dtps.push_back(t.decode_tps);
      peak = std::max(peak, t.peak_gb);
    }
    double p = median(ptps), d = median(dtps);
    std::printf("lmtune median: prompt %.1f tok/s, decode %.2f tok/s = %.1f%% of the bound %.1f tok/s\n", p, d,
                100.0 * d / bound_tps, bound_tps);
    if (!json_path.empty()) {
      std::ofstream f(json_path);
      f << "{\"device\": \"" << dev << "\", \"prompt_tps\": " << p << ", \"decode_tps\": " << d
        << ", \"copy_gbps\": " << bw << ", \"bytes_per_token\": " << bytes_per_token << ", \"bound_tps\": " << bound_tps
        << ", \"peak_gb\": " << peak << ", \"prompt\": " << g.prompt << ", \"gen\": " << g.gen
        << ", \"gemv_ms_per_token\": " << gemv_ms << ", \"cublas_ms_per_token\": " << cublas_ms << "}\n";
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_generate: %s\n", e.what());
    return 1;
  }
  return 0;
}
