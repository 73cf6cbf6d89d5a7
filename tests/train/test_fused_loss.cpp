// Model::loss with the fused, chunked head + cross-entropy (LMTUNE_FUSED_XENT, on by default)
// against the unfused path (the whole logits, then ag::cross_entropy) on random qwen2-shaped
// models: tied and untied heads, LoRA (the head frozen), full fine-tuning with train_embeddings (the
// head trained; tied: the embedding's gradient from both of its uses), a 4-bit quantized lm_head,
// masked targets, chunks that do not divide the rows; and the model's peak allocator bytes.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "autograd/tape.h"
#include "backend/backend.h"
#include "core/allocator.h"
#include "core/runtime_config.h"
#include "quant/quant.h"
#include "tolerance.h"
#include "train/adapters.h"

using namespace lmtune;

namespace {

struct Shape_ {
  int64_t vocab = 97, embd = 32;
  bool tied = false;
  bool quantized_head = false;  // lm_head in MLX's affine 4-bit layout (untied only)
};

std::unique_ptr<Model> random_model(const Shape_& s, uint64_t seed, Device dev = Device::cpu, DType dt = DType::f32) {
  nlohmann::json j = {{"model_type", "qwen2"},    {"vocab_size", s.vocab},          {"hidden_size", s.embd},
                      {"intermediate_size", 48},  {"num_hidden_layers", 2},         {"num_attention_heads", 4},
                      {"num_key_value_heads", 2}, {"max_position_embeddings", 256}, {"rms_norm_eps", 1e-6},
                      {"rope_theta", 10000.0},    {"tie_word_embeddings", s.tied}};
  auto model = create_model(ModelConfig::from_json_text(j.dump(), "random/config.json"));
  std::map<std::string, Tensor> w;
  for (const TensorSpec& t : model->tensor_specs()) {
    Tensor r = ops::randn(t.shape, seed++, t.shape.size() == 1 ? 0.1f : 0.2f);
    if (t.shape.size() == 1) r = ops::add(r, ops::full(t.shape, 1.f, DType::f32, Device::cpu));
    w[t.name] = r;
  }
  if (s.quantized_head) {
    const QuantFormat f{QuantMode::affine, 4, 32};
    quant::QuantizedWeight q = quant::quantize(w.at("lm_head.weight"), f);
    w["lm_head.weight"] = q.wq, w["lm_head.scales"] = q.scales, w["lm_head.biases"] = q.biases;
    model->set_quantized({{"lm_head", f}});
  }
  for (auto& [name, t] : w) t = ops::to(t, dev, is_float(t.dtype()) ? dt : t.dtype());
  model->set_weights(std::move(w));
  return model;
}

Tensor ids_of(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  std::vector<float> u = ops::uniform({B * T}, seed, 0.f, float(V)).to_f32_vector();
  std::vector<int32_t> v;
  for (float x : u) v.push_back(std::min<int32_t>(int32_t(V - 1), int32_t(x)));
  return Tensor::from_i32(v, {B, T});
}

// Next tokens, with a masked prompt in row 0 and padding at the end of row 1.
Tensor targets_of(const Tensor& ids, int64_t V) {
  const int64_t B = ids.dim(0), T = ids.dim(1);
  std::vector<int32_t> t(size_t(B * T));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < T; ++i) {
      int32_t next = i + 1 < T ? ids.data<int32_t>()[b * T + i + 1] : int32_t((b * 7 + 3) % V);
      bool masked = (b == 0 && i < 3) || (b == 1 && i >= T - 4);
      t[size_t(b * T + i)] = masked ? -100 : next;
    }
  return Tensor::from_i32(t, {B, T});
}

struct Grads {
  float loss = 0;
  std::map<std::string, std::vector<float>> g;
};

// Loss and every trainable parameter's gradient, fused (chunk_rows >= 0) or not (chunk_rows < 0).
Grads loss_and_grads(Model& m, const Tensor& ids, const Tensor& targets, int64_t chunk_rows) {
  RuntimeConfig rc = runtime_config();
  rc.fused_xent = chunk_rows >= 0;
  rc.xent_chunk_rows = std::max<int64_t>(0, chunk_rows);
  ScopedRuntimeConfig scoped(rc);
  auto params = train::trainable_parameters(m);
  for (auto& [n, p] : params) ag::zero_grad(p);
  Tensor loss = m.loss(ids, targets);
  Grads out;
  out.loss = ops::item(loss);  // any device
  ag::backward(loss);
  for (auto& [n, p] : params) {
    const Tensor& g = ag::grad(p);
    EXPECT_TRUE(g.defined()) << "no gradient reached " << n;
    if (g.defined()) out.g[n] = ops::to(g, Device::cpu).to_f32_vector();
  }
  return out;
}

// f32 throughout: the same kernels per row, so the loss agrees to the rounding of its sum (1e-6
// relative) and each gradient tensor to 1e-5 of its largest element (products over fewer rows and
// chunk by chunk round differently; an element-wise bound would trip on the sums that cancel).
constexpr double kGradRel = 1e-5;

void expect_same(const Grads& a, const Grads& r, const std::string& what) {
  expect_close({a.loss}, {r.loss}, 0, 1e-6, what + " loss");
  ASSERT_EQ(a.g.size(), r.g.size()) << what;
  double worst = 0;
  for (const auto& [n, g] : r.g) {
    const double e = max_rel_error(a.g.at(n), g);
    EXPECT_LE(e, kGradRel) << what << " d " << n;
    worst = std::max(worst, e);
  }
  std::printf("%s: loss %.9g vs %.9g, worst gradient error %.2e (max |a - r| / max |r| per tensor)\n", what.c_str(),
              a.loss, r.loss, worst);
}

void randomize_adapters(Model& m, uint64_t seed) {
  for (auto& [n, t] : train::trainable_parameters(m)) {
    Tensor dst = t;
    ops::copy_into(dst, ops::randn(t.shape(), seed++, 0.1f));
  }
}

}  // namespace

TEST(FusedLoss, LoraTiedAndUntied) {
  for (bool tied : {false, true}) {
    Shape_ s;
    s.tied = tied;
    auto m = random_model(s, 100);
    train::AdapterConfig cfg;
    cfg.lora.rank = 4;
    cfg.num_layers = -1;
    train::attach_adapters(*m, cfg, 1);
    randomize_adapters(*m, 7);
    Tensor ids = ids_of(2, 9, s.vocab, 3), targets = targets_of(ids, s.vocab);
    Grads ref = loss_and_grads(*m, ids, targets, -1);
    for (int64_t chunk : {5, 4, 0}) {
      std::string what = std::string(tied ? "tied" : "untied") + " lora chunk " + std::to_string(chunk);
      expect_same(loss_and_grads(*m, ids, targets, chunk), ref, what);
    }
  }
}

TEST(FusedLoss, FullFineTuneTrainsTheHead) {
  for (bool tied : {false, true}) {
    Shape_ s;
    s.tied = tied;
    auto m = random_model(s, 200);
    train::AdapterConfig cfg;
    cfg.fine_tune_type = "full";
    cfg.num_layers = -1;
    cfg.train_embeddings = true;
    train::attach_adapters(*m, cfg);
    Tensor ids = ids_of(2, 9, s.vocab, 5), targets = targets_of(ids, s.vocab);
    Grads ref = loss_and_grads(*m, ids, targets, -1);
    ASSERT_TRUE(ref.g.count(tied ? "model.embed_tokens.weight" : "lm_head.weight"));
    for (int64_t chunk : {7, 0}) {
      std::string what = std::string(tied ? "tied" : "untied") + " full chunk " + std::to_string(chunk);
      expect_same(loss_and_grads(*m, ids, targets, chunk), ref, what);
    }
  }
}

TEST(FusedLoss, QuantizedHead) {
  Shape_ s;
  s.quantized_head = true;
  auto m = random_model(s, 300);
  train::AdapterConfig cfg;
  cfg.lora.rank = 4;
  cfg.num_layers = -1;
  train::attach_adapters(*m, cfg, 2);
  randomize_adapters(*m, 9);
  Tensor ids = ids_of(2, 9, s.vocab, 7), targets = targets_of(ids, s.vocab);
  Grads ref = loss_and_grads(*m, ids, targets, -1);
  for (int64_t chunk : {5, 0}) expect_same(loss_and_grads(*m, ids, targets, chunk), ref, "quantized lm_head");
}

TEST(FusedLoss, EvaluationWithoutGradients) {
  Shape_ s;
  auto m = random_model(s, 400);
  Tensor ids = ids_of(3, 8, s.vocab, 9), targets = targets_of(ids, s.vocab);
  ag::NoGradGuard ng;
  RuntimeConfig rc = runtime_config();
  rc.fused_xent = false;
  float unfused;
  {
    ScopedRuntimeConfig scoped(rc);
    unfused = ops::item(m->loss(ids, targets));
  }
  rc.fused_xent = true;
  rc.xent_chunk_rows = 5;
  ScopedRuntimeConfig scoped(rc);
  Tensor fused = m->loss(ids, targets);
  EXPECT_FALSE(ag::requires_grad(fused));
  expect_close({ops::item(fused)}, {unfused}, 0, 1e-6, "evaluation loss");
}

// A vocabulary-heavy model (V = 32768, n_embd 32; 2 x 128 tokens: the logits are 32 MiB in f32):
// the peak allocator bytes of a LoRA loss + backward, fused in chunks of 64 rows, against unfused.
TEST(FusedLoss, PeakMemoryOfLossAndBackward) {
  Shape_ s;
  s.vocab = 32768;
  auto m = random_model(s, 500);
  train::AdapterConfig cfg;
  cfg.lora.rank = 4;
  cfg.num_layers = -1;
  train::attach_adapters(*m, cfg, 3);
  Tensor ids = ids_of(2, 128, s.vocab, 11), targets = targets_of(ids, s.vocab);
  CachingAllocator& a = allocator(Device::cpu);
  auto peak_of = [&](int64_t chunk) {
    RuntimeConfig rc = runtime_config();
    rc.fused_xent = chunk >= 0;
    rc.xent_chunk_rows = std::max<int64_t>(0, chunk);
    ScopedRuntimeConfig scoped(rc);
    const size_t base = a.current_bytes();
    a.reset_peak();
    ag::backward(m->loss(ids, targets));
    return double(a.peak_bytes() - base);
  };
  const double unfused = peak_of(-1), fused = peak_of(64);
  const double logits = 2.0 * 128 * 32768 * 4;
  std::printf("model loss + backward peak above the weights: unfused %.1f MiB, fused (64 rows) %.1f MiB\n",
              unfused / (1 << 20), fused / (1 << 20));
  EXPECT_GE(unfused, 2 * logits);
  EXPECT_LE(fused, unfused / 3);
}

// On CUDA in bf16 (skipped without a device): fused against unfused on the same device. Per row the
// same bf16 logits and dlogits; the products over fewer rows or chunk by chunk may round
// differently in bf16, so each gradient tensor to 1e-2 of its largest element.
TEST(FusedLoss, CudaBf16LoraTiedAndUntied) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device (or lmtune built without CUDA): skipping";
  for (bool tied : {false, true}) {
    Shape_ s;
    s.tied = tied;
    s.vocab = 1000;
    s.embd = 64;
    auto m = random_model(s, 600, Device::cuda, DType::bf16);
    train::AdapterConfig cfg;
    cfg.lora.rank = 4;
    cfg.num_layers = -1;
    train::attach_adapters(*m, cfg, 4);
    randomize_adapters(*m, 13);
    Tensor ids = ids_of(2, 40, s.vocab, 15), targets = targets_of(ids, s.vocab);
    Grads ref = loss_and_grads(*m, ids, targets, -1);
    for (int64_t chunk : {7, 0}) {
      Grads g = loss_and_grads(*m, ids, targets, chunk);
      std::string what = std::string(tied ? "cuda tied" : "cuda untied") + " chunk " + std::to_string(chunk);
      expect_close({g.loss}, {ref.loss}, 0, 1e-5, what + " loss");
      ASSERT_EQ(g.g.size(), ref.g.size());
      double worst = 0;
      for (const auto& [n, r] : ref.g) {
        const double e = max_rel_error(g.g.at(n), r);
        EXPECT_LE(e, 1e-2) << what << " d " << n;
        worst = std::max(worst, e);
      }
      std::printf("%s: loss %.9g vs %.9g, worst gradient error %.2e\n", what.c_str(), g.loss, ref.loss, worst);
    }
  }
}
