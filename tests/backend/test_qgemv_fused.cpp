// Decoding's fused quantized steps (ops::quantized_swiglu_linear: gate and up with swiglu in one
// launch; ops::quantized_linear_add: down with the residual add) on CUDA against the plain ops
// they replace, under the GEMV variants that fuse them (5 to 10): the same values bit for bit (the
// fused epilogues round each product to the dtype first, as the plain ops do), on odd sizes and
// Mistral 7B's. Each case also checks that the backend ran the fused kernel, so that the test
// cannot pass by comparing the fallback with itself; variant 0 must fall back.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/runtime_config.h"
#include "ops/ops.h"

namespace lmtune {
namespace {

struct Case {
  int bits, group;
  int64_t M, N, K;
};

std::vector<uint8_t> bytes(const Tensor& t) {
  Tensor h = ops::to(t, Device::cpu);
  const auto* p = static_cast<const uint8_t*>(h.raw());
  return {p, p + h.numel() * dtype_size(h.dtype())};
}

ops::AffineQuantized random_weight(int64_t N, int64_t K, const Case& c, DType dt, uint64_t seed) {
  return ops::quantize_affine(ops::randn({N, K}, seed, 0.05f, dt, Device::cuda), c.bits, c.group);
}

ops::QuantizedWeight ref(const ops::AffineQuantized& w) { return {&w.wq, &w.scales, &w.biases}; }

void check_case(const Case& c, DType dt, int variant, uint64_t seed) {
  const std::string what = std::string(dtype_name(dt)) + " variant " + std::to_string(variant) + " bits " +
                           std::to_string(c.bits) + " group " + std::to_string(c.group) + " M " + std::to_string(c.M) +
                           " N " + std::to_string(c.N) + " K " + std::to_string(c.K);
  const QuantFormat f{QuantMode::affine, c.bits, c.group};
  Tensor x = ops::randn({c.M, c.K}, seed, 1.f, dt, Device::cuda);
  const ops::AffineQuantized gate = random_weight(c.N, c.K, c, dt, seed + 1),
                             up = random_weight(c.N, c.K, c, dt, seed + 2);
  const bool fuses = variant >= 5 && variant <= 10;

  // swiglu(gate, up)
  Tensor fused = ops::quantized_swiglu_linear(x, ref(gate), ref(up), f);
  Tensor plain = ops::swiglu(ops::quantized_linear(x, gate.wq, gate.scales, gate.biases, f),
                             ops::quantized_linear(x, up.wq, up.scales, up.biases, f));
  EXPECT_EQ(bytes(fused), bytes(plain)) << what << ": swiglu";
  Tensor direct = ops::empty({c.M, c.N}, dt, Device::cuda);
  const uint32_t* wqs[2] = {static_cast<const uint32_t*>(gate.wq.raw()), static_cast<const uint32_t*>(up.wq.raw())};
  const void* sc[2] = {gate.scales.raw(), up.scales.raw()};
  const void* bi[2] = {gate.biases.raw(), up.biases.raw()};
  const bool ran =
      cuda_backend().quantized_gemv_swiglu(x.raw(), wqs, sc, bi, direct.raw(), c.M, c.N, c.K, c.bits, c.group, dt);
  ASSERT_EQ(ran, fuses) << what << ": swiglu kernel";
  if (ran) {
    EXPECT_EQ(bytes(direct), bytes(plain)) << what << ": swiglu kernel";
  }

  // residual + down(x), down (N, K) with the residual (M, N)
  Tensor residual = ops::randn({c.M, c.N}, seed + 3, 1.f, dt, Device::cuda);
  Tensor fused_add = ops::quantized_linear_add(x, ref(gate), residual, f);
  Tensor plain_add = ops::add(residual, ops::quantized_linear(x, gate.wq, gate.scales, gate.biases, f));
  EXPECT_EQ(bytes(fused_add), bytes(plain_add)) << what << ": residual add";
  Tensor direct_add = ops::empty({c.M, c.N}, dt, Device::cuda);
  const bool ran_add = cuda_backend().quantized_gemv_add(x.raw(), wqs[0], sc[0], bi[0], residual.raw(),
                                                         direct_add.raw(), c.M, c.N, c.K, c.bits, c.group, dt);
  ASSERT_EQ(ran_add, fuses) << what << ": residual add kernel";
  if (ran_add) {
    EXPECT_EQ(bytes(direct_add), bytes(plain_add)) << what << ": residual add kernel";
  }
}

// Two kernels' outputs side by side: a product, swiglu, the residual add and the three products of one grouped launch
// (a, b and a third matrix v of N / 2 + 3 rows), on the same operands.
struct Operands {
  Case c;
  DType dt;
  std::string what;
  QuantFormat f;
  Tensor x, residual;
  ops::AffineQuantized a, b, v;
};

Operands make_operands(const Case& c, DType dt, uint64_t seed) {
  Operands o{c, dt, "", {QuantMode::affine, c.bits, c.group}, {}, {}, {}, {}, {}};
  o.what = std::string(dtype_name(dt)) + " bits " + std::to_string(c.bits) + " group " + std::to_string(c.group) +
           " M " + std::to_string(c.M) + " N " + std::to_string(c.N) + " K " + std::to_string(c.K);
  o.x = ops::randn({c.M, c.K}, seed, 1.f, dt, Device::cuda);
  o.a = random_weight(c.N, c.K, c, dt, seed + 1);
  o.b = random_weight(c.N, c.K, c, dt, seed + 2);
  o.v = random_weight(c.N / 2 + 3, c.K, c, dt, seed + 3);
  o.residual = ops::randn({c.M, c.N}, seed + 4, 1.f, dt, Device::cuda);
  return o;
}

const char* const kOutputNames[] = {"product", "swiglu", "residual add", "group 0", "group 1", "group 2"};

// The six outputs under the runtime config in force, each through host(tensor); empty if the grouped launch refused.
template <typename Host>
auto run_outputs(const Operands& o, Host host) {
  std::vector<decltype(host(o.x))> out;
  const Case& c = o.c;
  out.push_back(host(ops::quantized_linear(o.x, o.a.wq, o.a.scales, o.a.biases, o.f)));
  out.push_back(host(ops::quantized_swiglu_linear(o.x, ref(o.a), ref(o.b), o.f)));
  out.push_back(host(ops::quantized_linear_add(o.x, ref(o.a), o.residual, o.f)));
  Tensor ys[3] = {ops::empty({c.M, c.N}, o.dt, Device::cuda), ops::empty({c.M, c.N}, o.dt, Device::cuda),
                  ops::empty({c.M, c.N / 2 + 3}, o.dt, Device::cuda)};
  const uint32_t* wqs[3] = {static_cast<const uint32_t*>(o.a.wq.raw()), static_cast<const uint32_t*>(o.b.wq.raw()),
                            static_cast<const uint32_t*>(o.v.wq.raw())};
  const void* sc[3] = {o.a.scales.raw(), o.b.scales.raw(), o.v.scales.raw()};
  const void* bi[3] = {o.a.biases.raw(), o.b.biases.raw(), o.v.biases.raw()};
  void* yp[3] = {ys[0].raw(), ys[1].raw(), ys[2].raw()};
  const int64_t ns[3] = {c.N, c.N, c.N / 2 + 3};
  if (!cuda_backend().quantized_gemv_group(o.x.raw(), wqs, sc, bi, yp, ns, 3, c.M, c.K, c.bits, c.group, o.dt))
    return decltype(out){};
  for (const Tensor& y : ys) out.push_back(host(y));
  return out;
}

std::vector<float> host_f32(const Tensor& t) { return ops::to(t, Device::cpu).to_f32_vector(); }

// The rope epilogue's operands: H query heads and KV kv heads of head_dim D over K inputs, 4-bit q, k and v weights
// (groups of 64), one row of x, a norm's weight near one, rope's inverse frequencies, a cache of 16 rows for k and v
// (random, or zero) and the position 11 as a device value. Not copied: ws(), norm() and the rope's arguments point into
// it.
struct Heads {
  int64_t H, KV, D, K;
};
struct RopeOperands {
  RopeOperands(const Heads& shape, DType dt, uint64_t seed, bool zero_cache)
      : s(shape),
        c{4, 64, 1, s.H * s.D, s.K},
        wq(random_weight(s.H * s.D, s.K, c, dt, seed)),
        wk(random_weight(s.KV * s.D, s.K, c, dt, seed + 1)),
        wv(random_weight(s.KV * s.D, s.K, c, dt, seed + 2)),
        x(ops::randn({1, 1, s.K}, seed + 3, 1.f, dt, Device::cuda)),
        pos_at(ops::to(Tensor::from_i32({int32_t(pos)}, {}), Device::cuda)) {
    std::vector<float> wn = ops::randn({s.K}, seed + 4, 0.2f, DType::f32, Device::cpu).to_f32_vector();
    for (float& u : wn) u += 1.f;
    w = ops::to(Tensor::from_f32(wn, {s.K}), Device::cuda, dt);
    std::vector<float> fr(size_t(s.D / 2));
    for (size_t i = 0; i < fr.size(); ++i) fr[i] = std::pow(10000.f, -2.f * float(i) / float(s.D));
    inv_freq = ops::to(Tensor::from_f32(fr, {s.D / 2}), Device::cuda);
    kc = zero_cache ? ops::zeros({cap, s.KV, s.D}, dt, Device::cuda)
                    : ops::randn({cap, s.KV, s.D}, seed + 5, 1.f, dt, Device::cuda);
    vc = zero_cache ? ops::zeros({cap, s.KV, s.D}, dt, Device::cuda)
                    : ops::randn({cap, s.KV, s.D}, seed + 6, 1.f, dt, Device::cuda);
  }
  RopeOperands(const RopeOperands&) = delete;
  std::vector<ops::QuantizedWeight> ws() const { return {ref(wq), ref(wk), ref(wv)}; }
  // The fused launch into kc and vc (normed: with the input norm; at: the position as a device value): q rotated, or
  // undefined where the backend declined.
  Tensor fused(bool normed, bool at) {
    const ops::InputNorm norm{&w, 1e-5f};
    return ops::quantized_qkv_rope_append(x, ws(), f, normed ? &norm : nullptr,
                                          {&inv_freq, &kc, &vc, at ? 0 : pos, at ? &pos_at : nullptr});
  }
  // The same by the plain ops (rms_norm, the grouped products, rope_append) into k_cache and v_cache.
  Tensor reference(bool normed, bool at, Tensor& k_cache, Tensor& v_cache) const {
    const Tensor h = normed ? ops::rms_norm(x, w, 1e-5f).out : x;
    const std::vector<Tensor> qkv = ops::quantized_linear_group(h, ws(), f);
    return ops::rope_append(qkv[0].reshape({1, 1, s.H, s.D}), qkv[1].reshape({1, 1, s.KV, s.D}),
                            qkv[2].reshape({1, 1, s.KV, s.D}), inv_freq, at ? 0 : pos, at ? &pos_at : nullptr, k_cache,
                            v_cache);
  }
  static constexpr int64_t cap = 16, pos = 11;
  const QuantFormat f{QuantMode::affine, 4, 64};
  Heads s;
  Case c;
  ops::AffineQuantized wq, wk, wv;
  Tensor x, pos_at, w, inv_freq, kc, vc;
};

// The largest difference of got from want over want's largest magnitude (want's peak must not be 0; got no NaN).
void expect_within(const std::vector<float>& got, const std::vector<float>& want, float bound,
                   const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  float peak = 0.f, worst = 0.f;
  for (float u : want) peak = std::max(peak, std::fabs(u));
  for (size_t k = 0; k < got.size(); ++k) {
    ASSERT_FALSE(std::isnan(got[k])) << what << " element " << k;
    worst = std::max(worst, std::fabs(got[k] - want[k]));
  }
  EXPECT_GT(peak, 0.f) << what;
  if (bound == 0.f) {
    EXPECT_EQ(worst, 0.f) << what;
  } else {
    EXPECT_LE(worst, bound * peak) << what;
  }
}

TEST(QgemvFused, SameAsPlainOps) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::vector<Case> cases = {
      {4, 64, 1, 14336, 4096},  // Mistral 7B's gate / up
      {4, 64, 1, 4096, 14336},  // its down
      {4, 64, 1, 8, 128},       // one tile
      {4, 64, 2, 37, 256},      // partial tiles (gate/up tiles of 8 rows, down's of 16)
      {4, 32, 3, 61, 512},      {8, 32, 8, 45, 256},
      {4, 64, 5, 100, 64 * 38},  // K split into uneven pieces (the lean kernel needs an even group count)
  };
  uint64_t seed = 11;
  for (DType dt : {DType::bf16, DType::f16})
    for (int variant : {0, 5, 6, 7, 8, 9, 10, 11}) {  // 11: variant 9 with LMTUNE_CUDA_QGEMV_SIMT_SPREAD=1
      RuntimeConfig rc = runtime_config();
      rc.cuda_qgemv_variant = variant == 11 ? 9 : variant;
      rc.cuda_qgemv_stream = rc.cuda_qgemv_stream_normed = 0;  // the variant's own kernels
      rc.cuda_qgemv_simt_spread = variant == 11;
      ScopedRuntimeConfig scoped(rc);
      for (const Case& c : cases) check_case(c, dt, int(rc.cuda_qgemv_variant), seed += 7);
    }
}

// Variant 7 (qgemv_tma.cu) takes qgemv_lean.cu's tiles, pieces and per-group arithmetic, so every
// product, group, swiglu and residual add must equal variant 5's bit for bit; each shape here fits
// its copies (groups a row a multiple of 8), and the launch counter shows it ran, not the fallback.
TEST(QgemvFused, TmaEqualsLean) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::vector<Case> cases = {
      {4, 64, 1, 14336, 4096}, {4, 64, 1, 4096, 14336}, {4, 64, 1, 1024, 4096}, {4, 64, 3, 37, 512},
      {4, 32, 8, 61, 1024},    {8, 32, 2, 45, 512},     {4, 64, 1, 8, 64 * 40},  // 5 chunks, uneven pieces
  };
  uint64_t seed = 101;
  for (DType dt : {DType::bf16, DType::f16})
    for (const Case& c : cases) {
      const Operands o = make_operands(c, dt, seed += 5);
      const std::string& what = o.what;
      std::vector<std::vector<uint8_t>> out[2];
      for (int run = 0; run < 2; ++run) {
        RuntimeConfig rc = runtime_config();
        rc.cuda_qgemv_variant = run == 0 ? 5 : 7;
        rc.cuda_qgemv_stream = rc.cuda_qgemv_stream_normed = 0;  // the variant's own kernels
        ScopedRuntimeConfig scoped(rc);
        const int64_t before = cuda_qgemv_tma_launches();
        out[run] = run_outputs(o, bytes);
        ASSERT_EQ(out[run].size(), 6u) << what << ": the grouped launch refused";
        if (run == 1) {
          EXPECT_EQ(cuda_qgemv_tma_launches() - before, 4) << what << ": the TMA kernel did not run";
        }
      }
      for (size_t i = 0; i < out[0].size(); ++i) EXPECT_EQ(out[0][i], out[1][i]) << what << ": " << kOutputNames[i];
      std::vector<float> lean_product;
      {
        RuntimeConfig rc = runtime_config();
        rc.cuda_qgemv_variant = 5;
        rc.cuda_qgemv_stream = rc.cuda_qgemv_stream_normed = 0;  // the variant's own kernels
        ScopedRuntimeConfig scoped(rc);
        lean_product = host_f32(ops::quantized_linear(o.x, o.a.wq, o.a.scales, o.a.biases, o.f));
      }
      // Fewer warps a tile (LMTUNE_CUDA_QGEMV_TMA_SPLIT=1: a warp streams all of K through its
      // stages) sums K in another order: the same products to f32 rounding, then one rounding to
      // the dtype (a unit in the last place of bf16 is 2^-8 of the value, hence 1.6e-2 of the
      // largest output, 4 ulp, as the bound).
      RuntimeConfig rc = runtime_config();
      rc.cuda_qgemv_variant = 7;
      rc.cuda_qgemv_stream = rc.cuda_qgemv_stream_normed = 0;  // the variant's own kernels
      rc.cuda_qgemv_tma_split = 1;
      ScopedRuntimeConfig scoped(rc);
      const std::vector<float> got = host_f32(ops::quantized_linear(o.x, o.a.wq, o.a.scales, o.a.biases, o.f));
      expect_within(got, lean_product, 1.6e-2f, what + ": split 1 against the lean kernel");
    }
}

// Variant 8 (qgemv_ring.cu) sums a row's groups in another order than the lean kernel (each of 8
// warps over its groups of every stage, then the warps in order), so its products equal variant
// 5's to f32 rounding and one rounding to the dtype: a unit in the last place of bf16 is 2^-8 of
// the value, hence 1.6e-2 of the largest output (4 ulp) as the bound, as for TMA split 1 above.
// Its own product, swiglu, residual add and group must agree with each other as the plain ops
// (SameAsPlainOps); here every shape fits its copies (groups a row a multiple of 8), the launch
// counter shows it ran, and the shapes cover a stage cut short by K (40 and 24 groups against
// stages of 16 or 32), blocks of several tiles (32000 rows: lm_head) and rows past N.
TEST(QgemvFused, RingMatchesLean) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::vector<Case> cases = {
      {4, 64, 1, 14336, 4096}, {4, 64, 1, 4096, 14336}, {4, 64, 1, 32000, 4096}, {4, 64, 3, 37, 512},
      {4, 32, 8, 61, 1024},    {8, 32, 2, 45, 768},     {4, 64, 1, 8, 64 * 40},  {4, 32, 5, 300, 32 * 24},
  };
  uint64_t seed = 301;
  for (DType dt : {DType::bf16, DType::f16})
    for (const Case& c : cases) {
      const Operands o = make_operands(c, dt, seed += 5);
      const std::string& what = o.what;
      std::vector<std::vector<float>> out[2];
      for (int run = 0; run < 2; ++run) {
        RuntimeConfig rc = runtime_config();
        rc.cuda_qgemv_variant = run == 0 ? 5 : 8;
        rc.cuda_qgemv_stream = rc.cuda_qgemv_stream_normed = 0;  // the variant's own kernels
        ScopedRuntimeConfig scoped(rc);
        const int64_t before = cuda_qgemv_ring_launches();
        out[run] = run_outputs(o, host_f32);
        ASSERT_EQ(out[run].size(), 6u) << what << ": the grouped launch refused";
        if (run == 1) {
          EXPECT_EQ(cuda_qgemv_ring_launches() - before, 4) << what << ": the ring kernel did not run";
        }
      }
      for (size_t i = 0; i < out[0].size(); ++i)
        expect_within(out[1][i], out[0][i], 1.6e-2f, what + ": " + kOutputNames[i] + " against the lean kernel");
      // The ring's own fused epilogues and group equal its plain product bit for bit (a row's sum
      // does not depend on the rows sharing its tile).
      EXPECT_EQ(out[1][3], out[1][0]) << what << ": group 0 against the product";
    }
}

// Variant 10 (qgemv_simt_ring.cu) brings variant 9's chunks through a ring of cp.async stages and sums them in the same
// order, so wherever variant 9 runs (K <= 12288) every product, swiglu, residual add and group must equal it bit for
// bit; Mistral's down (K = 14336), which variant 9 leaves to variant 7, is held to variant 5 within 4 ulp of bf16 (as
// RingMatchesLean). The shapes cover a last stage cut short by K (72 chunks against stages of 64), groups of 32, 64
// and 128, one-row tasks (few rows), several tasks a warp (lm_head) and rows past N; the launch counter shows the
// ring ran, not a fallback.
TEST(QgemvFused, SimtRingEqualsSimt) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::vector<Case> cases = {
      {4, 64, 1, 14336, 4096}, {4, 64, 1, 4096, 14336}, {4, 64, 1, 32000, 4096}, {4, 32, 1, 61, 32 * 72},
      {4, 128, 1, 300, 1024},  {4, 64, 1, 37, 512},     {4, 32, 1, 7001, 768},
  };
  uint64_t seed = 501;
  for (DType dt : {DType::bf16, DType::f16})
    for (const Case& c : cases) {
      const Operands o = make_operands(c, dt, seed += 5);
      const bool exact = c.K <= 12288;
      std::vector<std::vector<float>> out[2];
      for (int run = 0; run < 2; ++run) {
        RuntimeConfig rc = runtime_config();
        rc.cuda_qgemv_variant = run == 1 ? 10 : exact ? 9 : 5;
        rc.cuda_qgemv_stream = rc.cuda_qgemv_stream_normed = 0;  // the variant's own kernels
        rc.cuda_qgemv_simt_spread = false;  // the ring shares variant 9's sums without the SPREAD layout
        ScopedRuntimeConfig scoped(rc);
        const int64_t before = cuda_qgemv_simt_ring_launches();
        out[run] = run_outputs(o, host_f32);
        ASSERT_EQ(out[run].size(), 6u) << o.what << ": the grouped launch refused";
        if (run == 1) {
          EXPECT_EQ(cuda_qgemv_simt_ring_launches() - before, 4) << o.what << ": the ring did not run";
        }
      }
      for (size_t i = 0; i < out[0].size(); ++i)
        expect_within(out[1][i], out[0][i], exact ? 0.f : 1.6e-2f,
                      o.what + ": " + kOutputNames[i] + (exact ? " against variant 9" : " against variant 5"));
    }
}

// Variant 9 with its warps' first round loaded before x is staged (LMTUNE_CUDA_QGEMV_SIMT_EARLY=1), with 4 chunks a
// lane a round for one-row tasks (LMTUNE_CUDA_QGEMV_SIMT_WIDE=1), and with both, against neither: the same loads and
// sums, so the same bits, for each of the six outputs, with and without SPREAD, on shapes with one task a warp or
// several, partial rounds (K = 2304: 72 chunks) and one-row or two-row tasks. The kernels must have run: four early
// launches a run (the product, swiglu, the residual add, the grouped launch), and at least the product and the residual
// add wide where N <= 1024 (one-row tasks on any card of 22 or more multiprocessors).
TEST(QgemvFused, SimtEarlyEqualsSimt) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::vector<Case> cases = {
      {4, 64, 1, 14336, 4096}, {4, 64, 1, 4096, 4096}, {4, 32, 1, 61, 32 * 72}, {4, 128, 1, 300, 1024},
      {4, 64, 1, 37, 512},     {4, 32, 1, 7001, 768},  {4, 64, 1, 1024, 12288},
  };
  uint64_t seed = 1501;
  for (DType dt : {DType::bf16, DType::f16})
    for (bool spread : {false, true})
      for (const Case& c : cases) {
        const Operands o = make_operands(c, dt, seed += 5);
        const std::string what = o.what + (spread ? " SPREAD" : "");
        std::vector<std::vector<float>> out[4];
        for (int mode = 0; mode < 4; ++mode) {  // bit 0: early; bit 1: wide
          const bool early = mode & 1, wide = mode & 2;
          RuntimeConfig rc = runtime_config();
          rc.cuda_qgemv_variant = 9;
          rc.cuda_qgemv_stream = rc.cuda_qgemv_stream_normed = 0;  // the variant's own kernels
          rc.cuda_qgemv_simt_spread = spread;
          rc.cuda_qgemv_simt_early = early;
          rc.cuda_qgemv_simt_wide = wide;
          ScopedRuntimeConfig scoped(rc);
          const int64_t early_before = cuda_qgemv_simt_early_launches(), wide_before = cuda_qgemv_simt_wide_launches();
          out[mode] = run_outputs(o, host_f32);
          ASSERT_EQ(out[mode].size(), 6u) << what << ": the grouped launch refused";
          EXPECT_EQ(cuda_qgemv_simt_early_launches() - early_before, early ? 4 : 0) << what << ": early launches";
          const int64_t wide_launches = cuda_qgemv_simt_wide_launches() - wide_before;
          if (!wide) {
            EXPECT_EQ(wide_launches, 0) << what;
          } else if (c.N <= 1024) {
            EXPECT_GE(wide_launches, 2) << what << ": wide launches";
          }
          if (mode == 0) continue;
          for (size_t i = 0; i < out[0].size(); ++i)
            expect_within(out[mode][i], out[0][i], 0.f,
                          what + ": " + kOutputNames[i] + (early ? " early" : "") + (wide ? " wide" : "") +
                              " against neither");
        }
      }
}

// Variant 9's single products streamed without staging x (LMTUNE_CUDA_QGEMV_STREAM=1, or 2 with two warps a pair of
// rows; qgemv_stream.cu) against variant 9's own kernel without SPREAD: the same chunk arithmetic with each chunk's sum
// of x taken in another order (and with 2 the two warps' sums added at the end), so the product and the residual add
// within 4 ulp of dt of the largest output (as test_decode_chain holds sums in other orders; down's K = 14336 goes to
// variant 7 without the switch). The other four outputs (swiglu, the grouped launch) are not the stream kernel's to
// take: the same bits. Shapes: Mistral's o and down, partial steps (K = 2304: 72 chunks), one row, odd N, K = 256 (one
// warp of a pair idle); M = 3, which the kernel declines. The kernel must have run exactly twice a run where M = 1.
TEST(QgemvFused, StreamMatchesSimt) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::vector<Case> cases = {
      {4, 64, 1, 4096, 14336}, {4, 64, 1, 4096, 4096}, {4, 32, 1, 61, 32 * 72}, {4, 128, 1, 300, 1024},
      {4, 64, 1, 37, 512},     {4, 32, 1, 7001, 768},  {4, 64, 1, 1, 256},      {4, 64, 3, 45, 256},
  };
  uint64_t seed = 2701;
  for (DType dt : {DType::bf16, DType::f16})
    for (const Case& c : cases) {
      const Operands o = make_operands(c, dt, seed += 5);
      const float ulp = dt == DType::bf16 ? 0.00390625f : 0.00048828125f;  // 2^-8, 2^-11
      std::vector<std::vector<float>> out[3];
      for (int stream = 0; stream <= 2; ++stream) {
        RuntimeConfig rc = runtime_config();
        rc.cuda_qgemv_variant = 9;
        rc.cuda_qgemv_simt_spread = false;
        rc.cuda_qgemv_stream = stream;
        ScopedRuntimeConfig scoped(rc);
        const int64_t before = cuda_qgemv_stream_launches();
        out[stream] = run_outputs(o, host_f32);
        ASSERT_EQ(out[stream].size(), 6u) << o.what << ": the grouped launch refused";
        EXPECT_EQ(cuda_qgemv_stream_launches() - before, stream == 0 || c.M != 1 ? 0 : 2)
            << o.what << " stream " << stream << ": launches";
        if (stream == 0) continue;
        for (size_t i = 0; i < out[0].size(); ++i) {
          const bool streamed = i == 0 || i == 2;
          expect_within(out[stream][i], out[0][i], streamed && c.M == 1 ? 4 * ulp : 0.f,
                        o.what + " stream " + std::to_string(stream) + ": " + kOutputNames[i] + " against variant 9");
        }
      }
    }
}

// Variant 9's normed launches streamed (LMTUNE_CUDA_QGEMV_STREAM_NORMED=1, qgemv_stream.cu), rms_norm's factor taken
// out of the sums: q/k/v's grouped products and gate/up's swiglu of rms_norm(x) within 4 ulp of dt of the largest
// output of rms_norm followed by the plain products (the kernel does not round the normed x to dt as rms_norm does);
// the rope epilogue (with and without the norm, the position on the host and on the device): q and k's and v's cache
// rows within 4 ulp of the products followed by rope_append, the rest of the caches untouched. The kernel must have
// run: the normed launches counted.
TEST(QgemvFused, StreamNormedMatchesNormThenProducts) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::vector<Case> cases = {
      {4, 64, 1, 14336, 4096}, {4, 64, 1, 1024, 4096}, {4, 32, 1, 61, 32 * 72}, {4, 128, 1, 300, 1024}};
  uint64_t seed = 3301;
  RuntimeConfig rc = runtime_config();
  rc.cuda_qgemv_variant = 9;
  rc.cuda_qgemv_stream_normed = 1;
  ScopedRuntimeConfig scoped(rc);
  for (DType dt : {DType::bf16, DType::f16}) {
    const float ulp = dt == DType::bf16 ? 0.00390625f : 0.00048828125f;  // 2^-8, 2^-11
    for (const Case& c : cases) {
      const Operands o = make_operands(c, dt, seed += 5);
      std::vector<float> wv = ops::randn({c.K}, seed + 1, 0.2f, DType::f32, Device::cpu).to_f32_vector();
      for (float& u : wv) u += 1.f;  // a norm's weight: near one
      const Tensor w = ops::to(Tensor::from_f32(wv, {c.K}), Device::cuda, dt);
      const ops::InputNorm norm{&w, 1e-5f};
      const Tensor h = ops::rms_norm(o.x, w, 1e-5f).out;
      const std::vector<ops::QuantizedWeight> ws = {ref(o.a), ref(o.b), ref(o.v)};
      const int64_t before = cuda_qgemv_stream_normed_launches();
      const std::vector<Tensor> plain = ops::quantized_linear_group(h, ws, o.f),
                                fused = ops::quantized_linear_group(o.x, ws, o.f, &norm);
      ASSERT_EQ(fused.size(), 3u) << o.what;
      for (int i = 0; i < 3; ++i)
        expect_within(host_f32(fused[i]), host_f32(plain[i]), 4 * ulp, o.what + ": group " + std::to_string(i));
      expect_within(host_f32(ops::quantized_swiglu_linear(o.x, ref(o.a), ref(o.b), o.f, &norm)),
                    host_f32(ops::quantized_swiglu_linear(h, ref(o.a), ref(o.b), o.f)), 4 * ulp, o.what + ": swiglu");
      EXPECT_EQ(cuda_qgemv_stream_normed_launches() - before, 2) << o.what << ": streamed normed launches";
    }
    for (const Heads& s : std::vector<Heads>{{32, 8, 128, 4096}, {6, 2, 48, 768}})
      for (int mode = 0; mode < 4; ++mode) {  // bit 0: the input norm; bit 1: the position on the device
        const bool normed = mode & 1, at = mode & 2;
        const std::string what = std::string(dtype_name(dt)) + " H" + std::to_string(s.H) + " D" + std::to_string(s.D) +
                                 (normed ? ", normed" : "") + (at ? ", position on the device" : "");
        RopeOperands r(s, dt, seed += 7, true);
        Tensor kc_ref = ops::clone(r.kc), vc_ref = ops::clone(r.vc);
        const int64_t before = cuda_qgemv_stream_normed_launches();
        const Tensor q_rot = r.fused(normed, at);
        ASSERT_TRUE(q_rot.defined()) << what;
        EXPECT_EQ(cuda_qgemv_stream_normed_launches() - before, 1) << what << ": streamed normed launches";
        const Tensor q_ref = r.reference(normed, at, kc_ref, vc_ref);
        ASSERT_TRUE(q_ref.defined()) << what;
        // The caches are zero but for row pos, so a bound relative to their largest value is row pos's.
        expect_within(host_f32(q_rot), host_f32(q_ref), 4 * ulp, what + ": q");
        expect_within(host_f32(r.kc), host_f32(kc_ref), 4 * ulp, what + ": k's cache");
        expect_within(host_f32(r.vc), host_f32(vc_ref), 4 * ulp, what + ": v's cache");
      }
  }
}

// Decoding's rms_norm inside the products' staging of x (ops::InputNorm; Backend::quantized_gemv_normed, variants 9 and
// 10): q/k/v's grouped products and gate/up's swiglu of rms_norm(x) equal rms_norm (CudaBackend::rms_norm, the kernel
// it replaces) followed by the plain fused products, bit for bit: the factor is summed in that kernel's order and each
// normed value rounded to the dtype as it writes it. The backend must say it ran the normed kernel (so the test cannot
// compare the fallback with itself); variant 7 has none, and ops/ falls back to the same values.
TEST(QgemvFused, NormedEqualsNormThenProducts) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::vector<Case> cases = {
      {4, 64, 1, 14336, 4096}, {4, 64, 1, 1024, 4096}, {4, 32, 1, 61, 32 * 72},
      {4, 128, 1, 300, 1024},  {4, 64, 1, 7001, 8192}, {4, 64, 1, 37, 12288},
  };
  uint64_t seed = 901;
  for (DType dt : {DType::bf16, DType::f16})
    for (int variant : {7, 9, 10, 11, 12})  // 11: variant 9 with SPREAD; 12: and LMTUNE_CUDA_QGEMV_SIMT_EARLY=1
      for (const Case& c : cases) {
        const Operands o = make_operands(c, dt, seed += 5);
        const std::string what = o.what + " variant " + std::to_string(variant);
        RuntimeConfig rc = runtime_config();
        rc.cuda_qgemv_variant = variant >= 11 ? 9 : variant;
        rc.cuda_qgemv_stream = rc.cuda_qgemv_stream_normed = 0;  // the variant's own kernels
        rc.cuda_qgemv_simt_spread = variant >= 11;
        rc.cuda_qgemv_simt_early = variant == 12;
        ScopedRuntimeConfig scoped(rc);
        std::vector<float> wv = ops::randn({c.K}, seed + 1, 0.2f, DType::f32, Device::cpu).to_f32_vector();
        for (float& u : wv) u += 1.f;  // a norm's weight: near one
        const Tensor w = ops::to(Tensor::from_f32(wv, {c.K}), Device::cuda, dt);
        const float eps = 1e-5f;
        const ops::InputNorm norm{&w, eps};
        const Tensor h = ops::rms_norm(o.x, w, eps).out;
        const std::vector<ops::QuantizedWeight> ws = {ref(o.a), ref(o.b), ref(o.v)};
        const std::vector<Tensor> plain = ops::quantized_linear_group(h, ws, o.f),
                                  fused = ops::quantized_linear_group(o.x, ws, o.f, &norm);
        ASSERT_EQ(fused.size(), 3u) << what;
        for (int i = 0; i < 3; ++i) EXPECT_EQ(bytes(fused[i]), bytes(plain[i])) << what << ": group " << i;
        EXPECT_EQ(bytes(ops::quantized_swiglu_linear(o.x, ref(o.a), ref(o.b), o.f, &norm)),
                  bytes(ops::quantized_swiglu_linear(h, ref(o.a), ref(o.b), o.f)))
            << what << ": swiglu";
        // The kernel itself ran (variant 7: refused).
        Tensor y = ops::empty({1, c.N}, dt, Device::cuda);
        const uint32_t* wqs[2] = {static_cast<const uint32_t*>(o.a.wq.raw()),
                                  static_cast<const uint32_t*>(o.b.wq.raw())};
        const void* sc[2] = {o.a.scales.raw(), o.b.scales.raw()};
        const void* bi[2] = {o.a.biases.raw(), o.b.biases.raw()};
        void* yp[2] = {y.raw(), y.raw()};
        const int64_t ns[2] = {c.N, c.N};
        const bool ran = cuda_backend().quantized_gemv_normed(o.x.raw(), w.raw(), eps, wqs, sc, bi, yp, ns, 2, true,
                                                              c.K, c.bits, c.group, dt);
        ASSERT_EQ(ran, variant != 7) << what << ": the normed kernel";
        if (ran) {
          EXPECT_EQ(bytes(y), bytes(ops::quantized_swiglu_linear(h, ref(o.a), ref(o.b), o.f))) << what << ": kernel";
        }
      }
}

// Decoding's rope and KV-cache append in the q/k/v launch's epilogue (ops::quantized_qkv_rope_append;
// Backend::quantized_gemv_normed's rope, variant 9's kernel): q rotated, k rotated and v into the cache planes, bit for
// bit what the plain grouped products followed by rope_append (the kernel it replaces) give, with and without the input
// norm, at a position given on the host and at one read on the device (a recorded step's). The backend must say it ran
// the rope epilogue; variant 7 has none and writes nothing.
TEST(QgemvFused, RopeAppendEqualsProductsThenRopeAppend) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::vector<Heads> shapes = {{32, 8, 128, 4096}, {4, 2, 64, 1024}, {6, 2, 48, 768}, {14, 2, 64, 896}};
  uint64_t seed = 1201;
  for (DType dt : {DType::bf16, DType::f16})
    for (int variant : {7, 9, 10, 11, 12})  // 10: the rope takes variant 9's kernel; 11: 9 with SPREAD; 12: and EARLY
      for (const Heads& s : shapes)
        for (int mode = 0; mode < 4; ++mode) {  // bit 0: the input norm; bit 1: the position on the device
          const bool normed = mode & 1, at = mode & 2;
          const std::string what = std::string(dtype_name(dt)) + " H" + std::to_string(s.H) + " KV" +
                                   std::to_string(s.KV) + " D" + std::to_string(s.D) + " K" + std::to_string(s.K) +
                                   " variant " + std::to_string(variant) + (normed ? ", normed" : "") +
                                   (at ? ", position on the device" : "");
          RuntimeConfig rc = runtime_config();
          rc.cuda_qgemv_variant = variant >= 11 ? 9 : variant;
          rc.cuda_qgemv_stream = rc.cuda_qgemv_stream_normed = 0;  // the variant's own kernels
          rc.cuda_qgemv_simt_spread = variant >= 11;
          rc.cuda_qgemv_simt_early = variant == 12;
          ScopedRuntimeConfig scoped(rc);
          RopeOperands r(s, dt, seed += 7, false);
          Tensor &kc = r.kc, &vc = r.vc;
          Tensor kc_ref = ops::clone(kc), vc_ref = ops::clone(vc);
          const std::vector<uint8_t> k_before = bytes(kc), v_before = bytes(vc);

          const int64_t launches = cuda_qgemv_rope_launches();
          const Tensor q_rot = r.fused(normed, at);
          const bool ran = variant != 7;
          ASSERT_EQ(q_rot.defined(), ran) << what;
          ASSERT_EQ(cuda_qgemv_rope_launches() - launches, ran ? 1 : 0) << what;
          if (!ran) {
            EXPECT_EQ(bytes(kc), k_before) << what << ": declined, yet k's cache changed";
            EXPECT_EQ(bytes(vc), v_before) << what << ": declined, yet v's cache changed";
            continue;
          }
          const Tensor q_ref = r.reference(normed, at, kc_ref, vc_ref);
          ASSERT_TRUE(q_ref.defined()) << what;
          EXPECT_EQ(bytes(q_rot), bytes(q_ref)) << what << ": q";
          EXPECT_EQ(bytes(kc), bytes(kc_ref)) << what << ": k's cache";
          EXPECT_EQ(bytes(vc), bytes(vc_ref)) << what << ": v's cache";
          EXPECT_NE(bytes(kc), k_before) << what << ": k's row was not written";
        }
}

}  // namespace
}  // namespace lmtune
