// Backend::quantized_decode_chain (qgemv_chain.cu: decoding's o product with the residual add, the norm, gate/up with
// swiglu and down with the residual add in one launch of three phases) against the three launches it replaces under
// variant 9 (quantized_linear_add, quantized_swiglu_linear with the norm, quantized_linear_add): x1, the swiglu and the
// output the same bit for bit, for bf16 and f16, groups of 32, 64 and 128, with o's input wider than the model (GQA
// models' n_head * head_dim may differ from n_embd) and odd row counts; twice in a row (the grid barrier's words must
// come back to zero). Rows of down longer than variant 9's own launch takes (K > 12288, Mistral's 14336): there the
// reference down product is variant 7's, whose sums run in another order, so only x1 and the swiglu are compared bit
// for bit and the output within a bound. The chain must have run (its launch counter), and refuse where it cannot.
// With the next layer's q, k and v as a fourth phase: the chain, then quantized_qkv_rope_append of its output (itself
// held to the products and rope_append by test_qgemv_fused), bit for bit: q, the cache rows, the output.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/runtime_config.h"
#include "ops/ops.h"

namespace lmtune {
namespace {

struct ChainCase {
  int group;
  int64_t n_embd, n_attn, n_ff;
};

std::vector<float> host(const Tensor& t) { return ops::to(t, Device::cpu).to_f32_vector(); }

ops::QuantizedWeight ref(const ops::AffineQuantized& w) { return {&w.wq, &w.scales, &w.biases}; }

struct Chain {
  Tensor x1, act, out;
};

TEST(DecodeChain, EqualsItsLaunches) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::vector<ChainCase> cases = {{64, 512, 512, 1536},    {32, 256, 384, 1056},    {128, 1024, 1024, 2816},
                                        {64, 4096, 4096, 12288}, {64, 1024, 1024, 14336}, {32, 96, 160, 416}};
  uint64_t seed = 2701;
  for (DType dt : {DType::bf16, DType::f16})
    for (const ChainCase& c : cases) {
      const std::string what = std::string(dtype_name(dt)) + " group " + std::to_string(c.group) + " n_embd " +
                               std::to_string(c.n_embd) + " n_attn " + std::to_string(c.n_attn) + " n_ff " +
                               std::to_string(c.n_ff);
      const QuantFormat f{QuantMode::affine, 4, c.group};
      auto weight = [&](int64_t rows, int64_t in) {
        return ops::quantize_affine(ops::randn({rows, in}, seed += 3, 0.05f, dt, Device::cuda), 4, c.group);
      };
      const ops::AffineQuantized o = weight(c.n_embd, c.n_attn), gate = weight(c.n_ff, c.n_embd),
                                 up = weight(c.n_ff, c.n_embd), down = weight(c.n_embd, c.n_ff);
      const Tensor a = ops::randn({1, 1, c.n_attn}, seed += 3, 1.f, dt, Device::cuda);
      const Tensor x = ops::randn({1, 1, c.n_embd}, seed += 3, 1.f, dt, Device::cuda);
      const Tensor norm_w = ops::add(ops::full({c.n_embd}, 1.f, dt, Device::cuda),
                                     ops::randn({c.n_embd}, seed += 3, 0.2f, dt, Device::cuda));
      const ops::InputNorm norm{&norm_w, 1e-5f};

      RuntimeConfig rc = runtime_config();
      rc.cuda_qgemv_variant = 9;
      rc.cuda_qgemv_stream = rc.cuda_qgemv_stream_normed = 0;  // the variant's own kernels
      rc.cuda_qgemv_simt_spread = rc.fused_epilogues = rc.cuda_gemv = true;
      rc.cuda_decode_chain = true;
      ScopedRuntimeConfig scoped(rc);
      const Tensor x1 = ops::quantized_linear_add(a, ref(o), x, f);
      const Tensor act = ops::quantized_swiglu_linear(x1, ref(gate), ref(up), f, &norm);
      const Tensor out = ops::quantized_linear_add(act, ref(down), x1, f);

      for (int round = 0; round < 2; ++round) {
        Chain got{ops::empty({c.n_embd}, dt, Device::cuda), ops::empty({c.n_ff}, dt, Device::cuda),
                  ops::empty({c.n_embd}, dt, Device::cuda)};
        Backend::QuantizedDecodeChain args{};
        args.a = a.raw(), args.x = x.raw(), args.x1 = got.x1.raw(), args.act = got.act.raw(), args.out = got.out.raw();
        args.norm_w = norm_w.raw(), args.eps = norm.eps;
        const ops::AffineQuantized* ws[4] = {&o, &gate, &up, &down};
        for (int i = 0; i < 4; ++i) {
          args.wq[i] = static_cast<const uint32_t*>(ws[i]->wq.raw());
          args.scales[i] = ws[i]->scales.raw();
          args.biases[i] = ws[i]->biases.raw();
        }
        args.n_embd = c.n_embd, args.n_attn = c.n_attn, args.n_ff = c.n_ff;
        args.bits = 4, args.group_size = c.group, args.dt = dt;
        const int64_t before = cuda_decode_chain_launches();
        ASSERT_TRUE(cuda_backend().quantized_decode_chain(args)) << what << ": refused";
        EXPECT_EQ(cuda_decode_chain_launches() - before, 1) << what;
        const std::string w = what + ", round " + std::to_string(round);
        EXPECT_EQ(host(got.x1), host(x1)) << w << ": x1";
        EXPECT_EQ(host(got.act), host(act)) << w << ": swiglu";
        const std::vector<float> want = host(out), have = host(got.out);
        if (c.n_ff <= 12288) {
          EXPECT_EQ(have, want) << w << ": output";
        } else {
          // Variant 7's down against variant 9's: f32 sums of the same terms in other orders (and SPREAD's terms
          // rounded within 2^-12 of scale x each, qgemv_simt.cuh), each then rounded to dt twice (the product, the
          // add). As test_qgemv_fused holds variants that sum in other orders: within 4 ulp of dt of the largest
          // output. (A bound of an ulp of y and of out per element failed on an H100, session 30: under cancellation
          // two orders gave y 2 ulps apart in f16.)
          const float ulp = dt == DType::bf16 ? 0.00390625f : 0.00048828125f;  // 2^-8, 2^-11
          float peak = 0.f, worst = 0.f;
          size_t at = 0;
          for (size_t i = 0; i < want.size(); ++i) {
            peak = std::max(peak, std::fabs(want[i]));
            if (std::fabs(have[i] - want[i]) > worst) worst = std::fabs(have[i] - want[i]), at = i;
          }
          EXPECT_LE(worst, 4 * ulp * peak)
              << w << ": output " << at << " (" << have[at] << " against " << want[at] << "), largest output " << peak;
        }
      }
      // ops' entry point: the same output (through the same launch).
      const Tensor via_ops = ops::quantized_decode_chain(a, ref(o), x, norm, ref(gate), ref(up), ref(down), f);
      ASSERT_TRUE(via_ops.defined()) << what;
      if (c.n_ff <= 12288) {
        EXPECT_EQ(host(via_ops), host(out)) << what << ": ops::quantized_decode_chain";
      }
    }
}

std::vector<uint8_t> bytes(const Tensor& t) {
  const Tensor c = ops::to(t, Device::cpu);
  std::vector<uint8_t> b(size_t(c.nbytes()));
  std::memcpy(b.data(), c.raw(), b.size());
  return b;
}

TEST(DecodeChain, NextQkvEqualsChainThenQkv) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  struct QkvCase {
    int group;
    int64_t n_embd, n_ff, H, KV, D;
  };
  const std::vector<QkvCase> cases = {{64, 512, 1536, 8, 2, 64},
                                      {32, 768, 2048, 6, 2, 128},
                                      {128, 1024, 2816, 16, 4, 64},
                                      {64, 4096, 14336, 32, 8, 128}};
  uint64_t seed = 9101;
  for (DType dt : {DType::bf16, DType::f16})
    for (const QkvCase& c : cases)
      for (bool at : {false, true}) {  // the position on the host, or on the device (a recorded step)
        const std::string what = std::string(dtype_name(dt)) + " group " + std::to_string(c.group) + " n_embd " +
                                 std::to_string(c.n_embd) + " heads " + std::to_string(c.H) + "/" +
                                 std::to_string(c.KV) + "x" + std::to_string(c.D) + (at ? ", device position" : "");
        const QuantFormat f{QuantMode::affine, 4, c.group};
        auto weight = [&](int64_t rows, int64_t in) {
          return ops::quantize_affine(ops::randn({rows, in}, seed += 3, 0.05f, dt, Device::cuda), 4, c.group);
        };
        const int64_t n_attn = c.H * c.D, n_kv = c.KV * c.D;
        const ops::AffineQuantized o = weight(c.n_embd, n_attn), gate = weight(c.n_ff, c.n_embd),
                                   up = weight(c.n_ff, c.n_embd), down = weight(c.n_embd, c.n_ff),
                                   wq = weight(n_attn, c.n_embd), wk = weight(n_kv, c.n_embd),
                                   wv = weight(n_kv, c.n_embd);
        const std::vector<ops::QuantizedWeight> qkv = {ref(wq), ref(wk), ref(wv)};
        const Tensor a = ops::randn({1, 1, n_attn}, seed += 3, 1.f, dt, Device::cuda);
        const Tensor x = ops::randn({1, 1, c.n_embd}, seed += 3, 1.f, dt, Device::cuda);
        auto norm_weight = [&] {
          return ops::add(ops::full({c.n_embd}, 1.f, dt, Device::cuda),
                          ops::randn({c.n_embd}, seed += 3, 0.2f, dt, Device::cuda));
        };
        const Tensor mlp_w = norm_weight(), attn_w = norm_weight();
        const ops::InputNorm mlp_norm{&mlp_w, 1e-5f}, attn_norm{&attn_w, 1e-6f};
        std::vector<float> fr(size_t(c.D / 2));
        for (size_t i = 0; i < fr.size(); ++i) fr[i] = std::pow(10000.f, -2.f * float(i) / float(c.D));
        const Tensor inv_freq = ops::to(Tensor::from_f32(fr, {c.D / 2}), Device::cuda);
        const int64_t cap = 16, pos = 9;
        const Tensor pos_at = ops::to(Tensor::from_i32({int32_t(pos)}, {}), Device::cuda);
        Tensor kc = ops::randn({cap, c.KV, c.D}, seed += 3, 1.f, dt, Device::cuda);
        Tensor vc = ops::randn({cap, c.KV, c.D}, seed += 3, 1.f, dt, Device::cuda);
        Tensor kc_ref = ops::clone(kc), vc_ref = ops::clone(vc);
        const std::vector<uint8_t> k_before = bytes(kc);

        RuntimeConfig rc = runtime_config();
        rc.cuda_qgemv_variant = 9;
        rc.cuda_qgemv_stream = rc.cuda_qgemv_stream_normed = 0;  // the variant's own kernels
        rc.cuda_qgemv_simt_spread = rc.fused_epilogues = rc.cuda_gemv = true;
        rc.cuda_decode_chain = true;
        ScopedRuntimeConfig scoped(rc);
        const ops::RopeAppend rope_ref{&inv_freq, &kc_ref, &vc_ref, at ? 0 : pos, at ? &pos_at : nullptr};
        const Tensor out_ref = ops::quantized_decode_chain(a, ref(o), x, mlp_norm, ref(gate), ref(up), ref(down), f);
        ASSERT_TRUE(out_ref.defined()) << what << ": the three-phase chain refused";
        const Tensor q_ref = ops::quantized_qkv_rope_append(out_ref, qkv, f, &attn_norm, rope_ref);
        ASSERT_TRUE(q_ref.defined()) << what << ": the q/k/v launch refused";

        Tensor q;
        const ops::DecodeChainNext next{
            qkv, attn_norm, {&inv_freq, &kc, &vc, at ? 0 : pos, at ? &pos_at : nullptr}, &q};
        const int64_t before = cuda_decode_chain_qkv_launches();
        const Tensor out = ops::quantized_decode_chain(a, ref(o), x, mlp_norm, ref(gate), ref(up), ref(down), f, &next);
        ASSERT_TRUE(out.defined()) << what << ": the four-phase chain refused";
        EXPECT_EQ(cuda_decode_chain_qkv_launches() - before, 1) << what;
        ASSERT_TRUE(q.defined()) << what;
        EXPECT_EQ(bytes(out), bytes(out_ref)) << what << ": output";
        EXPECT_EQ(bytes(q), bytes(q_ref)) << what << ": q";
        EXPECT_EQ(bytes(kc), bytes(kc_ref)) << what << ": k's cache";
        EXPECT_EQ(bytes(vc), bytes(vc_ref)) << what << ": v's cache";
        EXPECT_NE(bytes(kc), k_before) << what << ": k's row was not written";
      }
}

// Where it cannot run, it declines and launches nothing: the switch off, another variant, SPREAD off, the quantized
// GEMV off (LMTUNE_CUDA_GEMV=0: the separate path takes cuBLASLt), rows too long.
TEST(DecodeChain, Declines) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const DType dt = DType::bf16;
  auto make = [&](int bits, int64_t n_ff) {
    return ops::quantize_affine(ops::randn({n_ff, 256}, 5, 0.05f, dt, Device::cuda), bits, 64);
  };
  const Tensor a = ops::randn({1, 1, 256}, 6, 1.f, dt, Device::cuda),
               x = ops::randn({1, 1, 256}, 7, 1.f, dt, Device::cuda);
  const Tensor norm_w = ops::full({256}, 1.f, dt, Device::cuda);
  const ops::InputNorm norm{&norm_w, 1e-5f};
  const ops::AffineQuantized o = make(4, 256), g = make(4, 512);
  const ops::AffineQuantized d = ops::quantize_affine(ops::randn({256, 512}, 8, 0.05f, dt, Device::cuda), 4, 64);
  const QuantFormat f{QuantMode::affine, 4, 64};
  for (int what = 0; what < 4; ++what) {  // the switch off, variant 7, SPREAD off, the quantized GEMV off
    RuntimeConfig rc = runtime_config();
    rc.cuda_qgemv_variant = what == 1 ? 7 : 9;
    rc.cuda_qgemv_stream = rc.cuda_qgemv_stream_normed = 0;  // the variant's own kernels
    rc.cuda_decode_chain = what != 0;
    rc.cuda_qgemv_simt_spread = what != 2;
    rc.cuda_gemv = what != 3;
    rc.fused_epilogues = true;
    ScopedRuntimeConfig scoped(rc);
    const int64_t before = cuda_decode_chain_launches();
    EXPECT_FALSE(ops::quantized_decode_chain(a, ref(o), x, norm, ref(g), ref(g), ref(d), f).defined()) << what;
    EXPECT_EQ(cuda_decode_chain_launches(), before) << what;
  }
  RuntimeConfig rc = runtime_config();
  rc.cuda_qgemv_variant = 9;
  rc.cuda_qgemv_stream = rc.cuda_qgemv_stream_normed = 0;  // the variant's own kernels
  rc.cuda_qgemv_simt_spread = rc.fused_epilogues = rc.cuda_gemv = true;
  rc.cuda_decode_chain = true;
  ScopedRuntimeConfig scoped(rc);
  EXPECT_TRUE(ops::quantized_decode_chain(a, ref(o), x, norm, ref(g), ref(g), ref(d), f).defined());
  // Rows of down past 16384 (x staged in shared memory would not fit three blocks a multiprocessor).
  const ops::AffineQuantized g_long = make(4, 16448);
  const ops::AffineQuantized d_long = ops::quantize_affine(ops::randn({256, 16448}, 9, 0.05f, dt, Device::cuda), 4, 64);
  EXPECT_FALSE(ops::quantized_decode_chain(a, ref(o), x, norm, ref(g_long), ref(g_long), ref(d_long), f).defined());
}

}  // namespace
}  // namespace lmtune
