// CUDA bf16 benchmarks at Mistral-7B shapes (n_embd 4096, n_ff 14336, 32 heads, 8 kv heads,
// head_dim 128, B 1, T 2048): the projection GEMMs forward and backward, causal attention
// forward and forward+backward, a 1- and 2-layer model's loss forward and forward+backward,
// and a device-to-device copy. Names match bench/bench_gpu_peer.py; bench/run_gpu.sh joins them.
// No CUDA header here: times are host clocks around N repetitions bracketed by the backend's
// synchronize(), after warm-up, the median of several runs.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "autograd/tape.h"
#include "backend/backend.h"
#include "models/model.h"
#include "ops/ops.h"

namespace {

using namespace lmtune;

// Mistral-7B; --smoke shrinks every size and runs on the CPU in f32 (a check of this program,
// not a measurement).
struct Config {
  int64_t embd = 4096, ff = 14336, head = 32, kv_head = 8, head_dim = 128;
  int64_t batch = 1, tokens = 2048, vocab = 256;
  int64_t copy_elems = int64_t(1) << 29;  // 1 GiB of bf16
  Device device = Device::cuda;
  DType dtype = DType::bf16;
};
Config g;
// Distinct input sets cycled through, so repeated GEMMs do not run out of the 50 MB L2.
constexpr int kSets = 3;

struct Timing {
  double median_ms = 0, min_ms = 0, max_ms = 0;
};

// fn(i) is one repetition (i cycles the input sets). Warm-up, then `runs` timed runs of `reps`
// repetitions each, every run bracketed by synchronize(); the median run's time per repetition.
Timing time_ms(const std::function<void(int)>& fn, int warmup, int reps, int runs) {
  Backend& dev = backend(g.device);
  for (int i = 0; i < warmup; ++i) fn(i % kSets);
  dev.synchronize();
  std::vector<double> per_rep;
  for (int r = 0; r < runs; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) fn(i % kSets);
    dev.synchronize();
    auto t1 = std::chrono::steady_clock::now();
    per_rep.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count() / reps);
  }
  std::sort(per_rep.begin(), per_rep.end());
  return {per_rep[per_rep.size() / 2], per_rep.front(), per_rep.back()};
}

struct Row {
  std::string name, what;
  Timing t;
  double flops = 0, bytes = 0;  // per repetition; 0 where not counted
  std::string error;
};

class Report {
 public:
  void add(const std::string& name, const std::string& what, double flops, double bytes,
           const std::function<Timing()>& measure) {
    Row r{name, what, {}, flops, bytes, {}};
    try {
      r.t = measure();
    } catch (const std::exception& e) {
      r.error = e.what();
    }
    print(r);
    rows_.push_back(r);
  }
  const Row* find(const std::string& name) const {
    for (const Row& r : rows_)
      if (r.name == name && r.error.empty()) return &r;
    return nullptr;
  }
  bool any_failed() const {
    return std::any_of(rows_.begin(), rows_.end(), [](const Row& r) { return !r.error.empty(); });
  }
  void add_derived(Row r) {
    print(r);
    rows_.push_back(std::move(r));
  }
  void write_json(const std::string& path) const {
    FILE* f = std::fopen(path.c_str(), "w");
    if (!f) {
      std::fprintf(stderr, "bench_gpu: cannot write %s\n", path.c_str());
      return;
    }
    for (const Row& r : rows_) {
      std::string err = r.error;
      for (char& c : err)
        if (c == '"' || c == '\\' || c == '\n') c = ' ';
      std::fprintf(f, "{\"name\": \"%s\", \"ms\": %.6g, \"tflops\": %.6g, \"gbps\": %.6g, \"error\": \"%s\"}\n",
                   r.name.c_str(), r.t.median_ms, rate(r.flops, r.t) / 1e12, rate(r.bytes, r.t) / 1e9, err.c_str());
    }
    std::fclose(f);
  }

 private:
  static double rate(double amount, const Timing& t) {
    return amount > 0 && t.median_ms > 0 ? amount / (t.median_ms * 1e-3) : 0;
  }
  static void print(const Row& r) {
    if (!r.error.empty()) {
      std::printf("%-22s %-44s FAILED: %s\n", r.name.c_str(), r.what.c_str(), r.error.c_str());
    } else {
      std::printf("%-22s %-44s %9.3f ms (min %.3f, max %.3f)", r.name.c_str(), r.what.c_str(), r.t.median_ms,
                  r.t.min_ms, r.t.max_ms);
      if (r.flops > 0) std::printf("  %7.1f TFLOP/s", rate(r.flops, r.t) / 1e12);
      if (r.bytes > 0) std::printf("  %7.1f GB/s", rate(r.bytes, r.t) / 1e9);
      std::printf("\n");
    }
    std::fflush(stdout);
  }
  std::vector<Row> rows_;
};

// kSets bf16 tensors of one shape on the GPU: one random draw, the others scaled copies made on
// the device (distinct memory is what matters; the host draws only once).
std::vector<Tensor> random_sets(const Shape& shape, uint64_t seed, float std) {
  std::vector<Tensor> sets{ops::randn(shape, seed, std, g.dtype, g.device)};
  for (int i = 1; i < kSets; ++i) sets.push_back(ops::scale(sets[0], 1.f - 0.125f * float(i)));
  return sets;
}

// Y (T, out) = X (T, in) @ W (out, in)^T; dX (T, in) = dY (T, out) @ W; dW (out, in) = dY^T @ X.
void bench_gemms(Report& rep) {
  struct Proj {
    const char* name;
    int64_t out, in;
  };
  const int64_t T = g.batch * g.tokens;
  for (Proj p : {Proj{"q", g.head * g.head_dim, g.embd}, Proj{"kv", g.kv_head * g.head_dim, g.embd},
                 Proj{"gate_up", g.ff, g.embd}, Proj{"down", g.embd, g.ff}}) {
    std::vector<Tensor> x = random_sets({T, p.in}, 11, 1.f);        // bf16 (T, in)
    std::vector<Tensor> w = random_sets({p.out, p.in}, 12, 0.02f);  // bf16 (out, in)
    std::vector<Tensor> dy = random_sets({T, p.out}, 13, 1.f);      // bf16 (T, out)
    double flops = 2.0 * T * p.in * p.out;
    double bytes = double(dtype_size(g.dtype)) * double(T * p.in + p.out * p.in + T * p.out);
    char what[96];
    std::string n = p.name;
    std::snprintf(what, sizeof what, "Y = X(%lldx%lld) @ W(%lldx%lld)^T", (long long)T, (long long)p.in,
                  (long long)p.out, (long long)p.in);
    rep.add("gemm_fwd_" + n, what, flops, bytes,
            [&] { return time_ms([&](int i) { ops::linear(x[i], w[i]); }, 3, 20, 7); });
    std::snprintf(what, sizeof what, "dX = dY(%lldx%lld) @ W(%lldx%lld)", (long long)T, (long long)p.out,
                  (long long)p.out, (long long)p.in);
    rep.add("gemm_dx_" + n, what, flops, bytes,
            [&] { return time_ms([&](int i) { ops::matmul(dy[i], w[i]); }, 3, 20, 7); });
    std::snprintf(what, sizeof what, "dW = dY^T(%lldx%lld) @ X(%lldx%lld)", (long long)p.out, (long long)T,
                  (long long)T, (long long)p.in);
    rep.add("gemm_dw_" + n, what, flops, bytes,
            [&] { return time_ms([&](int i) { ops::matmul(dy[i], x[i], true, false); }, 3, 20, 7); });
  }
}

// Causal GQA attention: forward FLOPs 4 B H T T D / 2 (QK^T and PV, half the square); backward
// counted as 2.5x forward, so forward+backward is 3.5x.
double attention_fwd_flops() { return 4.0 * g.batch * g.head * g.tokens * g.tokens * g.head_dim / 2; }

void bench_attention(Report& rep) {
  std::vector<Tensor> q = random_sets({g.batch, g.tokens, g.head, g.head_dim}, 21, 1.f);     // bf16 (B, T, H, D)
  std::vector<Tensor> k = random_sets({g.batch, g.tokens, g.kv_head, g.head_dim}, 22, 1.f);  // bf16 (B, T, Hkv, D)
  std::vector<Tensor> v = random_sets({g.batch, g.tokens, g.kv_head, g.head_dim}, 23, 1.f);  // bf16 (B, T, Hkv, D)
  std::vector<Tensor> dout = random_sets({g.batch, g.tokens, g.head, g.head_dim}, 24, 1.f);  // bf16 like q
  float scale = 1.f / std::sqrt(float(g.head_dim));
  // q, k, v, out, lse once; dout, dq, dk, dv once more for backward.
  double es = double(dtype_size(g.dtype));
  double fwd_bytes = es * double(2 * q[0].numel() + 2 * k[0].numel()) + 4.0 * g.batch * g.head * g.tokens;
  double bwd_bytes = fwd_bytes + es * double(2 * q[0].numel() + 2 * k[0].numel());
  char shape[96];
  std::snprintf(shape, sizeof shape, "causal B%lld T%lld H%lld KV%lld D%lld", (long long)g.batch, (long long)g.tokens,
                (long long)g.head, (long long)g.kv_head, (long long)g.head_dim);
  rep.add("attn_fwd", shape, attention_fwd_flops(), fwd_bytes,
          [&] { return time_ms([&](int i) { ops::attention(q[i], k[i], v[i], scale, true, 0, 0); }, 3, 10, 7); });
  rep.add("attn_fwd_bwd", std::string(shape) + ", fwd + bwd", 3.5 * attention_fwd_flops(), bwd_bytes, [&] {
    return time_ms(
        [&](int i) {
          ops::AttentionOut f = ops::attention(q[i], k[i], v[i], scale, true, 0, 0);
          ops::attention_backward(q[i], k[i], v[i], f, dout[i], scale, true, 0, 0);
        },
        3, 10, 7);
  });
}

// Matrix FLOPs of one Mistral-7B block's forward at T tokens: 7 projections + causal attention.
double block_fwd_flops() {
  double params =
      double(g.embd) * (g.head * g.head_dim) * 2 + double(g.embd) * (g.kv_head * g.head_dim) * 2 + 3.0 * g.embd * g.ff;
  return 2.0 * g.batch * g.tokens * params + attention_fwd_flops();
}
double head_fwd_flops() { return 2.0 * g.batch * g.tokens * g.embd * g.vocab; }

std::unique_ptr<Model> make_model(int64_t n_layer) {
  char json[512];
  std::snprintf(json, sizeof json,
                "{\"model_type\": \"mistral\", \"vocab_size\": %lld, \"hidden_size\": %lld, "
                "\"intermediate_size\": %lld, \"num_hidden_layers\": %lld, \"num_attention_heads\": %lld, "
                "\"num_key_value_heads\": %lld, \"head_dim\": %lld, \"rms_norm_eps\": 1e-5, "
                "\"rope_theta\": 1000000.0, \"max_position_embeddings\": 32768, \"sliding_window\": null, "
                "\"tie_word_embeddings\": false, \"hidden_act\": \"silu\"}",
                (long long)g.vocab, (long long)g.embd, (long long)g.ff, (long long)n_layer, (long long)g.head,
                (long long)g.kv_head, (long long)g.head_dim);
  auto model = create_model(ModelConfig::from_json_text(json, "bench_gpu"));
  std::map<std::string, Tensor> w;
  // One host draw per distinct shape (a draw of the 58.7 M gate weights takes about a second);
  // later weights of that shape are scaled copies made on the device, random all the same.
  std::map<Shape, Tensor> drawn;
  uint64_t seed = 100;
  float factor = 1.f;
  for (const TensorSpec& s : model->tensor_specs()) {
    Tensor t;
    if (s.shape.size() == 1) {
      t = ops::full(s.shape, 1.f, g.dtype, g.device);  // rms_norm weights start at one, as in transformers
    } else if (auto it = drawn.find(s.shape); it != drawn.end()) {
      factor -= 0.01f;
      t = ops::scale(it->second, factor);
    } else {
      t = ops::randn(s.shape, seed++, 0.02f, g.dtype, g.device);
      drawn[s.shape] = t;
    }
    w[s.name] = ag::param(t);
  }
  model->set_weights(std::move(w));
  return model;
}

// The model's loss forward (no tape) and forward+backward (every weight trainable, gradients
// reset to none before each step, as zero_grad(set_to_none=True) does in the peer).
void bench_model(Report& rep, int64_t n_layer) {
  std::unique_ptr<Model> model = make_model(n_layer);
  std::vector<Tensor> ids, targets;  // i32 (B, T) on the host, as Model::forward takes them
  for (int i = 0; i < kSets; ++i) {
    Tensor u = ops::uniform({g.batch, g.tokens}, 300 + i, 0.f, float(g.vocab) - 0.01f);
    std::vector<float> f = u.to_f32_vector();
    std::vector<int32_t> a(f.size()), b(f.size());
    for (size_t j = 0; j < f.size(); ++j) a[j] = int32_t(f[j]);
    for (size_t j = 0; j < f.size(); ++j) b[j] = a[(j + 1) % f.size()];
    ids.push_back(Tensor::from_i32(a, {g.batch, g.tokens}));
    targets.push_back(Tensor::from_i32(b, {g.batch, g.tokens}));
  }
  double fwd = double(n_layer) * block_fwd_flops() + head_fwd_flops();
  std::string L = std::to_string(n_layer);
  rep.add("model" + L + "_fwd", L + "-layer model, vocab 256: loss fwd", fwd, 0, [&] {
    ag::NoGradGuard no_grad;
    return time_ms([&](int i) { model->loss(ids[i], targets[i]); }, 2, 5, 5);
  });
  rep.add("model" + L + "_fwd_bwd", L + "-layer model, vocab 256: loss fwd + bwd", 3 * fwd, 0, [&] {
    return time_ms(
        [&](int i) {
          for (auto& [name, t] : model->weights()) ag::zero_grad(t);
          ag::backward(model->loss(ids[i], targets[i]));
        },
        2, 5, 5);
  });
}

// One Mistral block alone: the 2-layer model minus the 1-layer model.
void derive_block(Report& rep) {
  for (const char* pass : {"fwd", "fwd_bwd"}) {
    const Row* one = rep.find(std::string("model1_") + pass);
    const Row* two = rep.find(std::string("model2_") + pass);
    if (!one || !two) continue;
    Row r;
    r.name = std::string("block_") + pass;
    r.what = std::string("one block (2-layer minus 1-layer), ") + pass;
    r.t.median_ms = two->t.median_ms - one->t.median_ms;
    r.t.min_ms = two->t.min_ms - one->t.max_ms;
    r.t.max_ms = two->t.max_ms - one->t.min_ms;
    r.flops = (std::strcmp(pass, "fwd") == 0 ? 1 : 3) * block_fwd_flops();
    rep.add_derived(r);
  }
}

// Device-to-device copy of 1 GiB: bytes read plus bytes written.
void bench_copy(Report& rep) {
  const int64_t n = g.copy_elems;
  // A copy's speed does not depend on the values, and a host draw of 537 M values would take
  // seconds: a non-zero constant (never zeros: METHOD.md).
  Tensor src = ops::full({n}, 0.37f, g.dtype, g.device);
  rep.add("copy_d2d", "clone of 1 GiB (read + write counted)", 0, 2.0 * double(src.nbytes()),
          [&] { return time_ms([&](int) { ops::clone(src); }, 2, 10, 5); });
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  bool smoke = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
      json_path = argv[++i];
    } else if (std::strcmp(argv[i], "--smoke") == 0) {
      smoke = true;
    } else {
      std::fprintf(stderr, "usage: bench_gpu [--json PATH] [--smoke]\n");
      return 2;
    }
  }
  if (smoke) {
    g.embd = 256, g.ff = 896, g.head = 8, g.kv_head = 2, g.head_dim = 32, g.tokens = 128;
    g.copy_elems = int64_t(1) << 20;
    g.device = Device::cpu, g.dtype = DType::f32;
  } else if (!cuda_available()) {
    std::fprintf(stderr, "bench_gpu: no CUDA device (or the CUDA backend is not built)\n");
    return 1;
  }
  std::printf("bench_gpu: %s, %s, Mistral-7B shapes (B %lld, T %lld)\n",
              smoke ? "cpu (smoke)" : cuda_device_name().c_str(), dtype_name(g.dtype), (long long)g.batch,
              (long long)g.tokens);
  Report rep;
  try {
    bench_copy(rep);
    bench_gemms(rep);
    bench_attention(rep);
    bench_model(rep, 1);
    bench_model(rep, 2);
    derive_block(rep);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu: %s\n", e.what());
    if (!json_path.empty()) rep.write_json(json_path);
    return 1;
  }
  if (!json_path.empty()) rep.write_json(json_path);
  // A failed item is in the table and the JSON; the exit status says so too.
  return rep.any_failed() ? 1 : 0;
}
