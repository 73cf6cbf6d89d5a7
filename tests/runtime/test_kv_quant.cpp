// --kv-bits: the device quantize op equals quant::quantize (MLX-exact) byte for byte; a quantized
// DenseKVCache returns exactly dequantize(quantize(k, v)) of what a dense cache returns (plain,
// converted at `start`, rotating, batch 2), holds packed buffers (smaller, bounded when rotating)
// and refuses bad settings naming them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "models/model.h"
#include "ops/ops.h"
#include "quant/quant.h"
#include "runtime/kv_cache.h"
#include "same_bits.h"

using namespace lmtune;

namespace {

ModelConfig cache_config(int64_t head_dim = 64) {
  ModelConfig c;
  c.model_type = "llama";
  c.n_vocab = 37;
  c.n_embd = 64;
  c.n_ff = 64;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_kv_head = 2;
  c.head_dim = head_dim;
  return c;
}

// What a quantized cache must return for dense keys x (B, S, H, D): MLX's round trip, per row of D.
Tensor round_trip(const Tensor& x, int bits, int group) {
  const int64_t D = x.dim(-1);
  Tensor rows = ops::to(x, Device::cpu).reshape({x.numel() / D, D});
  quant::QuantizedWeight q = quant::quantize(rows, {quant::Mode::affine, bits, group});
  return quant::dequantize(q, x.dtype()).reshape(x.shape());
}

Tensor random_kv(int64_t B, int64_t T, const ModelConfig& c, uint64_t seed) {
  return ops::randn({B, T, c.n_kv_head, c.head_dim}, seed, 1.5f);
}

}  // namespace

// The device op (CPU here; the CUDA kernel against it in test_cuda_quantize) is the reference.
TEST(KVQuant, QuantizeOpEqualsReference) {
  for (DType dt : {DType::f32, DType::bf16, DType::f16})
    for (int bits : {2, 3, 4, 5, 6, 8})
      for (int group : {32, 64, 128}) {
        Tensor x = ops::cast(ops::randn({7, 256}, uint64_t(bits * 1000 + group), 2.f), dt);
        // A constant group, a one-sided group and a huge value: the edge cases of the range.
        if (dt == DType::f32) {
          float* p = x.data<float>();
          for (int j = 0; j < group; ++j) p[j] = 0.25f, p[256 + j] = std::abs(p[256 + j]) + 1.f;
          p[2 * 256 + 3] = 1e6f;
        }
        const std::string what =
            std::string(dtype_name(dt)) + " bits " + std::to_string(bits) + " group " + std::to_string(group);
        ops::AffineQuantized got = ops::quantize_affine(x, bits, group);
        quant::QuantizedWeight want = quant::quantize(x, {quant::Mode::affine, bits, group});
        EXPECT_TRUE(same_bits(got.wq, want.wq, what + " codes"));
        EXPECT_TRUE(same_bits(got.scales, want.scales, what + " scales"));
        EXPECT_TRUE(same_bits(got.biases, want.biases, what + " biases"));
      }
  EXPECT_THROW(ops::quantize_affine(ops::zeros({2, 48}, DType::f32, Device::cpu), 4, 32), Error);
  EXPECT_THROW(ops::quantize_affine(ops::zeros({2, 64}, DType::f32, Device::cpu), 7, 32), Error);
}

// Dense until the cache holds `start` tokens (what was attended so far is exact), then every
// entry, held or new, reads back as MLX's round trip; the buffers shrink to the packed size.
TEST(KVQuant, ConvertsAtStartAndReadsRoundTrip) {
  const ModelConfig c = cache_config();
  for (int bits : {4, 8}) {
    const int group = 32;
    DenseKVCache dense(c, Device::cpu, DType::f32, 1, 0, 4, 8), qc(c, Device::cpu, DType::f32, 1, 0, 4, 8);
    qc.set_quantization({bits, group, 5});
    const int64_t steps[] = {3, 2, 1, 4, 1, 1, 9};  // offset 5 after the second: converted there
    int64_t offset = 0;
    uint64_t seed = 100;
    for (int64_t T : steps) {
      for (int64_t l = 0; l < c.n_layer; ++l) {
        Tensor k = random_kv(1, T, c, ++seed), v = random_kv(1, T, c, ++seed);
        KVCache::View d = dense.update(l, k, v), q = qc.update(l, k, v);
        ASSERT_EQ(q.q_offset, d.q_offset);
        const std::string what = "bits " + std::to_string(bits) + " offset " + std::to_string(offset);
        if (offset < 5) {
          EXPECT_TRUE(same_bits(q.k, d.k, what + " dense k"));
          EXPECT_TRUE(same_bits(q.v, d.v, what + " dense v"));
        } else {
          EXPECT_TRUE(same_bits(q.k, round_trip(d.k, bits, group), what + " k"));
          EXPECT_TRUE(same_bits(q.v, round_trip(d.v, bits, group), what + " v"));
        }
      }
      dense.advance(T);
      qc.advance(T);
      offset += T;
      EXPECT_EQ(qc.quantized(), offset >= 5);
    }
    // Codes + a scale and a bias per group of 32 (f32) against head_dim f32 values per entry.
    const double ratio = double(qc.nbytes()) / double(dense.nbytes());
    EXPECT_NEAR(ratio, (64.0 * bits / 8 + 2 * 2 * 4) / (64.0 * 4), 1e-9) << "bits " << bits;
    EXPECT_EQ(qc.capacity(), dense.capacity());
    // A reset starts over dense, as a new cache would (the start applies again).
    qc.reset();
    EXPECT_FALSE(qc.quantized());
    EXPECT_EQ(qc.nbytes(), 0u);
  }
}

// Rotating and quantized (mlx-lm refuses the combination): entry for entry the dense rotating
// cache's view, round-tripped; the memory stays fixed once full, below the dense one.
TEST(KVQuant, RotatingQuantizedBounded) {
  const ModelConfig c = cache_config();
  for (int64_t start : {0, 9, 20}) {
    DenseKVCache dense(c, Device::cpu, DType::f32, 1, 12, 4, 8), qc(c, Device::cpu, DType::f32, 1, 12, 4, 8);
    qc.set_quantization({4, 64, start});
    uint64_t seed = 7;
    size_t bytes_when_full = 0;
    for (int64_t i = 0; i < 40;) {
      const int64_t T = i == 0 ? 5 : 1;
      for (int64_t l = 0; l < c.n_layer; ++l) {
        Tensor k = random_kv(1, T, c, ++seed), v = random_kv(1, T, c, ++seed);
        KVCache::View d = dense.update(l, k, v), q = qc.update(l, k, v);
        ASSERT_EQ(q.q_offset, d.q_offset);
        ASSERT_EQ(q.positional, d.positional);
        const std::string what = "start " + std::to_string(start) + " offset " + std::to_string(i);
        if (qc.quantized()) {
          EXPECT_TRUE(same_bits(q.k, round_trip(d.k, 4, 64), what + " k"));
          EXPECT_TRUE(same_bits(q.v, round_trip(d.v, 4, 64), what + " v"));
        } else {
          EXPECT_TRUE(same_bits(q.k, d.k, what + " dense k"));
        }
      }
      dense.advance(T);
      qc.advance(T);
      i += T;
      if (i == std::max<int64_t>(start, 12) + 1) bytes_when_full = qc.nbytes();
    }
    EXPECT_TRUE(qc.quantized());
    EXPECT_EQ(qc.size(), 12);
    EXPECT_EQ(qc.nbytes(), bytes_when_full) << "start " << start;
    EXPECT_LT(qc.nbytes() * 5, dense.nbytes()) << "4-bit codes + f32 scales and biases: 6.4x smaller";
  }
}

// Batch 2: each row's view is the batch-1 quantized cache's view of that row.
TEST(KVQuant, BatchTwoMatchesRows) {
  const ModelConfig c = cache_config();
  DenseKVCache two(c, Device::cpu, DType::f32, 2), a(c, Device::cpu, DType::f32), b(c, Device::cpu, DType::f32);
  for (DenseKVCache* x : {&two, &a, &b}) x->set_quantization({3, 32, 2});
  uint64_t seed = 50;
  for (int64_t T : {3, 1, 2}) {
    Tensor k = random_kv(2, T, c, ++seed), v = random_kv(2, T, c, ++seed);
    const Shape one{1, T, c.n_kv_head, c.head_dim};
    KVCache::View q2 = two.update(0, k, v);
    KVCache::View qa = a.update(0, k.slice_rows(0, 1).reshape(one), v.slice_rows(0, 1).reshape(one));
    KVCache::View qb = b.update(0, k.slice_rows(1, 2).reshape(one), v.slice_rows(1, 2).reshape(one));
    const Shape row_shape = qa.k.shape();
    EXPECT_TRUE(same_bits(q2.k.slice_rows(0, 1).reshape(row_shape), qa.k, "row 0 k"));
    EXPECT_TRUE(same_bits(q2.v.slice_rows(1, 2).reshape(row_shape), qb.v, "row 1 v"));
    for (DenseKVCache* x : {&two, &a, &b}) x->advance(T);
  }
  EXPECT_TRUE(two.quantized());
}

TEST(KVQuant, RefusesBadSettings) {
  DenseKVCache c(cache_config(64), Device::cpu, DType::f32);
  auto refused = [&](KVQuantization q, const std::string& words) {
    try {
      c.set_quantization(q);
      ADD_FAILURE() << "accepted " << words;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  refused({7, 64, 0}, "kv bits must be 2, 3, 4, 5, 6 or 8");
  refused({4, 48, 0}, "kv group size must be 32, 64 or 128");
  refused({4, 128, 0}, "does not divide the model's head_dim 64");
  refused({4, 64, -1}, "quantized kv start must be >= 0");
  c.set_quantization({4, 64, 0});
  Tensor k = ops::zeros({1, 1, 2, 64}, DType::f32, Device::cpu);
  (void)c.update(0, k, k);
  c.advance(1);
  refused({8, 64, 0}, "before the first token");
  Tensor pos = ops::zeros({1}, DType::i32, Device::cpu);
  DenseKVCache bound(cache_config(64), Device::cpu, DType::f32);
  bound.set_quantization({4, 64, 0});
  EXPECT_THROW(bound.bind_position(pos), Error);
}
