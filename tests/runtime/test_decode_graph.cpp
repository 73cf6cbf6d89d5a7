// The recorded decode step (runtime/decode_graph.h) on CUDA against the eager cached forward on
// the same model: token by token over a prompt that fills most of the cache's first 256-entry
// chunk, so the step is recorded again when the cache grows. bf16 and f16 at head_dim 128 / 64
// take the fused attention in both paths, and there the logits must be bit for bit the same;
// f32 (head_dim 128 and 48) takes decode_attention.cu in the graph and the gemm path eagerly, so
// they agree to f32 rounding. (In bf16 the gemm path rounds P to bf16 before P V and the decode
// kernel does not, so there the two differ by bf16 rounding, not by a bug: that kernel is
// checked against the CPU in test_cuda_vs_cpu's AttentionAtRunTimeOffset instead.) Skips
// without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "backend/backend.h"
#include "core/runtime_config.h"
#include "models/model.h"
#include "ops/ops.h"
#include "runtime/decode_graph.h"
#include "runtime/generate.h"
#include "tolerance.h"

using namespace lmtune;

namespace {

struct GraphCase {
  DType dt;
  int64_t head_dim;
};

// quant_bits > 0: every projection quantized (affine, groups of 64) as a 4-bit checkpoint would
// load, so decode steps take the fused quantized GEMV.
std::unique_ptr<Model> random_model(const GraphCase& gc, int quant_bits = 0) {
  ModelConfig c;
  c.model_type = "llama";
  c.n_vocab = 301;
  c.n_head = 4;
  c.n_kv_head = 2;
  c.head_dim = gc.head_dim;
  c.n_embd = 4 * gc.head_dim;
  c.n_ff = 3 * c.n_embd;
  c.n_layer = 2;
  c.rms_norm_eps = 1e-5;
  c.layer_window = {0, 0};
  auto m = create_model(c);
  std::map<std::string, Tensor> w;
  std::map<std::string, LayerQuant> quantized;
  uint64_t seed = 100;
  for (const TensorSpec& spec : m->tensor_specs()) {
    bool norm = spec.name.find("norm") != std::string::npos;
    Tensor t = norm ? ops::full(spec.shape, 1.f, DType::f32, Device::cpu)
                    : ops::randn(spec.shape, ++seed, 1.f / std::sqrt(float(spec.shape.back())));
    const std::string suffix = "_proj.weight";
    if (quant_bits > 0 && spec.name.ends_with(suffix)) {
      const std::string layer = spec.name.substr(0, spec.name.size() - 7);  // without ".weight"
      ops::AffineQuantized q = ops::quantize_affine(ops::cast(t, gc.dt), quant_bits, 64);
      w[spec.name] = ops::to(q.wq, Device::cuda);
      w[layer + ".scales"] = ops::to(q.scales, Device::cuda);
      w[layer + ".biases"] = ops::to(q.biases, Device::cuda);
      quantized[layer] = LayerQuant{QuantMode::affine, quant_bits, 64};
      continue;
    }
    w[spec.name] = ops::to(t, Device::cuda, gc.dt);
  }
  m->set_quantized(std::move(quantized));
  m->set_weights(std::move(w));
  return m;
}

std::vector<float> host_logits(const Tensor& t) { return ops::to(t, Device::cpu, DType::f32).to_f32_vector(); }

// One prompt (token i is (i * mul + add) % 301) run into two caches of the same model: `eager` for the step
// token by token, `graphed` for the recorded step.
struct Prefilled {
  Prefilled(Model& model, DType dt, size_t n, int mul, int add)
      : eager(model.config(), Device::cuda, dt), graphed(model.config(), Device::cuda, dt) {
    std::vector<int32_t> prompt(n);
    for (size_t i = 0; i < n; ++i) prompt[i] = int32_t((i * mul + add) % 301);
    Tensor ids = Tensor::from_i32(prompt, {1, int64_t(n)});
    model.forward(ids, eager, true);
    model.forward(ids, graphed, true);
  }
  DenseKVCache eager, graphed;
};

// The eager cached forward of one token, its logits on the host.
std::vector<float> eager_step(Model& model, DenseKVCache& cache, int32_t token) {
  return host_logits(model.forward(Tensor::from_i32({token}, {1, 1}), cache, true));
}

// A launch counter and how far each eager step must move it.
struct Counted {
  int64_t (*count)();
  int64_t want;
};

// Six steps of the 4-bit model after a 20-token prompt, eagerly and recorded: each recorded step's logits equal the
// eager step's bit for bit, and every counter moved by its `want` during the eager step. The eager logits are
// appended to `logits`, a step each; `eager_offset` (if given) gets the eager cache's length at the end.
void six_steps_counted(Model& model, const std::string& what, const std::vector<Counted>& counted,
                       std::vector<std::vector<float>>& logits, int64_t* eager_offset = nullptr) {
  Prefilled c(model, DType::bf16, 20, 31, 7);
  DecodeGraph graph(model, c.graphed);
  for (int step = 0; step < 6; ++step) {
    const int32_t token = int32_t((step * 43 + 11) % 301);
    std::vector<int64_t> before;
    for (const Counted& k : counted) before.push_back(k.count());
    std::vector<float> eager_logits = eager_step(model, c.eager, token);
    for (size_t i = 0; i < counted.size(); ++i)
      EXPECT_EQ(counted[i].count() - before[i], counted[i].want) << what << ", step " << step << ", counter " << i;
    ASSERT_EQ(graph.step(token), eager_logits) << what << ", step " << step << ": graph";
    logits.push_back(eager_logits);
  }
  if (eager_offset) *eager_offset = c.eager.offset();
}

class DecodeGraphVsEager : public ::testing::TestWithParam<GraphCase> {};

TEST_P(DecodeGraphVsEager, SameLogitsAcrossRecordings) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const GraphCase gc = GetParam();
  auto model = random_model(gc);
  Prefilled c(*model, gc.dt, 240, 37, 11);
  DecodeGraph graph(*model, c.graphed);
  const bool exact = gc.dt != DType::f32 && (gc.head_dim == 64 || gc.head_dim == 128);
  for (int step = 0; step < 40; ++step) {  // positions 240..279: the cache grows past 256
    int32_t token = int32_t((step * 53 + 7) % 301);
    std::vector<float> want = eager_step(*model, c.eager, token);
    std::vector<float> got = graph.step(token);
    ASSERT_EQ(got.size(), want.size());
    if (exact)
      EXPECT_EQ(got, want) << "step " << step;
    else
      expect_close(got, want, 1e-4, 1e-4, "step " + std::to_string(step));
  }
  EXPECT_EQ(c.graphed.offset(), 280);
  EXPECT_EQ(graph.recordings(), 2) << "recorded at capacity 256 and again at 512";
}

INSTANTIATE_TEST_SUITE_P(Cuda, DecodeGraphVsEager,
                         ::testing::Values(GraphCase{DType::bf16, 128}, GraphCase{DType::f16, 64},
                                           GraphCase{DType::f32, 128}, GraphCase{DType::f32, 48}),
                         [](const ::testing::TestParamInfo<GraphCase>& i) {
                           return std::string(dtype_name(i.param.dt)) + "_d" + std::to_string(i.param.head_dim);
                         });

// A 4-bit model's recorded step (fused quantized GEMVs) against the eager step, which runs the same
// kernels one by one: the same logits bit for bit for each GEMV variant, with programmatic
// dependent launch off and on (variants 1 and 3 load their first weights before its wait).
TEST(DecodeGraphQuantized, SameLogitsAsEager) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  auto model = random_model({DType::bf16, 128}, 4);
  ASSERT_FALSE(model->quantized().empty());
  for (int run = 0; run < 22; ++run) {  // each of the 11 variants with and without PDL
    RuntimeConfig rc = runtime_config();
    rc.cuda_qgemv_variant = run % 11;
    rc.cuda_qgemv_stream = rc.cuda_qgemv_stream_normed = 0;  // the variant's own kernels
    rc.cuda_pdl = run >= 11;
    rc.group_gate_up = (run + run / 11) % 2 == 1;  // each variant both ways: once with PDL, once without
    ScopedRuntimeConfig scoped(rc);
    const std::string what = "GEMV variant " + std::to_string(run % 11) + (rc.cuda_pdl ? ", PDL" : ", no PDL") +
                             (rc.group_gate_up ? ", gate/up grouped" : "");
    Prefilled c(*model, DType::bf16, 30, 29, 3);
    DecodeGraph graph(*model, c.graphed);
    for (int step = 0; step < 12; ++step) {
      int32_t token = int32_t((step * 41 + 5) % 301);
      std::vector<float> want = eager_step(*model, c.eager, token);
      std::vector<float> got = graph.step(token);
      ASSERT_EQ(got, want) << what << ", step " << step;
    }
  }
}

// A 4-bit model's decode step with its rms_norms inside the q/k/v and gate/up products (RuntimeConfig::fused_norms, the
// CUDA-core variants 9 and 10) and its rope and cache append in the q/k/v products' epilogue (fused_rope: variant 9's
// kernel, which variant 10 also takes for it) against the step with both as kernels of their own: the same logits bit
// for bit, eagerly and recorded. The fused kernels must have run: a step's normed launches are two a layer with the
// norms fused (q/k/v and gate/up), else one with the rope (q/k/v); the rope's one a layer. Variant 7 has neither kernel
// and falls back to the plain ops.
TEST(DecodeGraphQuantized, FusedNormsAndRopeSameLogits) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  auto model = random_model({DType::bf16, 128}, 4);
  const int64_t layers = model->config().n_layer;
  for (int variant : {9, 10, 7}) {
    std::vector<std::vector<float>> logits[4];
    for (int mode = 0; mode < 4; ++mode) {  // bit 0: fused norms; bit 1: fused rope
      const bool norms = mode & 1, rope = mode & 2;
      RuntimeConfig rc = runtime_config();
      rc.cuda_qgemv_variant = variant;
      rc.cuda_qgemv_stream = rc.cuda_qgemv_stream_normed = 0;  // the variant's own kernels
      rc.fused_norms = norms;
      rc.fused_rope = rope;
      ScopedRuntimeConfig scoped(rc);
      const std::string what =
          "GEMV variant " + std::to_string(variant) + (norms ? ", fused norms" : "") + (rope ? ", fused rope" : "");
      const bool kernels = variant != 7;
      const int64_t want_normed = kernels ? (norms ? 2 : rope ? 1 : 0) * layers : 0;
      const int64_t want_rope = kernels && rope ? layers : 0;
      int64_t offset = 0;
      ASSERT_NO_FATAL_FAILURE(six_steps_counted(
          *model, what, {{cuda_qgemv_normed_launches, want_normed}, {cuda_qgemv_rope_launches, want_rope}},
          logits[mode], &offset));
      EXPECT_EQ(offset, 26) << what;
    }
    for (int mode = 1; mode < 4; ++mode)
      ASSERT_EQ(logits[mode], logits[0]) << "GEMV variant " << variant << ", mode " << mode << ": fused against plain";
  }
}

// A 4-bit model's decode step with each layer's o product, norm, gate/up and down as one launch (RuntimeConfig::
// cuda_decode_chain, qgemv_chain.cu), and with the next layer's q/k/v as its fourth phase (cuda_decode_chain_qkv),
// against the step without: the same logits bit for bit, eagerly and recorded, over several steps (a recorded graph
// replays the chain's grid barriers), with and without programmatic dependent launch in the recorded step (the
// launches' one overlap). The chain must have run, once a layer a step (with q/k/v in all but the last layer's).
TEST(DecodeGraphQuantized, DecodeChainSameLogits) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  auto model = random_model({DType::bf16, 128}, 4);
  const int64_t layers = model->config().n_layer;
  std::vector<std::vector<float>> logits[6];
  for (int mode = 0; mode < 6; ++mode) {  // 0, 1: the chain off, on; bit 1: PDL in the graph; 4, 5: the chain + q/k/v
    const bool chain = mode & 1 || mode >= 4, qkv = mode >= 4, pdl = mode & 2 || mode == 5;
    RuntimeConfig rc = runtime_config();
    rc.cuda_qgemv_variant = 9;
    rc.cuda_qgemv_stream = rc.cuda_qgemv_stream_normed = 0;  // the variant's own kernels
    rc.cuda_qgemv_simt_spread = true;
    rc.fused_epilogues = rc.fused_norms = rc.fused_rope = rc.cuda_gemv = true;
    rc.cuda_decode_chain = chain;
    rc.cuda_decode_chain_qkv = qkv;
    rc.cuda_pdl = pdl;
    ScopedRuntimeConfig scoped(rc);
    const std::string what = std::string(qkv     ? "decode chain + q/k/v"
                                         : chain ? "decode chain"
                                                 : "separate launches") +
                             (pdl ? ", PDL" : "");
    ASSERT_NO_FATAL_FAILURE(six_steps_counted(
        *model, what,
        {{cuda_decode_chain_launches, chain ? layers : 0}, {cuda_decode_chain_qkv_launches, qkv ? layers - 1 : 0}},
        logits[mode]));
  }
  for (int mode = 1; mode < 6; ++mode) ASSERT_EQ(logits[mode], logits[0]) << "mode " << mode << " against mode 0";
}

// A 4-bit model's decode step with o's and down's products (and their residual adds) through the streamed kernel
// (RuntimeConfig::cuda_qgemv_stream 1 and 2, qgemv_stream.cu), and with the normed launches (q/k/v with the rope,
// gate/up with swiglu) streamed too (cuda_qgemv_stream_normed), with and without programmatic dependent launch: the
// recorded step equals the eager one bit for bit, and both stay within 2^-6 of the largest logit of variant 9's own
// kernels (the streamed sums take each chunk's sum of x in another order, the streamed norm does not round the normed
// x, and variant 9 here has SPREAD: the hidden states differ by bf16 roundings, not by a wrong product, which would
// move the logits by their own size). The kernels must have run: two single products a layer a step, and two normed
// launches (one, q/k/v's, with cuda_qgemv_stream_normed 2).
TEST(DecodeGraphQuantized, StreamSameLogitsEagerAndRecorded) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  auto model = random_model({DType::bf16, 128}, 4);
  const int64_t layers = model->config().n_layer;
  constexpr int kModes = 8;
  std::vector<std::vector<float>> logits[kModes];
  // 0: variant 9's kernels; 1, 2: STREAM=1, 2; 3, 4: with PDL; 5, 6: normed (6 with PDL); 7: q/k/v's normed only
  for (int mode = 0; mode < kModes; ++mode) {
    const int stream = mode == 0 ? 0 : mode >= 5 ? 1 : 2 - mode % 2;
    const int64_t normed = mode == 7 ? 2 : mode >= 5 ? 1 : 0;
    RuntimeConfig rc = runtime_config();
    rc.cuda_qgemv_variant = 9;
    rc.fused_epilogues = rc.fused_norms = rc.fused_rope = rc.cuda_gemv = true;
    rc.cuda_qgemv_stream = stream;
    rc.cuda_qgemv_stream_normed = normed;
    rc.cuda_pdl = (mode >= 3 && mode <= 4) || mode == 6;
    ScopedRuntimeConfig scoped(rc);
    const std::string what =
        "stream " + std::to_string(stream) + ", normed " + std::to_string(normed) + (rc.cuda_pdl ? ", PDL" : "");
    const int64_t want_normed = normed == 1 ? 2 * layers : normed == 2 ? layers : 0;
    ASSERT_NO_FATAL_FAILURE(six_steps_counted(
        *model, what,
        {{cuda_qgemv_stream_launches, stream ? 2 * layers : 0}, {cuda_qgemv_stream_normed_launches, want_normed}},
        logits[mode]));
  }
  for (int mode = 1; mode < kModes; ++mode)
    for (size_t step = 0; step < logits[0].size(); ++step) {
      const std::vector<float>&want = logits[0][step], &got = logits[mode][step];
      ASSERT_EQ(got.size(), want.size());
      float peak = 0.f, worst = 0.f;
      for (size_t i = 0; i < want.size(); ++i) {
        peak = std::max(peak, std::fabs(want[i]));
        worst = std::max(worst, std::fabs(got[i] - want[i]));
      }
      EXPECT_GT(peak, 0.f);
      EXPECT_LE(worst, peak / 64) << "mode " << mode << ", step " << step << " against variant 9's kernels";
    }
}

// Greedy generation through Generator with graphs on and off (RuntimeConfig::cuda_graph) gives the
// same tokens, including past a capacity boundary.
TEST(DecodeGraphGenerate, SameTokensWithAndWithoutGraphs) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  auto model = random_model({DType::bf16, 128});
  std::vector<int32_t> prompt(200);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t((i * 13 + 5) % 301);
  std::vector<std::vector<int32_t>> out;
  for (bool graph : {true, false}) {
    RuntimeConfig rc = runtime_config();
    rc.cuda_graph = graph;
    ScopedRuntimeConfig scoped(rc);
    DenseKVCache cache(model->config(), Device::cuda, DType::bf16);
    Sampler sampler(SamplerOptions{}, 0);
    Generator gen(*model, cache, sampler);
    GenerationConfig cfg;
    cfg.max_tokens = 100;
    out.push_back(gen.generate(prompt, cfg).tokens);
  }
  EXPECT_EQ(out[0].size(), 100u);
  EXPECT_EQ(out[0], out[1]);
}

}  // namespace
