// Adapter targeting (mlx-lm's linear_to_lora_layers defaults, num_layers, full), layers sharing
// one input cast (nn::AdapterInput) computing what separate casts do, f32 master
// weights for full fine-tuning of a bf16 model (plumbing on the CPU, Adam steps on CUDA), adapter
// files in mlx-lm's layout (round trip, refusals), and, for tests/ref/check_mlx_adapter.py,
// adapters and logits written to LMTUNE_ADAPTER_OUT so that the real mlx-lm loads them and compares.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "autograd/tape.h"
#include "backend/backend.h"
#include "core/error.h"
#include "core/runtime_config.h"
#include "io/safetensors.h"
#include "nn/linear.h"
#include "tolerance.h"
#include "train/adapters.h"
#include "train/optimizers.h"

using namespace lmtune;
namespace fs = std::filesystem;

namespace {

std::string golden_model(const std::string& c) {
  const char* d = std::getenv("LMTUNE_LORA_GOLDEN_DIR");
  return std::string(d ? d : "") + "/" + c;
}

// Nonzero lora_b and perturbed m, so that a loaded adapter changes the logits.
void randomize(Model& m, uint64_t seed) {
  for (auto& [n, t] : train::trainable_parameters(m)) {
    Tensor r = ops::randn(t.shape(), seed++, 0.1f);
    if (n.size() > 2 && n.compare(n.size() - 2, 2, ".m") == 0) r = ops::add(t.detach(), r);
    Tensor dst = t;
    ops::copy_into(dst, r);
  }
}

Tensor ids_batch() { return Tensor::from_i32({1, 5, 9, 2, 7, 3, 8, 4, 6, 0, 11, 12}, {2, 6}); }

TEST(Adapters, DefaultKeysShapesAndInit) {
  auto model = load_model(golden_model("llama_gqa"), Device::cpu, DType::f32);
  std::vector<std::string> keys = train::default_lora_keys(*model);
  EXPECT_EQ(keys, (std::vector<std::string>{"mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj",
                                            "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"}));
  train::AdapterConfig cfg;
  cfg.num_layers = 1;
  cfg.lora.rank = 4;
  train::attach_adapters(*model, cfg, 3);
  auto params = train::trainable_parameters(*model);
  ASSERT_EQ(params.size(), 14u);
  for (auto& [n, t] : params) {
    EXPECT_EQ(n.rfind("model.layers.1.", 0), 0u) << n;
    EXPECT_EQ(t.dtype(), DType::f32);
  }
  const Tensor& w = model->weight("model.layers.1.mlp.down_proj.weight");  // (48, 97)
  const nn::LoraAdapter& a = model->adapters().at("model.layers.1.mlp.down_proj");
  EXPECT_EQ(a.lora_a.shape(), (Shape{97, 4}));
  EXPECT_EQ(a.lora_b.shape(), (Shape{4, 48}));
  float bound = 1.f / std::sqrt(97.f), amax = 0;
  for (float v : a.lora_a.to_f32_vector()) amax = std::max(amax, std::fabs(v));
  EXPECT_LE(amax, bound);
  EXPECT_GT(amax, 0.8f * bound);
  for (float v : a.lora_b.to_f32_vector()) EXPECT_EQ(v, 0.f);
  // Zero lora_b: the adapted model is the base model.
  Tensor with = model->forward(ids_batch());
  model->adapters().clear();
  expect_close(with.to_f32_vector(), model->forward(ids_batch()).to_f32_vector(), 0, 0, "zero lora_b");

  cfg.fine_tune_type = "dora";
  cfg.num_layers = -1;
  train::attach_adapters(*model, cfg);
  EXPECT_EQ(train::trainable_parameters(*model).size(), 42u);
  const nn::LoraAdapter& d = model->adapters().at("model.layers.0.self_attn.q_proj");
  std::vector<float> wq = model->weight("model.layers.0.self_attn.q_proj.weight").to_f32_vector(),
                     m = d.m.to_f32_vector();
  for (int64_t r = 0; r < 48; ++r) {
    double s = 0;
    for (int64_t c = 0; c < 48; ++c) s += double(wq[size_t(r * 48 + c)]) * wq[size_t(r * 48 + c)];
    EXPECT_NEAR(m[size_t(r)], std::sqrt(s), 1e-5 * std::sqrt(s));
  }
  (void)w;
}

// --fine-tune-type full on the last block (block 1 of the two-block golden models); the config used.
train::AdapterConfig attach_full_last_block(Model& model) {
  train::AdapterConfig cfg;
  cfg.fine_tune_type = "full";
  cfg.num_layers = 1;
  train::attach_adapters(model, cfg);
  return cfg;
}

TEST(Adapters, FullKeysAndRefusals) {
  auto model = load_model(golden_model("llama_gqa"), Device::cpu, DType::f32);
  train::AdapterConfig cfg = attach_full_last_block(*model);
  auto params = train::trainable_parameters(*model);
  EXPECT_EQ(params.size(), 9u);  // 7 linears + 2 norms of block 1
  for (auto& [n, t] : params) EXPECT_EQ(n.rfind("model.layers.1.", 0), 0u) << n;
  EXPECT_TRUE(model->adapters().empty());
  cfg.num_layers = 3;
  EXPECT_THROW(train::attach_adapters(*model, cfg), Error);
  cfg = {};
  cfg.num_layers = 1;
  cfg.lora.keys = {"self_attn.q_proj", "lm_head"};
  EXPECT_THROW(train::attach_adapters(*model, cfg), Error);
  cfg.lora.keys = {"self_attn.q_proj", "mlp.up_proj"};
  train::attach_adapters(*model, cfg);
  EXPECT_EQ(train::trainable_parameters(*model).size(), 4u);  // a, b for each; base weights refrozen
  cfg.fine_tune_type = "qlora";
  EXPECT_THROW(train::attach_adapters(*model, cfg), Error);
}

std::vector<float> host(const Tensor& t) { return ops::to(t.detach(), Device::cpu).to_f32_vector(); }

// The CPU computes in f32 only, so this checks the bookkeeping without a forward: bf16 weights
// get f32 masters (the trainable parameters, equal to the weights), the weights stay frozen
// bf16, files hold the masters' f32 values, and baking casts them back into the weights.
TEST(Adapters, FullOnBf16WeightsKeepsF32Masters) {
  auto bf16_model = [] {
    auto m = load_model(golden_model("llama_gqa"), Device::cpu, DType::f32);
    for (auto& [n, w] : m->weights()) w = ops::cast(w, DType::bf16);
    return m;
  };
  auto model = bf16_model();
  train::AdapterConfig cfg = attach_full_last_block(*model);
  EXPECT_EQ(model->masters().size(), 9u);
  auto params = train::trainable_parameters(*model);
  ASSERT_EQ(params.size(), 9u);
  for (auto& [n, t] : params) {
    EXPECT_EQ(t.dtype(), DType::f32) << n;
    EXPECT_TRUE(ag::requires_grad(t)) << n;
    const Tensor& w = model->weight(n);
    EXPECT_EQ(w.dtype(), DType::bf16) << n;
    EXPECT_FALSE(ag::requires_grad(w)) << n;
    EXPECT_EQ(t.to_f32_vector(), w.to_f32_vector()) << n;
  }
  // A change far below bf16's resolution survives in the master and in the file.
  const std::string name = "model.layers.1.mlp.down_proj.weight";
  Tensor master = model->masters().at(name);
  std::vector<float> before = master.to_f32_vector(), moved = before;
  for (float& v : moved) v += 1e-6f;
  ops::copy_into(master, Tensor::from_f32(moved, master.shape()));
  std::string dir = (fs::temp_directory_path() / "lmtune_adapter_master").string();
  fs::remove_all(dir);
  train::save_adapter_config(dir, cfg);
  train::save_adapter_weights(dir + "/adapters.safetensors", *model);
  SafetensorsFile f(dir + "/adapters.safetensors");
  EXPECT_EQ(f.get(name).dtype(), DType::f32);
  EXPECT_EQ(f.get(name).to_f32_vector(), moved);
  auto again = bf16_model();
  train::load_adapters(*again, dir);
  EXPECT_EQ(again->masters().at(name).to_f32_vector(), moved);
  // Baked for inference: the weight is the master rounded to bf16, and no master is kept.
  again->bake_masters();
  EXPECT_TRUE(again->masters().empty());
  EXPECT_TRUE(train::trainable_parameters(*again).empty());
  EXPECT_EQ(again->weight(name).dtype(), DType::bf16);
  EXPECT_EQ(again->weight(name).to_f32_vector(), ops::cast(ops::cast(master, DType::bf16), DType::f32).to_f32_vector());
  // Re-attaching bakes the trained masters in before making fresh ones.
  train::attach_adapters(*model, cfg);
  EXPECT_EQ(model->masters().at(name).to_f32_vector(),
            ops::cast(ops::cast(master, DType::bf16), DType::f32).to_f32_vector());
}

// On CUDA the forward runs in bf16: Adam steps far below bf16's resolution must still move the
// f32 masters (gradients, state and updates f32), while the bf16 weights the forward reads are
// the masters' casts (and, rounded, mostly the original weights).
TEST(Adapters, FullOnBf16CudaTrainsMasters) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  auto model = load_model(golden_model("llama_gqa"), Device::cuda, DType::bf16);
  attach_full_last_block(*model);
  auto params = train::trainable_parameters(*model);
  ASSERT_EQ(params.size(), 9u);
  std::map<std::string, std::vector<float>> start;
  for (auto& [n, t] : params) start[n] = host(t);
  auto opt = train::make_optimizer("adam", nlohmann::json::object(), train::constant_schedule(3e-7));
  Tensor ids = ids_batch();
  Tensor targets = Tensor::from_i32({5, 9, 2, 7, 3, -1, 4, 6, 0, 11, 12, -1}, {2, 6});
  for (int step = 0; step < 4; ++step) {
    Tensor loss = model->loss(ids, targets);
    EXPECT_TRUE(std::isfinite(ops::item(loss)));
    ag::backward(loss);
    for (auto& [n, t] : params) {
      ASSERT_TRUE(ag::grad(t).defined()) << n;
      EXPECT_EQ(ag::grad(t).dtype(), DType::f32) << n;
    }
    opt->update(params);
    for (auto& [n, t] : params) ag::zero_grad(t);
  }
  for (auto& [n, t] : opt->state()) EXPECT_EQ(t.dtype(), DType::f32) << n;
  EXPECT_EQ(opt->state().size(), 18u);
  {
    ag::NoGradGuard ng;
    model->loss(ids, targets);
  }  // the forward casts the masters into the weights
  size_t n_all = 0, moved = 0, bf16_same = 0;
  for (auto& [n, t] : params) {
    std::vector<float> now = host(t), w = host(model->weight(n)), s0 = start[n];
    std::vector<float> cast = host(ops::cast(t, DType::bf16));
    EXPECT_EQ(w, cast) << n;
    for (size_t i = 0; i < now.size(); ++i, ++n_all) {
      moved += now[i] != s0[i];
      bf16_same += cast[i] == s0[i];
    }
  }
  std::printf(
      "bf16 full fine-tuning on CUDA, 4 Adam steps at lr 3e-7: %zu/%zu f32 masters moved, %zu/%zu weights "
      "unchanged in bf16\n",
      moved, n_all, bf16_same, n_all);
  EXPECT_GT(moved, n_all * 9 / 10);
  EXPECT_GT(bf16_same, n_all * 9 / 10);
}

TEST(Adapters, RoundTripAndMlxCheckFiles) {
  const char* out_env = std::getenv("LMTUNE_ADAPTER_OUT");
  std::string out = out_env && *out_env ? out_env : (fs::temp_directory_path() / "lmtune_adapter_rt").string();
  for (const char* c :
       {"llama_gqa", "qwen2_bias_tied", "gemma_mqa", "gemma3_sliding", "smollm3_nope", "granite_multipliers",
        "olmo2_postnorm", "phi3_fused", "gemma2_wide_window", "mixtral_top2", "qwen3_moe_norm"}) {
    for (const char* type : {"lora", "dora", "full"}) {
      auto model = load_model(golden_model(c), Device::cpu, DType::f32);
      train::AdapterConfig cfg;
      cfg.fine_tune_type = type;
      cfg.num_layers = 1;
      cfg.lora.rank = 3;
      cfg.lora.scale = 4.f;
      // A mixture: LoRA on mlx-lm's default set (router and stacked experts too); DoRA's keys written
      // out as `lmtune lora` writes them (mlx-lm's default set would put DoRA on the experts).
      if (model->config().n_expert > 0 && std::string(type) == "dora")
        cfg.lora.keys = train::training_lora_keys(*model, type);
      train::attach_adapters(*model, cfg, 11);
      randomize(*model, 77);
      std::string dir = out + "/" + c + "_" + type;
      fs::remove_all(dir);
      train::save_adapter_config(dir, cfg, {{"model", golden_model(c)}, {"optimizer", "adam"}});
      train::save_adapter_weights(dir + "/adapters.safetensors", *model);
      Tensor logits = model->forward(ids_batch());
      save_safetensors(dir + "/lmtune_logits.safetensors", {{"ids", ids_batch()}, {"logits", logits}},
                       {{"model_dir", golden_model(c)}});

      // Loaded into a fresh model: same tensors, same logits.
      auto again = load_model(golden_model(c), Device::cpu, DType::f32);
      train::AdapterConfig back = train::load_adapters(*again, dir);
      EXPECT_EQ(back.fine_tune_type, type);
      EXPECT_EQ(back.num_layers, 1);
      auto p1 = train::trainable_parameters(*model), p2 = train::trainable_parameters(*again);
      ASSERT_EQ(p1.size(), p2.size());
      for (size_t i = 0; i < p1.size(); ++i) {
        EXPECT_EQ(p1[i].first, p2[i].first);
        EXPECT_EQ(p1[i].second.to_f32_vector(), p2[i].second.to_f32_vector()) << p1[i].first;
      }
      expect_close(again->forward(ids_batch()).to_f32_vector(), logits.to_f32_vector(), 0, 0,
                   std::string(c) + " " + type + " logits after reload");

      // The stored file is f32 with mlx-lm's names, and the config has mlx-lm's fields.
      SafetensorsFile f(dir + "/adapters.safetensors");
      for (const std::string& n : f.names()) EXPECT_EQ(f.get(n).dtype(), DType::f32) << n;
      std::ifstream js(dir + "/adapter_config.json");
      nlohmann::json j = nlohmann::json::parse(js);
      EXPECT_EQ(j["optimizer"], "adam");
      if (std::string(type) == "full")
        EXPECT_TRUE(j["lora_parameters"].is_null());
      else
        EXPECT_EQ(j["lora_parameters"]["rank"], 3);
    }
  }
}

// A mixture's keys: mlx-lm's default set names the router and the stacked experts; `lmtune lora`
// leaves the router out unless asked; DoRA on the experts is refused (mlx-lm has no layout for it).
TEST(Adapters, MixtureKeys) {
  auto model = load_model(golden_model("mixtral_top2"), Device::cpu, DType::f32);
  const std::vector<std::string> attn = {"self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj",
                                         "self_attn.v_proj"};
  std::vector<std::string> all = attn;
  for (const char* k : {"block_sparse_moe.gate", "block_sparse_moe.switch_mlp.down_proj",
                        "block_sparse_moe.switch_mlp.gate_proj", "block_sparse_moe.switch_mlp.up_proj"})
    all.push_back(k);
  std::sort(all.begin(), all.end());
  EXPECT_EQ(train::default_lora_keys(*model), all);
  std::vector<std::string> no_router = all;
  no_router.erase(std::find(no_router.begin(), no_router.end(), "block_sparse_moe.gate"));
  EXPECT_EQ(train::training_lora_keys(*model, "lora"), no_router);
  EXPECT_EQ(train::training_lora_keys(*model, "dora"), attn);
  EXPECT_EQ(train::block_linear_keys(*model), attn);
  auto message = [](auto fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  train::AdapterConfig cfg;
  cfg.num_layers = 1;
  cfg.lora.keys = {"block_sparse_moe.switch_mlp.up_proj"};
  train::attach_adapters(*model, cfg);
  const int64_t E = model->config().n_expert;
  EXPECT_EQ(int64_t(model->adapters().size()), E);  // one per expert of the last block
  EXPECT_TRUE(model->adapters().count("model.layers.1.block_sparse_moe.experts.0.w3"));
  cfg.fine_tune_type = "dora";
  EXPECT_NE(message([&] { train::attach_adapters(*model, cfg); }).find("DoRA on a mixture's experts"),
            std::string::npos);
  // A stacked adapter tensor with the wrong expert count is refused naming it.
  cfg.fine_tune_type = "lora";
  train::attach_adapters(*model, cfg);
  const std::string bad = (fs::temp_directory_path() / "lmtune_moe_bad_adapter.safetensors").string();
  save_safetensors(bad, {{"model.layers.1.block_sparse_moe.switch_mlp.up_proj.lora_a",
                          Tensor::from_f32(std::vector<float>(size_t((E - 1) * 8 * model->config().n_embd)),
                                           {E - 1, 8, model->config().n_embd})}});
  const std::string msg = message([&] { train::load_adapter_weights(*model, bad); });
  EXPECT_NE(msg.find("switch_mlp.up_proj.lora_a"), std::string::npos) << msg;
  EXPECT_NE(msg.find("stacked expert tensor"), std::string::npos) << msg;
  cfg.lora.keys = {"block_sparse_moe.experts.0.w3"};  // the per-expert name is not a key
  EXPECT_NE(message([&] { train::attach_adapters(*model, cfg); }).find("'block_sparse_moe.experts.0.w3'"),
            std::string::npos);
}

TEST(Adapters, LoadRefusesForeignTensorsAndShapes) {
  std::string dir = (fs::temp_directory_path() / "lmtune_adapter_bad").string();
  fs::remove_all(dir);
  auto model = load_model(golden_model("llama_gqa"), Device::cpu, DType::f32);
  train::AdapterConfig cfg;
  cfg.num_layers = 1;
  cfg.lora.rank = 2;
  train::save_adapter_config(dir, cfg);
  save_safetensors(dir + "/adapters.safetensors",
                   {{"model.layers.1.self_attn.q_proj.lora_a", Tensor::zeros_cpu({48, 3})}});
  EXPECT_THROW(train::load_adapters(*model, dir), Error);  // rank 3 in a rank-2 config
  save_safetensors(dir + "/adapters.safetensors",
                   {{"model.layers.1.self_attn.q_proj.weight", Tensor::zeros_cpu({48, 48})}});
  EXPECT_THROW(train::load_adapters(*model, dir), Error);  // a base weight is not an adapter parameter
  EXPECT_THROW(train::load_adapters(*model, dir + "/missing"), Error);
}

}  // namespace

// q, k and v (gate and up) read one input: forward(AdapterInput&) shares its f32 cast among
// them and must give what forward(x) gives, values and gradients, for LoRA, DoRA and dropout.
TEST(Adapters, SharedInputCastEqualsSeparateCasts) {
  Tensor w = ops::randn({6, 10}, 31, 0.3f), bias = ops::randn({6}, 32);
  Tensor x0 = ops::randn({2, 3, 10}, 33), dy = ops::randn({2, 3, 6}, 34);
  for (nn::AdapterKind kind : {nn::AdapterKind::lora, nn::AdapterKind::dora})
    for (float dropout : {0.f, 0.25f}) {
      SCOPED_TRACE(std::string(kind == nn::AdapterKind::dora ? "dora" : "lora") + " dropout " +
                   std::to_string(dropout));
      std::vector<std::vector<float>> got[2];
      for (int shared = 0; shared < 2; ++shared) {
        auto seed = std::make_shared<uint64_t>(77);
        nn::LoraAdapter a1 = nn::make_lora_adapter(w, kind, 4, 2.f, dropout, 5);
        nn::LoraAdapter a2 = nn::make_lora_adapter(w, kind, 4, 2.f, dropout, 6);
        for (nn::LoraAdapter* a : {&a1, &a2}) {
          Tensor dst = a->lora_b;
          ops::copy_into(dst, ops::randn(a->lora_b.shape(), 40 + uint64_t(a == &a2), 0.2f));
          a->dropout_seed = seed;
        }
        nn::Linear l1{w, bias, &a1}, l2{w, {}, &a2};
        Tensor x = ag::param(x0);
        Tensor y;
        if (shared) {
          nn::AdapterInput in(x);
          y = ag::add(l1.forward(in), l2.forward(in));
        } else {
          y = ag::add(l1.forward(x), l2.forward(x));
        }
        ag::backward(y, dy);
        got[shared] = {y.to_f32_vector(), ag::grad(x).to_f32_vector(), ag::grad(a1.lora_a).to_f32_vector(),
                       ag::grad(a1.lora_b).to_f32_vector(), ag::grad(a2.lora_a).to_f32_vector()};
      }
      for (size_t i = 0; i < got[0].size(); ++i) EXPECT_EQ(got[1][i], got[0][i]) << "result " << i;
    }
  nn::LoraAdapter a = nn::make_lora_adapter(w, nn::AdapterKind::lora, 4, 2.f, 0.f, 5);
  Tensor other = ops::randn({2, 3, 10}, 35);
  nn::AdapterInput in(other);
  nn::Linear base;
  base.weight = w, base.bias = bias;
  EXPECT_THROW(nn::lora_forward(x0, base, a, &in), Error);
}

// DoRA's denominator as the forward computes it (||W||^2 kept from creation, W A through the base
// product, A^T A for the adapter's own term; no (out, in) temporary) equals the reference that forms
// W + scale * B^T A^T, on a dense and on a 4-bit quantized base, with a trained-looking B.
TEST(Adapters, DoraNormsWithoutTheFullSumEqualTheReference) {
  Tensor w = ops::randn({37, 64}, 51, 0.3f);
  nn::LoraAdapter a = nn::make_lora_adapter(w, nn::AdapterKind::dora, 8, 2.5f, 0.f, 52);
  Tensor b = a.lora_b;
  ops::copy_into(b, ops::randn(a.lora_b.shape(), 53, 0.2f));
  nn::Linear dense{w, {}, &a};
  std::vector<float> ref = nn::dora_row_norms(w, a.lora_a, a.lora_b, a.scale).to_f32_vector();
  std::vector<float> got = nn::dora_row_norms(dense, a).to_f32_vector();
  ASSERT_EQ(got.size(), ref.size());
  // Both in f32; the expansion sums the three terms in another order: a few ulps of ~2-4.
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(got[i], ref[i], 2e-5f * ref[i]) << "row " << i;

  // Without w_row_sq (an adapter made elsewhere) the base's squares are taken then: the same norms.
  nn::LoraAdapter bare = a;
  bare.w_row_sq = Tensor();
  std::vector<float> again = nn::dora_row_norms(nn::Linear{w, {}, &bare}, bare).to_f32_vector();
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(again[i], ref[i], 2e-5f * ref[i]) << "row " << i;

  // A quantized base: the reference is formed from its dequantized weight.
  ops::AffineQuantized q = ops::quantize_affine(w, 4, 32);
  nn::Linear packed;
  packed.weight = q.wq, packed.scales = q.scales, packed.biases = q.biases;
  packed.format = QuantFormat{QuantMode::affine, 4, 32};
  packed.dense_dtype = DType::f32;
  Tensor wd = packed.dense_weight();
  nn::LoraAdapter aq = nn::make_lora_adapter(wd, nn::AdapterKind::dora, 8, 2.5f, 0.f, 52);
  Tensor bq = aq.lora_b;
  ops::copy_into(bq, ops::randn(aq.lora_b.shape(), 53, 0.2f));
  packed.adapter = &aq;
  ref = nn::dora_row_norms(wd, aq.lora_a, aq.lora_b, aq.scale).to_f32_vector();
  got = nn::dora_row_norms(packed, aq).to_f32_vector();
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(got[i], ref[i], 2e-5f * ref[i]) << "quantized row " << i;
}

// LMTUNE_LORA_16BIT's path on a GPU: ag::lora_add with bf16 x and base output (the adapter's
// products in bf16 with f32 accumulation, dA and dB written in f32 by cuBLASLt) against the f32 CPU
// reference on the same bf16-rounded inputs; and nn::lora_forward with the switch on against the
// default (f32 adapter path) on the GPU. Tolerance: bf16 rounds x A, the sum and dy B^T once each
// (2^-9 relative), so 2% of the largest element.
TEST(Adapters, LoraAdd16BitOnCudaAgreesWithF32) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  auto bf = [](const Tensor& t) { return ops::cast(ops::cast(t, DType::bf16), DType::f32); };  // rounded
  Tensor x0 = bf(ops::randn({2, 33, 96}, 81)), w0 = bf(ops::randn({80, 96}, 82, 0.1f));
  Tensor a0 = ops::randn({96, 8}, 83, 0.1f), b0 = ops::randn({8, 80}, 84, 0.1f), dy0 = bf(ops::randn({2, 33, 80}, 85));
  auto run = [&](Device dev, DType dt) {
    Tensor x = ag::param(ops::to(x0, dev, dt)), a = ag::param(ops::to(a0, dev)), b = ag::param(ops::to(b0, dev));
    Tensor y = ag::lora_add(ag::linear(x, ops::to(w0, dev, dt)), x, a, b, 2.5f);
    ag::backward(y, ops::to(dy0, dev, dt));
    EXPECT_EQ(ag::grad(a).dtype(), DType::f32);
    EXPECT_EQ(ag::grad(b).dtype(), DType::f32);
    return std::vector<std::vector<float>>{host(y), host(ag::grad(x)), host(ag::grad(a)), host(ag::grad(b))};
  };
  auto ref = run(Device::cpu, DType::f32), got = run(Device::cuda, DType::bf16);
  const char* names[] = {"y", "dx", "da", "db"};
  for (size_t i = 0; i < ref.size(); ++i) {
    float mx = 0.f;
    for (float v : ref[i]) mx = std::max(mx, std::fabs(v));
    expect_close(got[i], ref[i], 2e-2 * mx, 2e-2, names[i]);
  }

  // The switch: nn::lora_forward on a bf16 GPU layer, the 16-bit path against the f32 one.
  Tensor w = ops::to(w0, Device::cuda, DType::bf16);
  nn::LoraAdapter ad = nn::make_lora_adapter(w, nn::AdapterKind::lora, 8, 2.5f, 0.f, 86);
  Tensor bt = ad.lora_b;
  ops::copy_into(bt, ops::to(b0, Device::cuda));
  std::vector<std::vector<float>> out[2];
  for (int sixteen = 0; sixteen < 2; ++sixteen) {
    RuntimeConfig rc = runtime_config();
    rc.lora_16bit = sixteen == 1;
    ScopedRuntimeConfig scoped(rc);
    Tensor x = ag::param(ops::to(x0, Device::cuda, DType::bf16));
    nn::Linear l{w, {}, &ad};
    Tensor y = l.forward(x);
    ag::backward(y, ops::to(dy0, Device::cuda, DType::bf16));
    out[sixteen] = {host(y), host(ag::grad(x)), host(ag::grad(ad.lora_a)), host(ag::grad(ad.lora_b))};
    ag::zero_grad(ad.lora_a);
    ag::zero_grad(ad.lora_b);
  }
  for (size_t i = 0; i < out[0].size(); ++i) {
    float mx = 0.f;
    for (float v : out[0][i]) mx = std::max(mx, std::fabs(v));
    expect_close(out[1][i], out[0][i], 2e-2 * mx, 2e-2, names[i]);
  }
}
