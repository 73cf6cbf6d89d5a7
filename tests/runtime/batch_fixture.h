// Small random llama models for the batching tests (runtime/batch_engine.h, Model::forward_packed):
// dense or with every projection quantized (MLX affine, 4 bits, groups of 32), on a device, and the
// "alone" reference: one sequence fed chunk by chunk through Model::forward with its own cache.
#pragma once
#include <cmath>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "models/model.h"
#include "ops/ops.h"
#include "runtime/batch_engine.h"
#include "runtime/kv_cache.h"

namespace lmtune::test {

struct TinySpec {
  Device device = Device::cpu;
  DType dtype = DType::f32;
  int quant_bits = 0;  // 0: dense
  bool qk_norm = false;
  int64_t n_vocab = 257;
};

inline std::unique_ptr<Model> tiny_model(const TinySpec& t) {
  ModelConfig c;
  c.model_type = "llama";
  c.n_vocab = t.n_vocab;
  c.n_head = 4;
  c.n_kv_head = 2;
  c.head_dim = 32;
  c.n_embd = 128;
  c.n_ff = 320;
  c.n_layer = 2;
  c.rms_norm_eps = 1e-5;
  c.qk_norm = t.qk_norm;
  c.layer_window = {0, 0};
  auto m = create_model(c);
  std::map<std::string, Tensor> w;
  std::map<std::string, LayerQuant> quantized;
  uint64_t seed = 7;
  for (const TensorSpec& spec : m->tensor_specs()) {
    const bool norm = spec.name.find("norm") != std::string::npos;
    Tensor x = norm ? ops::full(spec.shape, 1.f, DType::f32, Device::cpu)
                    : ops::randn(spec.shape, ++seed, 1.f / std::sqrt(float(spec.shape.back())));
    const std::string suffix = "_proj.weight";
    if (t.quant_bits > 0 && spec.name.ends_with(suffix)) {
      const std::string layer = spec.name.substr(0, spec.name.size() - 7);
      ops::AffineQuantized q = ops::quantize_affine(ops::cast(x, t.dtype), t.quant_bits, 32);
      w[spec.name] = ops::to(q.wq, t.device);
      w[layer + ".scales"] = ops::to(q.scales, t.device);
      w[layer + ".biases"] = ops::to(q.biases, t.device);
      quantized[layer] = LayerQuant{QuantMode::affine, t.quant_bits, 32};
      continue;
    }
    w[spec.name] = ops::to(x, t.device, t.dtype);
  }
  m->set_quantized(std::move(quantized));
  m->set_weights(std::move(w));
  return m;
}

inline std::vector<int32_t> tokens(size_t n, int salt, int vocab = 257) {
  std::vector<int32_t> p(n);
  for (size_t i = 0; i < n; ++i) p[i] = int32_t((i * 37 + size_t(salt) * 101 + 11) % size_t(vocab));
  return p;
}

inline std::vector<float> host_f32(const Tensor& t) { return ops::to(t, Device::cpu, DType::f32).to_f32_vector(); }

// A batch job whose outcome lands in a future.
struct Waiter {
  std::promise<BatchOutcome> done;
  std::future<BatchOutcome> result = done.get_future();
};

// A greedy job (the sampler's defaults) of prompt for max_tokens, ending in w.
inline BatchJob greedy_job(const std::vector<int32_t>& prompt, int64_t max_tokens, Waiter& w) {
  BatchJob j;
  j.prompt = prompt;
  j.max_tokens = max_tokens;
  j.on_done = [&w](const BatchOutcome& o) { w.done.set_value(o); };
  return j;
}

}  // namespace lmtune::test
