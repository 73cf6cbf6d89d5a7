// LoRA / DoRA gradients against Hugging Face transformers + peft (tests/ref/make_lora_golden.py):
// tiny models of each family, adapters on every linear layer of the last of 2 blocks loaded from
// the mlx-lm-layout folder the script wrote; loss and every adapter gradient, with all targets
// and with a masked prompt (the MoE cases' experts: against the script's own torch reference). CPU
// f32: norm-wise relative error <= 1e-4 per tensor.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <unordered_set>

#include "io/safetensors.h"
#include "models/checkpoint_layout.h"
#include "tolerance.h"
#include "train/adapters.h"

using namespace lmtune;

namespace {

std::vector<float> host(const Tensor& t) { return ops::to(t, Device::cpu, DType::f32).to_f32_vector(); }

// Recorded nodes reachable from root, by name.
std::map<std::string, int> count_nodes(const Tensor& root) {
  std::map<std::string, int> n;
  std::unordered_set<const AutogradMeta*> seen;
  std::vector<const AutogradMeta*> stack{root.ag().get()};
  while (!stack.empty()) {
    const AutogradMeta* m = stack.back();
    stack.pop_back();
    if (!m || !seen.insert(m).second || !m->grad_fn) continue;
    n[m->grad_fn->name]++;
    for (const auto& in : m->grad_fn->inputs) stack.push_back(in.get());
  }
  return n;
}

class LoraGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(LoraGolden, LossAndAdapterGradients) {
  const char* root = std::getenv("LMTUNE_LORA_GOLDEN_DIR");
  ASSERT_TRUE(root && *root) << "LMTUNE_LORA_GOLDEN_DIR is not set";
  std::string p = GetParam();
  std::string case_dir = std::string(root) + "/" + p.substr(0, p.rfind('/'));
  std::string adir = std::string(root) + "/" + p;
  ASSERT_TRUE(std::filesystem::exists(adir + "/golden.safetensors")) << "no reference at " << adir;
  SafetensorsFile ref(adir + "/golden.safetensors");
  auto model = load_model(case_dir, Device::cpu, DType::f32);
  train::AdapterConfig cfg = train::load_adapters(*model, adir);
  auto params = train::trainable_parameters(*model);
  // 7 adapted layers a block (4 where q/k/v and gate/up are fused: phi3), 2 or 3 tensors each.
  // (MoE blocks: the 4 attention layers, named by the config's keys; PEFT has no LoRA for transformers'
  // router and experts, which are not nn.Linear.)
  const bool four = p.rfind("phi3", 0) == 0 || p.rfind("mixtral", 0) == 0 || p.rfind("qwen3_moe", 0) == 0;
  // <case>/experts: LoRA on every expert's gate, up and down projection (a torch reference: peft has
  // none for transformers' stacked experts), its gradients stacked as mlx-lm's files keep them.
  const bool experts = p.size() > 8 && p.compare(p.size() - 8, 8, "/experts") == 0;
  const ModelConfig& mc = model->config();
  const size_t layers = experts ? size_t(3 * mc.n_expert) : four ? 4 : 7;
  ASSERT_EQ(params.size(), layers * (cfg.fine_tune_type == "dora" ? 3 : 2));
  Tensor ids = ref.get("ids");
  for (const char* t : {"all", "masked"}) {
    for (auto& [n, w] : params) ag::zero_grad(w);
    Tensor loss = model->loss(ids, ref.get(std::string("targets_") + t));
    if (std::string(t) == "all") {
      // Back-propagation stops at the lowest adapted layer: nothing is recorded for the embedding
      // or block 0 (one attention node: block 1's; none when only its experts are adapted).
      auto nodes = count_nodes(loss);
      EXPECT_EQ(nodes["embedding"], 0);
      EXPECT_EQ(nodes["attention"], experts ? 0 : 1);
    }
    ag::backward(loss);
    double e_loss = max_rel_error(host(loss), host(ref.get(std::string("loss_") + t)));
    EXPECT_LE(e_loss, 1e-4) << t << " loss " << ops::item(loss);
    double worst = 0;
    for (auto& [n, w] : params) {
      const Tensor& g = ag::grad(w);
      ASSERT_TRUE(g.defined()) << "no gradient reached " << n;
      std::vector<float> want;
      if (experts) {  // expert e's (in, r) / (r, out) against the file's (E, r, in) / (E, out, r) at e, transposed
        int64_t ex = 0;
        const size_t dot = n.rfind('.');
        const std::string stacked = stacked_expert_path(mc, n.substr(0, dot), &ex);
        ASSERT_FALSE(stacked.empty()) << n << " is no expert's";
        const std::string gname = std::string("grad_") + t + "." + stacked + n.substr(dot);
        ASSERT_TRUE(ref.contains(gname)) << gname;
        const Tensor r = ref.get(gname);
        ASSERT_TRUE(r.ndim() == 3 && r.dim(0) == mc.n_expert && r.dim(1) == g.dim(1) && r.dim(2) == g.dim(0)) << gname;
        const std::vector<float> all = host(r);
        const int64_t rows = r.dim(1), cols = r.dim(2);
        want.resize(size_t(rows * cols));
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t j = 0; j < cols; ++j) want[size_t(j * rows + i)] = all[size_t((ex * rows + i) * cols + j)];
      } else {
        const std::string gname = std::string("grad_") + t + "." + n;
        ASSERT_TRUE(ref.contains(gname)) << gname;
        ASSERT_EQ(g.shape(), ref.get(gname).shape()) << n;
        want = host(ref.get(gname));
      }
      double e = max_rel_error(host(g), want);
      EXPECT_LE(e, 1e-4) << t << " gradient of " << n;
      worst = std::max(worst, e);
    }
    std::printf("%s %s: loss rel err %.2e, worst adapter gradient rel err %.2e over %zu tensors\n", p.c_str(), t,
                e_loss, worst, params.size());
  }
}

INSTANTIATE_TEST_SUITE_P(Families, LoraGolden,
                         ::testing::Values("llama_gqa/lora", "llama_gqa/dora", "llama_tied_llama3rope_bias/lora",
                                           "llama_tied_llama3rope_bias/dora", "mistral_window/lora",
                                           "mistral_window/dora", "qwen2_bias_tied/lora", "qwen2_bias_tied/dora",
                                           "gemma_mqa/lora", "gemma_mqa/dora", "gemma3_sliding/lora",
                                           "gemma3_sliding/dora", "smollm3_nope/lora", "smollm3_nope/dora",
                                           "granite_multipliers/lora", "granite_multipliers/dora",
                                           "olmo2_postnorm/lora", "olmo2_postnorm/dora", "phi3_fused/lora",
                                           "phi3_fused/dora", "gemma2_softcaps/lora", "gemma2_softcaps/dora",
                                           "mixtral_top2/lora", "qwen3_moe_norm/dora", "mixtral_top2/experts",
                                           "qwen3_moe_norm/experts"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& c : s)
                             if (c == '/') c = '_';
                           return s;
                         });

}  // namespace
