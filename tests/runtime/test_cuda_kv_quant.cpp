// --kv-bits on CUDA against the CPU: the quantize kernel (backend/cuda/quantize.cu) gives the CPU's
// (quant/'s, MLX's) codes, scales and biases bit for bit; a quantized DenseKVCache on the device
// returns the CPU cache's views bit for bit (plain and rotating, f32 and bf16); a model decoding
// with a quantized cache gives the CPU's logits to f32 rounding and is never captured in a CUDA
// graph. Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>

#include "backend/backend.h"
#include "core/error.h"
#include "models/model.h"
#include "ops/ops.h"
#include "runtime/decode_graph.h"
#include "runtime/kv_cache.h"
#include "same_bits.h"
#include "tolerance.h"

using namespace lmtune;

namespace {

ModelConfig config(int64_t head_dim) {
  ModelConfig c;
  c.model_type = "llama";
  c.n_vocab = 301;
  c.n_head = 4;
  c.n_kv_head = 2;
  c.head_dim = head_dim;
  c.n_embd = 4 * head_dim;
  c.n_ff = 3 * c.n_embd;
  c.n_layer = 2;
  c.rms_norm_eps = 1e-5;
  c.layer_window = {0, 0};
  return c;
}

std::unique_ptr<Model> random_model(const ModelConfig& cfg, Device dev) {
  auto m = create_model(cfg);
  std::map<std::string, Tensor> w;
  uint64_t s = 17;
  for (const TensorSpec& spec : m->tensor_specs()) {
    bool norm = spec.name.find("norm") != std::string::npos;
    Tensor t = ops::randn(spec.shape, ++s, norm ? 0.1f : 1.f / std::sqrt(float(spec.shape.back())));
    if (norm) t = ops::add(t, ops::full(spec.shape, 1.f, DType::f32, Device::cpu));
    w[spec.name] = ops::to(t, dev);
  }
  m->set_weights(std::move(w));
  return m;
}

}  // namespace

TEST(CudaKVQuant, QuantizeKernelMatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  for (DType dt : {DType::f32, DType::bf16, DType::f16})
    for (int bits : {2, 3, 4, 5, 6, 8})
      for (int group : {32, 64, 128})
        for (int64_t rows : {1, 7, 5000}) {  // 5000 x 2 groups: more than one grid-stride pass
          Tensor x = ops::cast(ops::randn({rows, 256}, uint64_t(bits * 977 + group + rows), 2.f), dt);
          ops::AffineQuantized c = ops::quantize_affine(x, bits, group);
          ops::AffineQuantized g = ops::quantize_affine(ops::to(x, Device::cuda), bits, group);
          const std::string what = std::string(dtype_name(dt)) + " bits " + std::to_string(bits) + " group " +
                                   std::to_string(group) + " rows " + std::to_string(rows);
          EXPECT_TRUE(same_bits(g.wq, c.wq, what + " codes"));
          EXPECT_TRUE(same_bits(g.scales, c.scales, what + " scales"));
          EXPECT_TRUE(same_bits(g.biases, c.biases, what + " biases"));
        }
}

TEST(CudaKVQuant, CacheMatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const ModelConfig c = config(128);
  for (DType dt : {DType::f32, DType::bf16})
    for (int64_t max_size : {0, 12}) {
      DenseKVCache cpu(c, Device::cpu, dt, 1, max_size, 4, 8), gpu(c, Device::cuda, dt, 1, max_size, 4, 8);
      cpu.set_quantization({4, 64, 6});
      gpu.set_quantization({4, 64, 6});
      uint64_t seed = 3;
      for (int64_t i = 0; i < 30;) {
        const int64_t T = i == 0 ? 4 : 1;
        for (int64_t l = 0; l < c.n_layer; ++l) {
          Tensor k = ops::cast(ops::randn({1, T, c.n_kv_head, c.head_dim}, ++seed), dt);
          Tensor v = ops::cast(ops::randn({1, T, c.n_kv_head, c.head_dim}, ++seed), dt);
          KVCache::View a = cpu.update(l, k, v), b = gpu.update(l, ops::to(k, Device::cuda), ops::to(v, Device::cuda));
          const std::string what =
              std::string(dtype_name(dt)) + " max_size " + std::to_string(max_size) + " offset " + std::to_string(i);
          EXPECT_TRUE(same_bits(b.k, a.k, what + " k"));
          EXPECT_TRUE(same_bits(b.v, a.v, what + " v"));
          EXPECT_EQ(b.q_offset, a.q_offset);
        }
        cpu.advance(T);
        gpu.advance(T);
        i += T;
      }
      EXPECT_TRUE(gpu.quantized());
      EXPECT_EQ(gpu.nbytes(), cpu.nbytes());
    }
}

TEST(CudaKVQuant, DecodeMatchesCpuWithoutGraph) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const ModelConfig c = config(64);
  auto mc = random_model(c, Device::cpu), mg = random_model(c, Device::cuda);
  DenseKVCache cc(c, Device::cpu, DType::f32), cg(c, Device::cuda, DType::f32);
  cc.set_quantization({8, 32, 0});
  cg.set_quantization({8, 32, 0});
  EXPECT_FALSE(DecodeGraph::usable(*mg, cg));
  std::vector<int32_t> ids = {5, 17, 200, 33, 9, 41, 150};
  auto logits = [](const Tensor& t) { return ops::to(t, Device::cpu, DType::f32).to_f32_vector(); };
  expect_close(logits(mg->forward(Tensor::from_i32(ids, {1, 7}), cg, true)),
               logits(mc->forward(Tensor::from_i32(ids, {1, 7}), cc, true)), 1e-3, 1e-3, "prefill");
  for (int32_t t : {7, 99, 250, 3, 12}) {
    std::vector<float> a = logits(mc->forward(Tensor::from_i32({t}, {1, 1}), cc, true));
    std::vector<float> b = logits(mg->forward(Tensor::from_i32({t}, {1, 1}), cg, true));
    // A key that CUDA's f32 products put on the other side of a rounding boundary takes the
    // neighbouring 8-bit code: a 1/255-of-the-range change of one element, hence the looser bound.
    expect_close(b, a, 2e-2, 2e-2, "decode " + std::to_string(t));
  }
  EXPECT_TRUE(cg.quantized());
}
