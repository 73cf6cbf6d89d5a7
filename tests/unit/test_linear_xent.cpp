// ag::linear_cross_entropy (the fused, chunked head + loss) against the unfused
// cross_entropy(linear(hidden, W)): loss and gradients of hidden and W with chunks that do not
// divide the rows, masked targets, a quantized head, an upstream gradient other than 1, a
// finite-difference check, and the peak allocator bytes of loss + backward. On the CPU; where a
// CUDA device is present, the same comparisons run there in bf16 against the CPU's f32.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "autograd/linear_cross_entropy.h"
#include "backend/backend.h"
#include "core/allocator.h"
#include "core/error.h"
#include "quant/quant.h"
#include "tolerance.h"

using namespace lmtune;

namespace {

Tensor rnd(const Shape& s, uint64_t seed, float std = 1.f) { return ops::randn(s, seed, std); }

ag::HeadWeight dense(const Tensor& w) {
  ag::HeadWeight h;
  h.weight = w;
  return h;
}

// Targets in [0, V) with every `mask_every`-th row (from row 1) ignored; 0: none ignored.
Tensor make_targets(int64_t N, int64_t V, int64_t mask_every, uint64_t seed) {
  std::vector<int32_t> t(static_cast<size_t>(N));
  Tensor r = ops::uniform({N}, seed, 0.f, float(V));
  std::vector<float> u = r.to_f32_vector();
  for (int64_t i = 0; i < N; ++i) {
    t[size_t(i)] = std::min<int32_t>(int32_t(V - 1), int32_t(u[size_t(i)]));
    if (mask_every > 0 && i % mask_every == 1) t[size_t(i)] = i % 2 ? -100 : -1;
  }
  return Tensor::from_i32(t, {N});
}

struct Result {
  std::vector<float> loss, dh, dw;
};

// Loss, d hidden and d W of the fused (chunk_rows >= 0) or unfused (chunk_rows < 0) path; W is a
// trainable leaf when train_w. upstream scales the loss before backward.
Result run(const Tensor& h0, const Tensor& w0, const Tensor& t, int64_t chunk_rows, bool train_w,
           float upstream = 1.f) {
  Tensor h = ag::param(ops::clone(h0)), w = train_w ? ag::param(ops::clone(w0)) : w0;
  Tensor loss =
      chunk_rows < 0 ? ag::cross_entropy(ag::linear(h, w), t) : ag::linear_cross_entropy(h, dense(w), t, chunk_rows);
  Result r;
  r.loss = ops::to(loss, Device::cpu).to_f32_vector();
  ag::backward(upstream == 1.f ? loss : ag::scale(loss, upstream));
  r.dh = ops::to(ops::cast(ag::grad(h), DType::f32), Device::cpu).to_f32_vector();
  if (train_w) r.dw = ops::to(ops::cast(ag::grad(w), DType::f32), Device::cpu).to_f32_vector();
  return r;
}

// f32 on the CPU: the same per-row kernels, so the loss agrees to the rounding of its sum and the
// gradients to that of products summed over other chunks (d W) or fewer rows.
constexpr double kLossRtol = 1e-6, kGradAtol = 1e-7, kGradRtol = 1e-5;

void expect_same(const Result& a, const Result& r, const std::string& what) {
  expect_close(a.loss, r.loss, 0, kLossRtol, what + " loss");
  expect_close(a.dh, r.dh, kGradAtol, kGradRtol, what + " d hidden");
  expect_close(a.dw, r.dw, kGradAtol, kGradRtol, what + " d W");
}

}  // namespace

TEST(LinearCrossEntropy, EqualsUnfusedForAnyChunking) {
  const int64_t N = 37, C = 24, V = 53;
  Tensor h = rnd({N, C}, 1), w = rnd({V, C}, 2, 0.3f);
  for (int64_t mask_every : {0, 3}) {
    Tensor t = make_targets(N, V, mask_every, 3 + uint64_t(mask_every));
    Result ref = run(h, w, t, -1, true);
    for (int64_t chunk : {1, 5, 8, 36, 37, 100, 0}) {
      std::string what = "chunk " + std::to_string(chunk) + " mask_every " + std::to_string(mask_every);
      expect_same(run(h, w, t, chunk, true), ref, what);
    }
    // A frozen head: the hidden gradient alone, the same values.
    Result frozen = run(h, w, t, 7, false), ref_frozen = run(h, w, t, -1, false);
    expect_same(frozen, ref_frozen, "frozen W");
    // An upstream gradient other than 1 (the stored gradients are scaled in backward).
    expect_same(run(h, w, t, 6, true, -2.5f), run(h, w, t, -1, true, -2.5f), "upstream -2.5");
  }
}

TEST(LinearCrossEntropy, DefaultChunkRows) {
  EXPECT_EQ(ag::default_xent_chunk_rows(151936, DType::bf16), 768);  // 883 rows fit 256 MiB
  EXPECT_EQ(ag::default_xent_chunk_rows(128256, DType::bf16), 1024);
  EXPECT_EQ(ag::default_xent_chunk_rows(32768, DType::bf16), 4096);
  EXPECT_EQ(ag::default_xent_chunk_rows(151936, DType::f32), 256);
  EXPECT_EQ(ag::default_xent_chunk_rows(int64_t(3) << 18, DType::f32), 64);  // 85 rows
  EXPECT_EQ(ag::default_xent_chunk_rows(int64_t(1) << 22, DType::f32), 16);
  EXPECT_EQ(ag::default_xent_chunk_rows(int64_t(1) << 30, DType::f32), 1);
}

TEST(LinearCrossEntropy, NoSupervisedTarget) {
  const int64_t N = 9, C = 8, V = 11;
  Tensor h = rnd({N, C}, 4), w = rnd({V, C}, 5);
  Tensor none = Tensor::from_i32(std::vector<int32_t>(size_t(N), -100), {N});
  Result r = run(h, w, none, 4, true);
  EXPECT_EQ(r.loss[0], 0.f);
  for (float v : r.dh) ASSERT_EQ(v, 0.f);
  for (float v : r.dw) ASSERT_EQ(v, 0.f);
  expect_same(r, run(h, w, none, -1, true), "all masked");
}

TEST(LinearCrossEntropy, NoGradRecordsNothing) {
  const int64_t N = 10, C = 8, V = 13;
  Tensor h = ag::param(rnd({N, C}, 6)), w = ag::param(rnd({V, C}, 7));
  Tensor t = make_targets(N, V, 4, 8);
  ag::NoGradGuard ng;
  Tensor fused = ag::linear_cross_entropy(h, dense(w), t, 3);
  EXPECT_FALSE(ag::requires_grad(fused));
  EXPECT_NEAR(ops::item(fused), ops::item(ag::cross_entropy(ag::linear(h, w), t)), 1e-6);
}

TEST(LinearCrossEntropy, BadInputsNamed) {
  Tensor h = rnd({4, 8}, 9), w = rnd({5, 8}, 10);
  auto message = [&](const Tensor& hh, const Tensor& ww, const Tensor& tt) -> std::string {
    try {
      ag::linear_cross_entropy(hh, dense(ww), tt, 2);
    } catch (const Error& e) {
      return e.what();
    }
    return "<no error>";
  };
  EXPECT_NE(message(h, w, Tensor::from_i32({0, 1, 5, 2}, {4})).find("target 5 at row 2"), std::string::npos);
  EXPECT_NE(message(h, w, Tensor::from_i32({0, 1, 2}, {3})).find("targets"), std::string::npos);
  EXPECT_NE(message(h, rnd({5, 7}, 11), Tensor::from_i32({0, 1, 2, 3}, {4})).find("head"), std::string::npos);
}

TEST(LinearCrossEntropy, Gradcheck) {
  const int64_t N = 6, C = 5, V = 9;
  Tensor t = Tensor::from_i32({2, -100, 8, 0, -1, 4}, {6});
  ag::GradcheckResult r =
      ag::gradcheck([t](const std::vector<Tensor>& x) { return ag::linear_cross_entropy(x[0], dense(x[1]), t, 4); },
                    {rnd({N, C}, 12), rnd({V, C}, 13)});
  EXPECT_TRUE(r.ok) << "max abs err " << r.max_abs_err << "\n" << r.report;
}

// A frozen quantized head (QLoRA with a quantized lm_head): logits through the dequantized weight,
// the hidden gradient as ag::quantized_linear's.
TEST(LinearCrossEntropy, QuantizedHead) {
  const int64_t N = 21, C = 64, V = 40;
  Tensor h0 = rnd({N, C}, 14), t = make_targets(N, V, 4, 15);
  quant::QuantizedWeight q = quant::quantize(rnd({V, C}, 16, 0.2f), QuantFormat{QuantMode::affine, 4, 32});
  ag::HeadWeight head{q.wq, q.scales, q.biases, q.params, DType::f32};
  for (int64_t chunk : {4, 0}) {
    Tensor h = ag::param(ops::clone(h0)), hr = ag::param(ops::clone(h0));
    Tensor fused = ag::linear_cross_entropy(h, head, t, chunk);
    Tensor ref = ag::cross_entropy(ag::quantized_linear(hr, q.wq, q.scales, q.biases, q.params), t);
    expect_close({ops::item(fused)}, {ops::item(ref)}, 0, kLossRtol, "quantized loss");
    ag::backward(fused);
    ag::backward(ref);
    expect_close(ag::grad(h).to_f32_vector(), ag::grad(hr).to_f32_vector(), kGradAtol, kGradRtol, "quantized d hidden");
  }
}

// The property the fusion is for: a vocabulary-heavy loss + backward never holds the (N, V) logits
// or their gradient. N = 512 rows, V = 16384, C = 32 in f32: the logits alone are 32 MiB; the fused
// path in chunks of 64 rows holds 4 MiB of logits and 4 MiB of dlogits at a time.
TEST(LinearCrossEntropy, PeakMemoryWellUnderUnfused) {
  const int64_t N = 512, C = 32, V = 16384;
  Tensor h0 = rnd({N, C}, 17), w0 = rnd({V, C}, 18, 0.1f), t = make_targets(N, V, 5, 19);
  CachingAllocator& a = allocator(Device::cpu);
  auto peak_of = [&](int64_t chunk) {
    Tensor h = ag::param(ops::clone(h0));
    size_t base = a.current_bytes();
    a.reset_peak();
    Tensor loss =
        chunk < 0 ? ag::cross_entropy(ag::linear(h, w0), t) : ag::linear_cross_entropy(h, dense(w0), t, chunk);
    ag::backward(loss);
    EXPECT_TRUE(ag::grad(h).defined());
    return double(a.peak_bytes() - base);
  };
  const double unfused = peak_of(-1), fused = peak_of(64);
  const double logits_bytes = double(N * V * 4);
  RecordProperty("unfused_peak_bytes", std::to_string(unfused));
  RecordProperty("fused_peak_bytes", std::to_string(fused));
  std::printf("loss + backward peak above the inputs: unfused %.1f MiB, fused (64 rows) %.1f MiB\n",
              unfused / (1 << 20), fused / (1 << 20));
  EXPECT_GE(unfused, 2 * logits_bytes);  // the logits and dlogits, whole
  EXPECT_LE(fused, unfused / 4);
  EXPECT_LE(fused, logits_bytes / 2);
}

// bf16 on CUDA against f32 on the CPU (skipped without a device).
TEST(LinearCrossEntropy, CudaBf16AgainstCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device (or lmtune built without CUDA): skipping";
  const int64_t N = 300, C = 64, V = 1000;
  Tensor h = rnd({N, C}, 20), w = rnd({V, C}, 21, 0.2f);
  Tensor t = make_targets(N, V, 3, 22);
  Tensor hg = ops::to(h, Device::cuda, DType::bf16), wg = ops::to(w, Device::cuda, DType::bf16);
  // The bf16 inputs themselves on the CPU in f32: what the device computes, up to bf16 products.
  Result ref_rounded = run(ops::cast(ops::to(hg, Device::cpu), DType::f32),
                           ops::cast(ops::to(wg, Device::cpu), DType::f32), t, -1, true);
  for (int64_t chunk : {-1, 7, 128, 0}) {
    Result g = run(hg, wg, t, chunk, true);
    std::string what = "cuda chunk " + std::to_string(chunk);
    expect_close(g.loss, ref_rounded.loss, 0, 1e-2, what + " loss");  // bf16 logits, f32 reductions
    EXPECT_LE(max_rel_error(g.dh, ref_rounded.dh), 2e-2) << what << " d hidden";
    EXPECT_LE(max_rel_error(g.dw, ref_rounded.dw), 2e-2) << what << " d W";
  }
}
