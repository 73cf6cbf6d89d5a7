// A finite-difference check of every backward rule, and of gradient checkpointing.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "autograd/checkpoint.h"
#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "core/allocator.h"
#include "core/error.h"
#include "tolerance.h"

using namespace lmtune;
using V = std::vector<Tensor>;

namespace {
Tensor rnd(const Shape& s, uint64_t seed, float std = 1.f) { return ops::randn(s, seed, std); }

void check(const char* what, const std::function<Tensor(const V&)>& fn, const V& inputs, std::vector<size_t> which = {},
           ag::GradcheckOptions opt = {}) {
  ag::GradcheckResult r = ag::gradcheck(fn, inputs, opt, which);
  EXPECT_TRUE(r.ok) << what << ": max abs err " << r.max_abs_err << "\n" << r.report;
}
}  // namespace

TEST(Gradcheck, Elementwise) {
  Tensor a = rnd({3, 4}, 1), b = rnd({3, 4}, 2), c = rnd({4}, 3);
  check("add", [](const V& x) { return ag::add(x[0], x[1]); }, {a, b});
  check("add broadcast", [](const V& x) { return ag::add(x[0], x[1]); }, {a, c});
  check("sub broadcast", [](const V& x) { return ag::sub(x[0], x[1]); }, {a, c});
  check("mul", [](const V& x) { return ag::mul(x[0], x[1]); }, {a, b});
  check("mul broadcast", [](const V& x) { return ag::mul(x[0], x[1]); }, {a, c});
  check("scale", [](const V& x) { return ag::scale(x[0], -1.7f); }, {a});
  check("silu", [](const V& x) { return ag::silu(x[0]); }, {a});
  check("gelu_tanh", [](const V& x) { return ag::gelu_tanh(x[0]); }, {a});
  check("tanh", [](const V& x) { return ag::tanh(x[0]); }, {a});
  check("reshape", [](const V& x) { return ag::mul(ag::reshape(x[0], {2, 6}), ag::reshape(x[1], {2, 6})); }, {a, b});
  check("sum", [](const V& x) { return ag::sum(ag::mul(x[0], x[0])); }, {a});
  check("mean", [](const V& x) { return ag::mean(ag::mul(x[0], x[1])); }, {a, b});
  check("softmax", [](const V& x) { return ag::softmax(x[0]); }, {rnd({3, 9}, 4)});
  check("swiglu", [](const V& x) { return ag::swiglu(x[0], x[1]); }, {a, b});
  // A fused projection's column blocks, each used (one twice) so that their gradients meet in x.
  check("slice_last",
        [](const V& x) {
          Tensor q = ag::slice_last(x[0], 0, 2), k = ag::slice_last(x[0], 2, 1), v = ag::slice_last(x[0], 3, 1);
          return ag::add(ag::add(ag::sum(ag::mul(q, q)), ag::sum(ag::mul(ag::add(k, v), k))), ag::sum(ag::mul(v, v)));
        },
        {a});
}

TEST(SliceLast, BlocksAndPlacement) {
  Tensor x = Tensor::from_f32({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {2, 1, 6});
  Tensor mid = ops::slice_last(x, 2, 3);
  EXPECT_EQ(mid.shape(), (Shape{2, 1, 3}));
  EXPECT_EQ(mid.to_f32_vector(), (std::vector<float>{2, 3, 4, 8, 9, 10}));
  Tensor back = ops::place_last(mid, 6, 2);
  EXPECT_EQ(back.to_f32_vector(), (std::vector<float>{0, 0, 2, 3, 4, 0, 0, 0, 8, 9, 10, 0}));
  EXPECT_THROW(ops::slice_last(x, 4, 3), Error);
  EXPECT_THROW(ops::place_last(mid, 4, 2), Error);
}

TEST(Gradcheck, CastOnExactGrid) {
  // Values on a 1/16 grid below 2 in magnitude stay exact in bf16 and f16 under +-1/16 steps.
  std::vector<float> v;
  for (int i = 0; i < 12; ++i) v.push_back(float((i * 7) % 24 - 12) / 16.f);
  Tensor x = Tensor::from_f32(v, {12});
  ag::GradcheckOptions opt;
  opt.eps = 1.f / 16;
  for (DType dt : {DType::bf16, DType::f16})
    check(
        "cast", [dt](const V& in) { return ag::cast(ag::cast(in[0], dt), DType::f32); }, {x}, {}, opt);
}

TEST(Gradcheck, MatmulAndLinear) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      Tensor a = rnd(ta ? Shape{2, 5, 3} : Shape{2, 3, 5}, 5), b = rnd(tb ? Shape{2, 4, 5} : Shape{2, 5, 4}, 6);
      check("matmul batched", [ta, tb](const V& x) { return ag::matmul(x[0], x[1], ta, tb); }, {a, b});
    }
  for (bool tb : {false, true}) {
    Tensor a = rnd({2, 3, 5}, 7), w = rnd(tb ? Shape{4, 5} : Shape{5, 4}, 8);
    check("matmul shared b", [tb](const V& x) { return ag::matmul(x[0], x[1], false, tb); }, {a, w});
  }
  Tensor x = rnd({2, 3, 5}, 9), w = rnd({4, 5}, 10), bias = rnd({4}, 11);
  check("linear", [](const V& in) { return ag::linear(in[0], in[1], in[2]); }, {x, w, bias});
  check("linear no bias", [](const V& in) { return ag::linear(in[0], in[1]); }, {x, w});
}

TEST(Gradcheck, EmbeddingRmsNormRope) {
  Tensor w = rnd({7, 5}, 12);
  Tensor ids = Tensor::from_i32({3, 0, 3, 6}, {2, 2});
  check("embedding", [ids](const V& x) { return ag::embedding(x[0], ids); }, {w});
  Tensor x = rnd({4, 9}, 13), g = rnd({9}, 14);
  check("rms_norm", [](const V& in) { return ag::rms_norm(in[0], in[1], 1e-5f); }, {x, g});
  Tensor q = rnd({2, 3, 2, 8}, 15);
  Tensor inv = Tensor::from_f32({1.f, 0.3f, 0.05f, 0.01f}, {4});
  check("rope", [inv](const V& in) { return ag::rope(in[0], inv, 5, 1.f); }, {q});
}

TEST(Gradcheck, AttentionGqaAndWindow) {
  struct Case {
    int64_t T, H, KV, D, window;
  };
  for (Case c : {Case{5, 4, 2, 4, 0}, Case{6, 2, 1, 4, 3}, Case{4, 3, 3, 2, 0}}) {
    Tensor q = rnd({2, c.T, c.H, c.D}, 16), k = rnd({2, c.T, c.KV, c.D}, 17), v = rnd({2, c.T, c.KV, c.D}, 18);
    float scale = 1.f / std::sqrt(float(c.D));
    check("attention", [c, scale](const V& x) { return ag::attention(x[0], x[1], x[2], scale, true, c.window); },
          {q, k, v});
    // gemma2's score soft-cap, tight enough (0.8 against scores near 1-3) that tanh bends.
    check("attention softcap",
          [c](const V& x) { return ag::attention(x[0], x[1], x[2], 1.3f, true, c.window, 0, nullptr, 0.8f); },
          {q, k, v});
  }
}

// Sequences longer than the CPU kernel's 64-row query blocks: the backward's blocks each cover the
// keys their rows see, and dK / dV sum over blocks (a window shorter than a block drops keys a
// later block's rows no longer see).
TEST(Gradcheck, AttentionAcrossQueryBlocks) {
  Tensor q = rnd({1, 140, 2, 2}, 24), k = rnd({1, 140, 1, 2}, 25), v = rnd({1, 140, 1, 2}, 26);
  for (int64_t window : {0, 50}) {
    check("attention blocks", [window](const V& x) { return ag::attention(x[0], x[1], x[2], 0.7f, true, window); },
          {q, k, v});
    check("attention blocks softcap",
          [window](const V& x) { return ag::attention(x[0], x[1], x[2], 1.3f, true, window, 0, nullptr, 0.8f); },
          {q, k, v});
  }
  std::vector<int32_t> ids(140, 0);
  for (size_t i = 70; i < 140; ++i) ids[i] = i < 75 ? 1 : 2;  // segments 70, 5 and 65 long
  Tensor seg = Tensor::from_i32(ids, {1, 140});
  check("attention blocks with segments",
        [seg](const V& x) { return ag::attention(x[0], x[1], x[2], 0.5f, true, 0, 0, &seg); }, {q, k, v});
}

// Packed rows (lora --pack): rope at per-token positions, attention kept within segments.
TEST(Gradcheck, PackedRowsRopeAtAndSegmentAttention) {
  Tensor q = rnd({2, 5, 2, 8}, 21);
  Tensor inv = Tensor::from_f32({1.f, 0.3f, 0.05f, 0.01f}, {4});
  Tensor pos = Tensor::from_i32({0, 1, 0, 1, 2, 0, 1, 2, 3, 4}, {2, 5});
  check("rope_at", [inv, pos](const V& in) { return ag::rope_at(in[0], inv, pos, 1.f); }, {q});
  Tensor seg = Tensor::from_i32({0, 0, 1, 1, 1, 0, 1, 1, 1, 2}, {2, 5});
  for (int64_t window : {0, 2}) {
    Tensor k = rnd({2, 5, 1, 8}, 22), v = rnd({2, 5, 1, 8}, 23);
    check("attention with segments",
          [seg, window](const V& x) { return ag::attention(x[0], x[1], x[2], 0.35f, true, window, 0, &seg); },
          {q, k, v});
  }
}

TEST(Gradcheck, CrossEntropyWithIgnoredTargets) {
  Tensor logits = rnd({5, 7}, 19);
  Tensor t = Tensor::from_i32({2, -100, 6, 0, -1}, {5});
  check("cross_entropy", [t](const V& x) { return ag::cross_entropy(x[0], t); }, {logits});
  Tensor none = Tensor::from_i32({-1, -1, -1, -1, -1}, {5});
  Tensor l = ag::cross_entropy(ag::param(logits), none);
  EXPECT_EQ(ops::item(l), 0.f);
}

TEST(Gradcheck, CheckpointMatchesPlainBackward) {
  Tensor w = ag::param(rnd({6, 6}, 20, 0.5f)), g = ag::param(rnd({6}, 21));
  Tensor x = rnd({3, 6}, 22);
  auto block = [&](const V& in) { return ag::silu(ag::linear(ag::rms_norm(in[0], g, 1e-6f), w)); };
  Tensor xp = ag::param(x);
  ag::backward(ag::sum(block({xp})));
  std::vector<float> gw = ag::grad(w).to_f32_vector(), gg = ag::grad(g).to_f32_vector();
  std::vector<float> gx = ag::grad(xp).to_f32_vector();
  ag::zero_grad(w);
  ag::zero_grad(g);
  Tensor xc = ag::param(x);
  ag::backward(ag::sum(ag::checkpoint(block, {xc})));
  expect_close(ag::grad(w).to_f32_vector(), gw, 1e-6, 1e-6, "checkpoint dW");
  expect_close(ag::grad(g).to_f32_vector(), gg, 1e-6, 1e-6, "checkpoint dg");
  expect_close(ag::grad(xc).to_f32_vector(), gx, 1e-6, 1e-6, "checkpoint dx");
  check("checkpoint", [&](const V& in) { return ag::checkpoint(block, {in[0]}); }, {x});
}

TEST(Gradcheck, LoraDown) {
  Tensor x = rnd({2, 3, 5}, 23), a = rnd({5, 4}, 24);
  check("lora_down", [](const V& in) { return ag::lora_down(in[0], in[1]); }, {x, a});
  check("lora_down 2-D", [](const V& in) { return ag::lora_down(in[0], in[1]); }, {rnd({3, 5}, 25), a});
  std::vector<float> m(30);
  for (size_t i = 0; i < m.size(); ++i) m[i] = (i * 5) % 3 == 0 ? 0.f : 1.5f;  // dropout with p = 1/3
  Tensor mask = Tensor::from_f32(m, {2, 3, 5});
  check("lora_down masked", [mask](const V& in) { return ag::lora_down(in[0], in[1], mask); }, {x, a});
}

// The LoRA path's down projection against the ops it replaces, matmul(mul(cast(x), mask), a)
// recorded one by one, for a bf16 input: the same values and gradients bit for bit, and the
// tape holds only z, where the composed ops also kept the f32 copy of x (and its masked copy).
TEST(LoraDown, MatchesComposedOpsAndSavesNoCast) {
  Tensor xb = ops::cast(rnd({2, 7, 24}, 26), DType::bf16), a0 = rnd({24, 3}, 27, 0.2f);
  Tensor dz = rnd({2, 7, 3}, 28);
  std::vector<float> m(size_t(xb.numel()));
  for (size_t i = 0; i < m.size(); ++i) m[i] = i % 4 == 1 ? 0.f : 4.f / 3.f;
  Tensor mask = Tensor::from_f32(m, xb.shape());
  CachingAllocator& mem = allocator(Device::cpu);
  for (bool masked : {false, true}) {
    for (bool shared : {false, true}) {
      SCOPED_TRACE(std::string(masked ? "masked" : "plain") + (shared ? ", shared cast" : ""));
      Tensor m_in = masked ? mask : Tensor();
      // Composed, as lora.cpp recorded it before.
      Tensor x1 = ag::param(xb), a1 = ag::param(a0);
      Tensor z1;
      size_t before1 = mem.current_bytes();
      {
        Tensor xf = ag::cast(x1, DType::f32);
        if (masked) xf = ag::mul(xf, mask);
        z1 = ag::matmul(xf, a1);
      }
      EXPECT_GT(mem.current_bytes() - before1, CachingAllocator::round_size(z1.nbytes()))
          << "the composed ops' tape keeps the f32 copy";
      ag::backward(z1, dz);
      // Fused.
      Tensor x2 = ag::param(xb), a2 = ag::param(a0);
      Tensor z2;
      size_t before = mem.current_bytes();
      {
        Tensor xc = shared ? ops::cast(xb, DType::f32) : Tensor();
        z2 = ag::lora_down(x2, a2, m_in, xc);
      }
      EXPECT_EQ(mem.current_bytes() - before, CachingAllocator::round_size(z2.nbytes()))
          << "lora_down kept more than its output";
      ag::backward(z2, dz);
      EXPECT_EQ(z2.dtype(), DType::f32);
      EXPECT_EQ(ag::grad(x2).dtype(), DType::bf16);
      EXPECT_EQ(z2.to_f32_vector(), z1.to_f32_vector());
      EXPECT_EQ(ag::grad(a2).to_f32_vector(), ag::grad(a1).to_f32_vector());
      EXPECT_EQ(ag::grad(x2).to_f32_vector(), ag::grad(x1).to_f32_vector());
    }
  }
  // No gradient for a frozen input: only a's.
  Tensor a3 = ag::param(a0);
  Tensor z3 = ag::lora_down(xb, a3);
  ag::backward(z3, dz);
  EXPECT_TRUE(ag::grad(a3).defined());
}

// LoRA's sum written into the base output (ag::lora_add): finite differences for x, a, b and the
// base weight (whose output lora_add overwrites), plain and masked, 3-D and 2-D inputs.
TEST(Gradcheck, LoraAdd) {
  Tensor x = rnd({2, 3, 5}, 60), w = rnd({6, 5}, 61), a = rnd({5, 4}, 62), b = rnd({4, 6}, 63, 0.5f);
  check("lora_add", [](const V& in) { return ag::lora_add(ag::linear(in[0], in[1]), in[0], in[2], in[3], 1.75f); },
        {x, w, a, b});
  check("lora_add 2-D", [](const V& in) { return ag::lora_add(ag::linear(in[0], in[1]), in[0], in[2], in[3], -0.5f); },
        {rnd({3, 5}, 64), w, a, b});
  std::vector<float> m(30);
  for (size_t i = 0; i < m.size(); ++i) m[i] = (i * 7) % 4 == 0 ? 0.f : 4.f / 3.f;  // dropout with p = 1/4
  Tensor mask = Tensor::from_f32(m, {2, 3, 5});
  check("lora_add masked",
        [mask](const V& in) { return ag::lora_add(ag::linear(in[0], in[1]), in[0], in[2], in[3], 2.f, mask); },
        {x, w, a, b});
}

// ag::lora_add against the ops it replaces for an f32 input (lora_down, matmul, scale, add): the
// same values and gradients (to f32 rounding: the scale is applied inside the product), and y's
// storage is the result's.
TEST(LoraAdd, MatchesComposedOps) {
  Tensor x0 = rnd({2, 7, 24}, 65), w0 = rnd({16, 24}, 66, 0.3f), a0 = rnd({24, 3}, 67, 0.2f), b0 = rnd({3, 16}, 68);
  Tensor dy = rnd({2, 7, 16}, 69);
  std::vector<float> m(size_t(x0.numel()));
  for (size_t i = 0; i < m.size(); ++i) m[i] = i % 5 == 2 ? 0.f : 1.25f;
  Tensor mask = Tensor::from_f32(m, x0.shape());
  for (bool masked : {false, true}) {
    SCOPED_TRACE(masked ? "masked" : "plain");
    Tensor m_in = masked ? mask : Tensor();
    Tensor x1 = ag::param(x0), w1 = ag::param(w0), a1 = ag::param(a0), b1 = ag::param(b0);
    Tensor y1 = ag::add(ag::linear(x1, w1), ag::scale(ag::matmul(ag::lora_down(x1, a1, m_in), b1), 3.5f));
    ag::backward(y1, dy);
    Tensor x2 = ag::param(x0), w2 = ag::param(w0), a2 = ag::param(a0), b2 = ag::param(b0);
    Tensor base = ag::linear(x2, w2);
    Tensor y2 = ag::lora_add(base, x2, a2, b2, 3.5f, m_in);
    EXPECT_EQ(y2.raw(), base.raw()) << "the sum is written into the base output";
    ag::backward(y2, dy);
    // The scale multiplies inside the products (alpha) instead of scaling dy first: f32 rounding of
    // sums over 14 rows whose terms reach ~10, so errors of ~1e-6 of the largest element, not of each.
    expect_close(y2.to_f32_vector(), y1.to_f32_vector(), 2e-5, 1e-5, "y");
    expect_close(ag::grad(x2).to_f32_vector(), ag::grad(x1).to_f32_vector(), 2e-5, 1e-5, "dx");
    expect_close(ag::grad(w2).to_f32_vector(), ag::grad(w1).to_f32_vector(), 2e-5, 1e-5, "dw");
    expect_close(ag::grad(a2).to_f32_vector(), ag::grad(a1).to_f32_vector(), 2e-5, 1e-5, "da");
    expect_close(ag::grad(b2).to_f32_vector(), ag::grad(b1).to_f32_vector(), 2e-5, 1e-5, "db");
  }
  // A frozen a: only b's gradient (and x's) formed.
  Tensor b3 = ag::param(b0), x3 = ag::param(x0);
  ag::backward(ag::lora_add(ag::linear(x3, w0), x3, a0, b3, 1.f), dy);
  EXPECT_TRUE(ag::grad(b3).defined());
  EXPECT_TRUE(ag::grad(x3).defined());
  // Shapes that do not fit are refused, naming the op.
  EXPECT_THROW(ag::lora_add(ops::zeros({2, 7, 15}, DType::f32, Device::cpu), x0, a0, b0, 1.f), Error);
  EXPECT_THROW(ag::lora_add(ops::zeros({2, 7, 16}, DType::f32, Device::cpu), x0, b0, a0, 1.f), Error);
}

// ag::lora_linear (the base product and its LoRA as one node, a block of rows at a time on the CPU, from 64 rows
// on): finite differences for x, a and b with and without a bias, on 2-D and 3-D inputs.
TEST(Gradcheck, LoraLinear) {
  Tensor w = rnd({6, 5}, 70), bias = rnd({6}, 71), a = rnd({5, 4}, 72), b = rnd({4, 6}, 73, 0.5f);
  check("lora_linear", [&](const V& in) { return ag::lora_linear(in[0], w, Tensor(), in[1], in[2], 1.75f); },
        {rnd({2, 33, 5}, 74), a, b});
  check("lora_linear bias", [&](const V& in) { return ag::lora_linear(in[0], w, bias, in[1], in[2], -0.5f); },
        {rnd({70, 5}, 75), a, b});
}

// ag::lora_linear against the nodes it replaces (linear, then lora_add) on shapes that cut into several
// blocks of rows of unequal size (700 and 1029 rows: 4 and 6 blocks) and into one (64 rows): the same values and
// gradients to f32 rounding, every gradient only where asked, and nothing recorded for a weight or bias that
// trains or for fewer than 64 rows (the caller composes the nodes then).
TEST(LoraLinear, MatchesLinearThenLoraAdd) {
  for (int64_t rows : {64, 700, 1029}) {
    for (bool with_bias : {false, true}) {
      SCOPED_TRACE(std::to_string(rows) + (with_bias ? " rows, bias" : " rows"));
      const uint64_t s = uint64_t(rows) * 10 + with_bias;
      Tensor x0 = rnd({rows, 40}, s), w = rnd({33, 40}, s + 1, 0.3f), a0 = rnd({40, 3}, s + 2, 0.2f),
             b0 = rnd({3, 33}, s + 3), dy = rnd({rows, 33}, s + 4);
      Tensor bias = with_bias ? rnd({33}, s + 5) : Tensor();
      Tensor x1 = ag::param(x0), a1 = ag::param(a0), b1 = ag::param(b0);
      Tensor y1 = ag::lora_add(ag::linear(x1, w, bias), x1, a1, b1, 2.5f);
      ag::backward(y1, dy);
      Tensor x2 = ag::param(x0), a2 = ag::param(a0), b2 = ag::param(b0);
      Tensor y2 = ag::lora_linear(x2, w, bias, a2, b2, 2.5f);
      ASSERT_TRUE(y2.defined()) << "the CPU backend has the kernel";
      ag::backward(y2, dy);
      // Sums of 40 (y, the base part) and 33 (dx) f32 terms of magnitude ~1-10.
      expect_close(y2.to_f32_vector(), y1.to_f32_vector(), 2e-5, 1e-5, "y");
      expect_close(ag::grad(x2).to_f32_vector(), ag::grad(x1).to_f32_vector(), 2e-5, 1e-5, "dx");
      // da and db sum over every row (the blocks' parts added in block order, not in one sgemm's order), terms
      // that cancel: each node against a double reference, within a few f32 roundings of the terms' absolute sum.
      const std::vector<float> xv = x0.to_f32_vector(), av = a0.to_f32_vector(), bv = b0.to_f32_vector(),
                               dv = dy.to_f32_vector();
      std::vector<double> dxa(size_t(rows * 3)), xa(size_t(rows * 3));
      for (int64_t i = 0; i < rows; ++i)
        for (int j = 0; j < 3; ++j) {
          for (int o = 0; o < 33; ++o) dxa[i * 3 + j] += 2.5 * dv[i * 33 + o] * bv[j * 33 + o];
          for (int k = 0; k < 40; ++k) xa[i * 3 + j] += double(xv[i * 40 + k]) * av[k * 3 + j];
        }
      auto near_reference = [&](const Tensor& got, int64_t n_out, const char* what, auto term) {
        const std::vector<float> g = got.to_f32_vector();
        for (int64_t e = 0; e < int64_t(g.size()); ++e) {
          double ref = 0, mag = 0;
          for (int64_t i = 0; i < rows; ++i)
            ref += term(i, e / n_out, e % n_out), mag += std::abs(term(i, e / n_out, e % n_out));
          ASSERT_LE(std::abs(g[size_t(e)] - ref), 4 * 6e-8 * mag + 1e-6)
              << what << "[" << e << "]: " << g[size_t(e)] << " vs " << ref;
        }
      };
      auto da_term = [&](int64_t i, int64_t k, int64_t j) { return double(xv[i * 40 + k]) * dxa[i * 3 + j]; };
      auto db_term = [&](int64_t i, int64_t j, int64_t o) { return 2.5 * xa[i * 3 + j] * dv[i * 33 + o]; };
      near_reference(ag::grad(a1), 3, "da (linear + lora_add)", da_term);
      near_reference(ag::grad(a2), 3, "da (lora_linear)", da_term);
      near_reference(ag::grad(b1), 33, "db (linear + lora_add)", db_term);
      near_reference(ag::grad(b2), 33, "db (lora_linear)", db_term);
    }
  }
  Tensor x0 = rnd({300, 8}, 80), w = rnd({5, 8}, 81), a0 = rnd({8, 2}, 82), b0 = rnd({2, 5}, 83);
  // A frozen input and a frozen a: only b's gradient.
  Tensor b1 = ag::param(b0);
  ag::backward(ag::lora_linear(x0, w, Tensor(), a0, b1, 1.f), rnd({300, 5}, 84));
  EXPECT_TRUE(ag::grad(b1).defined());
  // Decoding's few rows, a weight or bias that trains: not this node's work.
  EXPECT_FALSE(ag::lora_linear(rnd({2, 8}, 88), w, Tensor(), a0, b0, 1.f).defined());
  EXPECT_FALSE(ag::lora_linear(x0, ag::param(w), Tensor(), a0, b0, 1.f).defined());
  EXPECT_FALSE(ag::lora_linear(x0, w, ag::param(rnd({5}, 85)), a0, b0, 1.f).defined());
  // Shapes that do not fit are refused, naming the op.
  EXPECT_THROW(ag::lora_linear(x0, w, Tensor(), b0, a0, 1.f), Error);
  EXPECT_THROW(ag::lora_linear(rnd({300, 7}, 86), w, Tensor(), a0, b0, 1.f), Error);
  EXPECT_THROW(ag::lora_linear(x0, w, rnd({4}, 87), a0, b0, 1.f), Error);
}
