// quant/ against MLX itself, bit for bit (QuantVsMlx: tests/ref/quant_ref.py runs mx.quantize and
// mx.dequantize at test time for every mode x bits x group size on f32, bf16 and f16 weights), and
// the layout and errors by hand (Quant*: no reference needed).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "autograd/functions.h"
#include "core/error.h"
#include "core/fp_formats.h"
#include "io/safetensors.h"
#include "ops/ops.h"
#include "quant/quant.h"
#include "same_bits.h"

using namespace lmtune;
using namespace lmtune::quant;
using json = nlohmann::json;

namespace {

std::string ref_dir() {
  const char* d = std::getenv("LMTUNE_QUANT_REF_DIR");
  return d && *d ? d : "";
}

DType dtype_of(const std::string& s) { return parse_dtype(s); }

TEST(QuantVsMlx, QuantizeAndDequantizeBitExact) {
  std::ifstream f(ref_dir() + "/quant.json");
  ASSERT_TRUE(f.good()) << "no reference at " << ref_dir() << " (tests/ref/quant_ref.py makes it)";
  const json meta = json::parse(f);
  SafetensorsFile ref(ref_dir() + "/quant.safetensors");
  const auto weights = meta["weights"].get<std::vector<std::string>>();
  int n_quant = 0, n_deq = 0, per_mode[4] = {0, 0, 0, 0};
  for (const json& c : meta["cases"]) {
    const std::string name = c["name"], dt = c["dtype"];
    QuantParams p{parse_mode(c["mode"], "test"), c["bits"].get<int>(), c["group_size"].get<int>()};
    for (const std::string& wname : weights) {
      SCOPED_TRACE(name + " on " + wname);
      const std::string key = name + "." + wname;
      const QuantizedWeight q = quantize(ref.get("w." + dt + "." + wname), p);
      EXPECT_TRUE(same_bits(q.wq, ref.get(key + ".wq"), "", "MLX")) << "wq";
      EXPECT_TRUE(same_bits(q.scales, ref.get(key + ".scales"), "", "MLX")) << "scales";
      if (p.mode == Mode::affine) {
        EXPECT_TRUE(same_bits(q.biases, ref.get(key + ".biases"), "", "MLX")) << "biases";
      } else {
        EXPECT_FALSE(q.biases.defined());
      }
      ++n_quant;
      ++per_mode[int(p.mode)];
      // Dequantize MLX's own tensors, so that a quantize bug cannot hide a dequantize one.
      QuantizedWeight mq{ref.get(key + ".wq"), ref.get(key + ".scales"),
                         p.mode == Mode::affine ? ref.get(key + ".biases") : Tensor(), p};
      for (const char* odt : {"f32", "bf16", "f16"}) {
        EXPECT_TRUE(same_bits(dequantize(mq, dtype_of(odt)), ref.get(key + ".deq." + std::string(odt)), "", "MLX"))
            << "dequantize to " << odt;
        // And the op every quantized layer runs (the CPU backend's kernels), against MLX directly.
        EXPECT_TRUE(same_bits(ops::dequantize(mq.wq, mq.scales, mq.biases, p, dtype_of(odt), "layer"),
                              ref.get(key + ".deq." + std::string(odt)), "", "MLX"))
            << "ops::dequantize to " << odt;
        ++n_deq;
      }
      // mx.dequantize's default dtype: the scales' for affine, bf16 for the fp modes.
      EXPECT_EQ(c["default_deq"].get<std::string>(), p.mode == Mode::affine ? dt : "bf16");
    }
  }
  EXPECT_EQ(meta["cases"].size(), 63u);
  std::printf("MLX %s: %d quantize cases (affine %d, mxfp4 %d, nvfp4 %d, mxfp8 %d) and %d dequantize cases\n",
              meta["mlx"].get<std::string>().c_str(), n_quant, per_mode[0], per_mode[1], per_mode[2], per_mode[3],
              n_deq);
}

// A weight (rows, cols) of f32 values.
Tensor f32_weight(const std::vector<float>& v, int64_t rows) {
  return Tensor::from_f32(v, {rows, int64_t(v.size()) / rows});
}

TEST(QuantLayout, FourBitsLowNibbleFirst) {
  // w = 0..15 twice: max 15 is the edge, scale -1, bias 15, so code = 15 - w.
  std::vector<float> v(32);
  for (int i = 0; i < 32; ++i) v[i] = float(i % 16);
  const QuantizedWeight q = quantize(f32_weight(v, 1), {Mode::affine, 4, 32});
  const uint32_t* w = q.wq.data<uint32_t>();
  EXPECT_EQ(w[0], 0x89abcdefu);  // element 0 (code 15) in bits 0-3
  EXPECT_EQ(w[1], 0x01234567u);
  EXPECT_EQ(q.scales.data<float>()[0], -1.0f);
  EXPECT_EQ(q.biases.data<float>()[0], 15.0f);
}

TEST(QuantLayout, ThreeBitsStraddleWords) {
  // code = 7 - w; 32 codes of 3 bits fill 3 words as one LSB-first bitstream.
  std::vector<float> v(32);
  for (int i = 0; i < 32; ++i) v[i] = float(i % 8);
  const QuantizedWeight q = quantize(f32_weight(v, 1), {Mode::affine, 3, 32});
  ASSERT_EQ(q.wq.shape(), (Shape{1, 3}));
  uint32_t want[3] = {0, 0, 0};
  for (int k = 0; k < 32; ++k) {
    const uint64_t code = uint64_t(7 - k % 8), bit = uint64_t(k) * 3;
    want[bit / 32] |= uint32_t(code << (bit % 32));
    if (bit % 32 + 3 > 32) want[bit / 32 + 1] |= uint32_t(code >> (32 - bit % 32));
  }
  const uint32_t* w = q.wq.data<uint32_t>();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(w[i], want[i]) << "word " << i;
  // Code 10 (w = 2, code 5 = 0b101) straddles: bits 30-31 of word 0 hold 0b01, bit 0 of word 1 holds 1.
  EXPECT_EQ(w[0] >> 30, 0b01u);
  EXPECT_EQ(w[1] & 1u, 1u);
  const std::vector<float> back = dequantize(q).to_f32_vector();
  for (int i = 0; i < 32; ++i) EXPECT_EQ(back[i], v[i]) << i;
}

TEST(QuantLayout, RoundTripEveryAffineWidthOnItsGrid) {
  // Values on a grid of step 0.25 whose every group spans all 2^bits levels (its first two elements
  // are the ends) come back exactly: scale -0.25, bias the group's max.
  for (int bits : {2, 3, 4, 5, 6, 8})
    for (int gs : {32, 64, 128}) {
      const int levels = 1 << bits;
      std::vector<float> v(3 * 128);
      for (size_t i = 0; i < v.size(); ++i) {
        const size_t j = i % size_t(gs);
        const int k = j == 0 ? 0 : j == 1 ? levels - 1 : int(i * 7 % size_t(levels));
        v[i] = float(k) * 0.25f - 1.0f;
      }
      const QuantizedWeight q = quantize(f32_weight(v, 3), {Mode::affine, bits, gs});
      EXPECT_EQ(dequantize(q).to_f32_vector(), v) << "bits " << bits << " group " << gs;
    }
}

TEST(QuantFormats, E4m3AndE2m1) {
  EXPECT_EQ(f32_to_e4m3(448.0f), 0x7e);
  EXPECT_EQ(f32_to_e4m3(1e9f), 0x7e);
  EXPECT_EQ(f32_to_e4m3(-448.0f), 0xfe);
  EXPECT_EQ(f32_to_e4m3(1.0f), 0x38);
  EXPECT_EQ(f32_to_e4m3(1.0625f), 0x38);  // halfway between 1 and 1.125: ties to even
  EXPECT_EQ(f32_to_e4m3(1.1875f), 0x3a);
  EXPECT_EQ(f32_to_e4m3(0.001953125f), 0x01);  // 2^-9, the smallest subnormal
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(e4m3_to_f32(uint8_t(c))));
      continue;
    }
    EXPECT_EQ(f32_to_e4m3(e4m3_to_f32(uint8_t(c))), c) << c;  // decode, encode: the same code
  }
  EXPECT_EQ(e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(e8m0_to_f32(127), 1.0f);
  EXPECT_EQ(e8m0_to_f32(0), std::ldexp(1.0f, -127));
  EXPECT_EQ(kE2m1Values[7], 6.0f);
}

TEST(QuantParamsTest, ModesAndDefaults) {
  EXPECT_EQ(parse_mode("nvfp4", "x"), Mode::nvfp4);
  EXPECT_STREQ(mode_name(Mode::mxfp8), "mxfp8");
  EXPECT_EQ(default_params(Mode::affine).group_size, 64);
  EXPECT_EQ(default_params(Mode::nvfp4).group_size, 16);
  EXPECT_EQ(default_params(Mode::mxfp8).bits, 8);
  for (Mode m : {Mode::affine, Mode::mxfp4, Mode::nvfp4, Mode::mxfp8})
    EXPECT_NO_THROW(check_params(default_params(m), 4096, "x"));
}

// The message of the lmtune::Error that f throws ("" when it throws none).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A valid 4-bit affine bf16 weight (5, 128) and one mxfp4 weight of the same shape.
QuantizedWeight affine_weight() {
  std::vector<float> v(5 * 128);
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(float(i));
  return quantize(f32_weight(v, 5), {Mode::affine, 4, 64});
}

TEST(QuantValidate, AcceptsWhatQuantizeMakes) {
  EXPECT_NO_THROW(validate(affine_weight(), 128, "layer"));
  std::vector<float> v(5 * 128, 0.5f);
  EXPECT_NO_THROW(validate(quantize(f32_weight(v, 5), default_params(Mode::mxfp4)), 128, "layer"));
}

TEST(QuantValidate, ErrorsNameTheLayerAndTensor) {
  const std::string layer = "model.layers.3.mlp.down_proj";
  {  // a truncated packed tensor: 15 words a row instead of 16
    QuantizedWeight q = affine_weight();
    q.wq = Tensor::zeros_cpu({5, 15}, DType::u32);
    const std::string e = error_of([&] { validate(q, 128, layer); });
    EXPECT_NE(e.find(layer + ".weight"), std::string::npos) << e;
    EXPECT_NE(e.find("(5, 16)"), std::string::npos) << e;
  }
  {  // scales of the wrong shape
    QuantizedWeight q = affine_weight();
    q.scales = Tensor::zeros_cpu({5, 3});
    const std::string e = error_of([&] { validate(q, 128, layer); });
    EXPECT_NE(e.find(layer + ".scales"), std::string::npos) << e;
    EXPECT_NE(e.find("(5, 2)"), std::string::npos) << e;
  }
  {  // biases missing, of another dtype, present where the mode has none
    QuantizedWeight q = affine_weight();
    q.biases = Tensor();
    EXPECT_NE(error_of([&] { validate(q, 128, layer); }).find(layer + ".biases is missing"), std::string::npos);
    q = affine_weight();
    q.biases = Tensor::zeros_cpu({5, 2}, DType::bf16);
    EXPECT_NE(error_of([&] { validate(q, 128, layer); }).find(layer + ".biases"), std::string::npos);
    q = affine_weight();
    q.params = default_params(Mode::mxfp4);
    q.wq = Tensor::zeros_cpu({5, 16}, DType::u32);
    q.scales = Tensor::zeros_cpu({5, 4}, DType::u8);
    EXPECT_NE(error_of([&] { validate(q, 128, layer); }).find("no biases"), std::string::npos);
  }
  {  // a float packed weight, fp scales that are not u8
    QuantizedWeight q = affine_weight();
    q.wq = Tensor::zeros_cpu({5, 16});
    EXPECT_NE(error_of([&] { validate(q, 128, layer); }).find("must be u32"), std::string::npos);
    q = quantize(f32_weight(std::vector<float>(5 * 128, 1.0f), 5), default_params(Mode::nvfp4));
    q.scales = Tensor::zeros_cpu({5, 8});
    EXPECT_NE(error_of([&] { validate(q, 128, layer); }).find("must be u8"), std::string::npos);
  }
  {  // bits 7, a group size that does not divide the input dimension, a wrong fp combination
    QuantizedWeight q = affine_weight();
    q.params.bits = 7;
    std::string e = error_of([&] { validate(q, 128, layer); });
    EXPECT_NE(e.find(layer), std::string::npos) << e;
    EXPECT_NE(e.find("got 7"), std::string::npos) << e;
    q = affine_weight();
    e = error_of([&] { validate(q, 96, layer); });
    EXPECT_NE(e.find("96 is not a multiple of the group size 64"), std::string::npos) << e;
    q.params.group_size = 48;
    EXPECT_NE(error_of([&] { validate(q, 96, layer); }).find("group sizes 32, 64 and 128, got 48"), std::string::npos);
    q.params = {Mode::nvfp4, 4, 32};
    EXPECT_NE(error_of([&] { validate(q, 128, layer); }).find("nvfp4 quantization needs group size 16"),
              std::string::npos);
  }
}

TEST(QuantValidate, QuantizeAndDequantizeRefuseBadInput) {
  std::vector<float> v(4 * 100, 1.0f);
  EXPECT_NE(error_of([&] {
              quantize(f32_weight(v, 4), {Mode::affine, 4, 64});
            }).find("input dimension 100 is not a multiple of the group size 64"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              quantize(f32_weight(std::vector<float>(128, 1.0f), 1), {Mode::affine, 7, 64});
            }).find("bits 2, 3, 4, 5, 6 and 8, got 7"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              quantize(Tensor::zeros_cpu({2, 64}, DType::i32), {Mode::affine, 4, 64});
            }).find("needs a float weight"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              quantize(Tensor::zeros_cpu({64}), {Mode::affine, 4, 64});
            }).find("at least 2"),
            std::string::npos);
  EXPECT_NE(error_of([&] { parse_mode("int4", "convert"); }).find("[convert] unknown quantization mode 'int4'"),
            std::string::npos);
  QuantizedWeight q = affine_weight();
  q.scales = Tensor::zeros_cpu({5, 1});
  EXPECT_NE(error_of([&] { dequantize(q); }).find("dequantize.scales"), std::string::npos);
  q = affine_weight();
  q.wq = Tensor::zeros_cpu({5, 7}, DType::u32);  // 7 words at 3 bits: not whole codes
  q.params.bits = 3;
  EXPECT_NE(error_of([&] { dequantize(q); }).find("do not hold whole 3-bit codes"), std::string::npos);
}

// The backend's dequantize_affine (ops::dequantize_affine on the CPU: what every quantized layer
// runs) equals this reference, bit for bit, for every bits x group size x dtype; the CUDA kernel is
// held to the CPU one in test_cuda_vs_cpu.
TEST(QuantKernels, CpuDequantizeOpEqualsReference) {
  for (DType dt : {DType::f32, DType::bf16, DType::f16})
    for (int bits : {2, 3, 4, 5, 6, 8})
      for (int group : {32, 64, 128}) {
        Tensor w = ops::cast(ops::randn({9, 384}, uint64_t(bits * 1000 + group), 0.7f), dt);
        QuantizedWeight q = quantize(w, {Mode::affine, bits, group});
        Tensor got = ops::dequantize(q.wq, q.scales, q.biases, q.params, dt, "layer");
        EXPECT_TRUE(same_bits(got, dequantize(q, dt))) << dtype_name(dt) << " bits " << bits << " group " << group;
      }
}

// ops::quantized_linear (the CPU's fused kernel for 1-8 rows, the dequantized product beyond)
// against the dense product with the dequantized weight: the fused kernel sums scale * (q . x) +
// bias * sum(x) per group, so the two differ by f32 rounding of those sums only (1e-5 of the
// largest output). And ag::quantized_linear's input gradient equals ag::linear's.
TEST(QuantKernels, QuantizedLinearEqualsDenseProduct) {
  for (int bits : {2, 3, 4, 5, 6, 8})
    for (int group : {32, 64, 128})
      for (int64_t M : {1, 3, 8, 9}) {
        const int64_t N = 37, K = 384;
        QuantizedWeight q = quantize(ops::randn({N, K}, uint64_t(bits * 7 + group), 0.5f), {Mode::affine, bits, group});
        Tensor x = ops::randn({M, K}, uint64_t(M + 100));
        Tensor dense = ops::dequantize(q.wq, q.scales, q.biases, q.params, DType::f32);
        Tensor got = ops::quantized_linear(x, q.wq, q.scales, q.biases, q.params);
        Tensor want = ops::linear(x, dense);
        std::vector<float> g = got.to_f32_vector(), w = want.to_f32_vector();
        float max_ref = 0.f, max_err = 0.f;
        for (size_t i = 0; i < w.size(); ++i)
          max_ref = std::max(max_ref, std::fabs(w[i])), max_err = std::max(max_err, std::fabs(g[i] - w[i]));
        EXPECT_LE(max_err, 1e-5f * max_ref) << "bits " << bits << " group " << group << " M " << M;
      }
  QuantizedWeight q = quantize(ops::randn({11, 128}, 5, 0.5f), {Mode::affine, 4, 64});
  Tensor dense = ops::dequantize(q.wq, q.scales, q.biases, q.params, DType::f32);
  Tensor x1 = ag::param(ops::randn({2, 3, 128}, 6)), x2 = ag::param(ops::clone(x1.detach()));
  Tensor dy = ops::randn({2, 3, 11}, 7);
  ag::backward(ag::quantized_linear(x1, q.wq, q.scales, q.biases, q.params), dy);
  ag::backward(ag::linear(x2, dense), dy);
  std::vector<float> g1 = ag::grad(x1).to_f32_vector(), g2 = ag::grad(x2).to_f32_vector();
  for (size_t i = 0; i < g1.size(); ++i) EXPECT_NEAR(g1[i], g2[i], 1e-5f) << "dx " << i;
}

// Decoding's q/k/v products with the rope and the cache append in their launch: the CPU has no such launch, so the op
// says so (an undefined result) and writes nothing; a cache or inv_freq that does not fit q/k/v is an error naming the
// op and the tensor, on any device.
TEST(QuantKernels, QkvRopeAppendDeclinesOnCpuAndChecksItsCache) {
  const QuantParams p{Mode::affine, 4, 64};
  const int64_t K = 128, D = 16, H = 4, KV = 2;
  QuantizedWeight wq = quantize(ops::randn({H * D, K}, 11, 0.5f), p),
                  wk = quantize(ops::randn({KV * D, K}, 12, 0.5f), p),
                  wv = quantize(ops::randn({KV * D, K}, 13, 0.5f), p);
  const std::vector<ops::QuantizedWeight> qkv = {
      {&wq.wq, &wq.scales, &wq.biases}, {&wk.wq, &wk.scales, &wk.biases}, {&wv.wq, &wv.scales, &wv.biases}};
  const Tensor x = ops::randn({1, 1, K}, 14), inv_freq = ops::full({D / 2}, 0.5f, DType::f32, Device::cpu);
  Tensor kc = ops::randn({8, KV, D}, 15), vc = ops::randn({8, KV, D}, 16);
  const std::vector<float> k_before = kc.to_f32_vector(), v_before = vc.to_f32_vector();
  EXPECT_FALSE(ops::quantized_qkv_rope_append(x, qkv, p, nullptr, {&inv_freq, &kc, &vc, 3, nullptr}).defined());
  EXPECT_EQ(kc.to_f32_vector(), k_before);
  EXPECT_EQ(vc.to_f32_vector(), v_before);
  Tensor narrow = ops::randn({8, KV, D / 2}, 17);
  EXPECT_NE(error_of([&] {
              ops::quantized_qkv_rope_append(x, qkv, p, nullptr, {&inv_freq, &narrow, &narrow, 3, nullptr});
            }).find("[quantized_qkv_rope_append] cache"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              ops::quantized_qkv_rope_append(x, qkv, p, nullptr, {&inv_freq, &kc, &vc, 8, nullptr});
            }).find("row 8 out of range"),
            std::string::npos);
  const Tensor wrong_freq = ops::full({D / 2}, 0.5f, DType::bf16, Device::cpu);
  EXPECT_NE(error_of([&] {
              ops::quantized_qkv_rope_append(x, qkv, p, nullptr, {&wrong_freq, &kc, &vc, 3, nullptr});
            }).find("[quantized_qkv_rope_append] inv_freq"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              ops::quantized_qkv_rope_append(x, {qkv[0], qkv[1]}, p, nullptr, {&inv_freq, &kc, &vc, 3, nullptr});
            }).find("takes q, k and v"),
            std::string::npos);
}

// The CPU backend's fp kernels (ops::dequantize) equal the reference for every packed word and
// every u8 scale (so every code, E4M3's NaN too, and the scales 0 = 2^-127 and 255 = inf, whose
// 0 * inf is a NaN written as MLX writes it), into f32, bf16 and f16.
TEST(QuantKernels, CpuDequantizeFpOpEqualsReference) {
  for (Mode mode : {Mode::mxfp4, Mode::nvfp4, Mode::mxfp8})
    for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
      const QuantParams p = default_params(mode);
      const int64_t rows = 300, in = 256;
      QuantizedWeight q{Tensor::empty({rows, in * p.bits / 32}, DType::u32),
                        Tensor::empty({rows, in / p.group_size}, DType::u8), Tensor(), p};
      uint32_t x = 12345u + uint32_t(mode) * 7u;
      for (int64_t i = 0; i < q.wq.numel(); ++i) q.wq.data<uint32_t>()[i] = (x = x * 1664525u + 1013904223u);
      for (int64_t i = 0; i < q.scales.numel(); ++i) q.scales.data<uint8_t>()[i] = uint8_t(i * 7 % 256);
      EXPECT_TRUE(same_bits(ops::dequantize(q.wq, q.scales, Tensor(), p, dt, "layer"), dequantize(q, dt)))
          << mode_name(mode) << " to " << dtype_name(dt);
    }
}

// ops::quantized_linear in the fp modes (the CPU's fused kernel for 1-8 rows, the dequantized
// product beyond) against the dense product with the dequantized weight (f32 rounding of the
// sums only), and ag::quantized_linear's input gradient against ag::linear's (QLoRA's backward).
TEST(QuantKernels, QuantizedLinearFpEqualsDenseProduct) {
  for (Mode mode : {Mode::mxfp4, Mode::nvfp4, Mode::mxfp8})
    for (int64_t M : {1, 3, 8, 9}) {
      const int64_t N = 37, K = 384;
      const QuantParams p = default_params(mode);
      QuantizedWeight q = quantize(ops::randn({N, K}, uint64_t(int(mode) * 7), 0.5f), p);
      Tensor x = ops::randn({M, K}, uint64_t(M + 100));
      Tensor got = ops::quantized_linear(x, q.wq, q.scales, Tensor(), p);
      Tensor want = ops::linear(x, ops::dequantize(q.wq, q.scales, Tensor(), p, DType::f32));
      std::vector<float> g = got.to_f32_vector(), w = want.to_f32_vector();
      float max_ref = 0.f, max_err = 0.f;
      for (size_t i = 0; i < w.size(); ++i)
        max_ref = std::max(max_ref, std::fabs(w[i])), max_err = std::max(max_err, std::fabs(g[i] - w[i]));
      EXPECT_GT(max_ref, 0.f);
      EXPECT_LE(max_err, 1e-5f * max_ref) << mode_name(mode) << " M " << M;
    }
  const QuantParams p = default_params(Mode::nvfp4);
  QuantizedWeight q = quantize(ops::randn({11, 128}, 5, 0.5f), p);
  Tensor dense = ops::dequantize(q.wq, q.scales, Tensor(), p, DType::f32);
  Tensor x1 = ag::param(ops::randn({2, 3, 128}, 6)), x2 = ag::param(ops::clone(x1.detach()));
  Tensor dy = ops::randn({2, 3, 11}, 7);
  ag::backward(ag::quantized_linear(x1, q.wq, q.scales, Tensor(), p), dy);
  ag::backward(ag::linear(x2, dense), dy);
  std::vector<float> g1 = ag::grad(x1).to_f32_vector(), g2 = ag::grad(x2).to_f32_vector();
  for (size_t i = 0; i < g1.size(); ++i) EXPECT_NEAR(g1[i], g2[i], 1e-5f) << "dx " << i;
}

// ops::check_quantized (what the loader and every op run) names the layer and the tensor at fault
// for the fp modes: biases where the mode has none, float scales, scales of the wrong shape, and a
// group size or bits the mode does not have.
TEST(QuantKernels, CheckQuantizedFpErrors) {
  const QuantParams p = default_params(Mode::mxfp4);
  QuantizedWeight q = quantize(ops::randn({4, 64}, 1), p);
  EXPECT_NO_THROW(ops::check_quantized(q.wq, q.scales, Tensor(), p, "blk.q_proj"));
  auto err = [&](const Tensor& s, const Tensor& b, const QuantParams& f) {
    return error_of([&] { ops::check_quantized(q.wq, s, b, f, "blk.q_proj"); });
  };
  EXPECT_NE(err(q.scales, ops::zeros({4, 2}, DType::f32, Device::cpu), p)
                .find("blk.q_proj.biases: present, but mxfp4 quantization has no biases"),
            std::string::npos);
  EXPECT_NE(err(ops::zeros({4, 2}, DType::f32, Device::cpu), Tensor(), p).find("blk.q_proj.scales: must be u8 (4, 2)"),
            std::string::npos);
  EXPECT_NE(err(Tensor::zeros_cpu({3, 2}, DType::u8), Tensor(), p).find("blk.q_proj.scales: must be u8 (4, 2)"),
            std::string::npos);
  EXPECT_NE(err(q.scales, Tensor(), {Mode::mxfp4, 4, 64}).find("mxfp4 quantization needs group size 32 and bits 4"),
            std::string::npos);
  EXPECT_NE(err(q.scales, Tensor(), {Mode::mxfp8, 4, 32}).find("mxfp8 quantization needs group size 32 and bits 8"),
            std::string::npos);
}

TEST(QuantSpeed, Bf16Square4096) {
  // Not a gate: prints the reference quantize's speed on a 7B-sized projection (ctest -V).
  const int64_t n = 4096;
  Tensor w = Tensor::empty({n, n}, DType::bf16);
  uint16_t* p = w.data<uint16_t>();
  uint32_t s = 12345;
  for (int64_t i = 0; i < n * n; ++i) {
    s = s * 1664525u + 1013904223u;
    p[i] = f32_to_bf16((float(s >> 8) / float(1 << 24) - 0.5f) * 0.05f);
  }
  for (QuantParams qp : {QuantParams{Mode::affine, 4, 64}, QuantParams{Mode::affine, 3, 64},
                         default_params(Mode::mxfp4), default_params(Mode::nvfp4), default_params(Mode::mxfp8)}) {
    const auto t0 = std::chrono::steady_clock::now();
    const QuantizedWeight q = quantize(w, qp);
    const auto t1 = std::chrono::steady_clock::now();
    const Tensor d = dequantize(q, DType::bf16);
    const auto t2 = std::chrono::steady_clock::now();
    std::printf("4096x4096 bf16 %s bits %d group %d: quantize %.0f ms, dequantize %.0f ms\n", mode_name(qp.mode),
                qp.bits, qp.group_size, std::chrono::duration<double, std::milli>(t1 - t0).count(),
                std::chrono::duration<double, std::milli>(t2 - t1).count());
  }
}

}  // namespace
