// KV cache: decoding token by token (and in uneven prefill chunks) through DenseKVCache gives the
// logits of one full-sequence forward; the rotating cache equals the full one until it fills,
// then keeps going with bounded memory; batch 2 matches batch 1 row by row.
#include <gtest/gtest.h>

#include "autograd/tape.h"
#include "models/model.h"
#include "ops/ops.h"
#include "runtime/kv_cache.h"
#include "tolerance.h"

using namespace lmtune;

namespace {

ModelConfig tiny_config(const std::string& type, int64_t window) {
  ModelConfig c;
  c.model_type = type;
  c.n_vocab = 37;
  c.n_embd = 32;
  c.n_ff = 48;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_kv_head = 2;
  c.head_dim = 8;
  c.rms_norm_eps = 1e-5;
  c.qkv_bias = type == "qwen2";
  c.layer_window = {0, window};
  return c;
}

std::unique_ptr<Model> random_model(const ModelConfig& cfg, uint64_t seed) {
  auto m = create_model(cfg);
  std::map<std::string, Tensor> w;
  uint64_t s = seed;
  for (const TensorSpec& spec : m->tensor_specs()) {
    bool norm = spec.name.find("norm") != std::string::npos;
    float std = norm ? 0.1f : 1.f / std::sqrt(float(spec.shape.back()));
    Tensor t = ops::randn(spec.shape, ++s, std);
    if (norm) t = ops::add(t, ops::full(spec.shape, 1.f, DType::f32, Device::cpu));
    w[spec.name] = t;
  }
  m->set_weights(std::move(w));
  return m;
}

Tensor ids_of(const std::vector<int32_t>& v, int64_t B = 1) { return Tensor::from_i32(v, {B, int64_t(v.size()) / B}); }

std::vector<float> row(const Tensor& logits, int64_t b, int64_t t) {
  std::vector<float> all = ops::to(logits, Device::cpu, DType::f32).to_f32_vector();
  int64_t T = logits.dim(1), V = logits.dim(2);
  return std::vector<float>(all.begin() + (b * T + t) * V, all.begin() + (b * T + t + 1) * V);
}

std::vector<int32_t> seq(int n, int vocab, int seed) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) v[size_t(i)] = (i * 7 + seed * 13 + i * i) % vocab;
  return v;
}

}  // namespace

class CacheFamilies : public ::testing::TestWithParam<std::pair<std::string, int64_t>> {};

TEST_P(CacheFamilies, DecodeEqualsFullForward) {
  auto [type, window] = GetParam();
  auto model = random_model(tiny_config(type, window), 11);
  std::vector<int32_t> ids = seq(19, 37, 1);
  Tensor full;
  {
    ag::NoGradGuard g;
    full = model->forward(ids_of(ids));
  }
  // Prefill 5, then chunks of 3 and 1, with a growth step of 4 so the buffers regrow.
  DenseKVCache cache(model->config(), Device::cpu, DType::f32, 1, 0, 4, 4);
  size_t pos = 0;
  for (size_t n : {5, 3, 1, 1, 4, 1, 1, 1, 1, 1}) {
    std::vector<int32_t> part(ids.begin() + long(pos), ids.begin() + long(pos + n));
    Tensor lg = model->forward(ids_of(part), cache);
    ASSERT_EQ(lg.dim(1), int64_t(n));
    for (size_t t = 0; t < n; ++t)
      expect_close(row(lg, 0, int64_t(t)), row(full, 0, int64_t(pos + t)), 1e-4, 1e-4,
                   "position " + std::to_string(pos + t));
    pos += n;
  }
  EXPECT_EQ(cache.offset(), 19);
  EXPECT_EQ(cache.capacity(), 20);
  // last_only gives the last position's logits.
  DenseKVCache c2(model->config(), Device::cpu, DType::f32);
  Tensor last = model->forward(ids_of(ids), c2, true);
  ASSERT_EQ(last.dim(1), 1);
  expect_close(row(last, 0, 0), row(full, 0, 18), 1e-4, 1e-4, "last_only");
}

// The recorded decode step's path (runtime/decode_graph.h) with the position bound as a tensor,
// here on the CPU where the position is host memory: token by token it gives the same logits
// as the ordinary cached forward, with sliding windows, over a capacity larger than the tokens.
TEST_P(CacheFamilies, RunTimePositionEqualsOrdinaryDecode) {
  auto [type, window] = GetParam();
  auto model = random_model(tiny_config(type, window), 12);
  std::vector<int32_t> ids = seq(13, 37, 2);
  DenseKVCache plain(model->config(), Device::cpu, DType::f32, 1, 0, 4, 4);
  DenseKVCache bound(model->config(), Device::cpu, DType::f32, 1, 0, 4, 4);
  std::vector<int32_t> prompt(ids.begin(), ids.begin() + 4);
  model->forward(ids_of(prompt), plain);
  model->forward(ids_of(prompt), bound);
  Tensor pos = Tensor::from_i32({0}, {1});
  bound.reserve(64);  // as the graph does: nothing grows while the position is bound
  for (size_t t = 4; t < ids.size(); ++t) {
    Tensor want = model->forward(ids_of({ids[t]}), plain, true);
    pos.data<int32_t>()[0] = int32_t(bound.offset());
    bound.bind_position(pos);
    Tensor got = model->forward(ids_of({ids[t]}), bound, true);
    bound.unbind_position();
    expect_close(row(got, 0, 0), row(want, 0, 0), 1e-5, 1e-5, "position " + std::to_string(t));
  }
  EXPECT_EQ(bound.offset(), 13);
  EXPECT_EQ(bound.capacity(), 64);
  // Capacity must be reserved first; rotating caches and batch 2 are refused.
  DenseKVCache small(model->config(), Device::cpu, DType::f32, 1, 0, 4, 4);
  small.bind_position(pos);
  EXPECT_THROW(model->forward(ids_of({1}), small, true), std::exception);
  DenseKVCache rot(model->config(), Device::cpu, DType::f32, 1, 12, 4, 8);
  EXPECT_THROW(rot.bind_position(pos), std::exception);
  DenseKVCache two(model->config(), Device::cpu, DType::f32, 2);
  EXPECT_THROW(two.bind_position(pos), std::exception);
}

INSTANTIATE_TEST_SUITE_P(Runtime, CacheFamilies,
                         ::testing::Values(std::make_pair(std::string("llama"), int64_t(0)),
                                           std::make_pair(std::string("mistral"), int64_t(5)),
                                           std::make_pair(std::string("qwen2"), int64_t(3))));

TEST(KVCache, BatchTwoMatchesRows) {
  auto model = random_model(tiny_config("llama", 0), 3);
  std::vector<int32_t> a = seq(9, 37, 2), b = seq(9, 37, 5);
  DenseKVCache cache(model->config(), Device::cpu, DType::f32, 2, 0, 4, 4);
  (void)model->forward(ids_of({a[0], a[1], a[2], b[0], b[1], b[2]}, 2), cache);
  Tensor pre = ids_of({a[3], a[4], a[5], b[3], b[4], b[5]}, 2);
  Tensor lg = model->forward(pre, cache, true);
  ag::NoGradGuard g;
  Tensor fa = model->forward(ids_of(std::vector<int32_t>(a.begin(), a.begin() + 6)));
  Tensor fb = model->forward(ids_of(std::vector<int32_t>(b.begin(), b.begin() + 6)));
  expect_close(row(lg, 0, 0), row(fa, 0, 5), 1e-4, 1e-4, "row 0");
  expect_close(row(lg, 1, 0), row(fb, 0, 5), 1e-4, 1e-4, "row 1");
}

TEST(KVCache, RotatingEqualsFullUntilFullThenStaysBounded) {
  auto model = random_model(tiny_config("llama", 0), 5);
  std::vector<int32_t> ids = seq(40, 37, 3);
  DenseKVCache full(model->config(), Device::cpu, DType::f32);
  DenseKVCache rot(model->config(), Device::cpu, DType::f32, 1, 12, 4, 8);
  // A 7-token prefill, then one token at a time up to 12: identical logits.
  std::vector<int32_t> p(ids.begin(), ids.begin() + 7);
  expect_close(row(model->forward(ids_of(p), rot), 0, 6), row(model->forward(ids_of(p), full), 0, 6), 1e-5, 1e-5,
               "prefill");
  for (int i = 7; i < 12; ++i)
    expect_close(row(model->forward(ids_of({ids[size_t(i)]}), rot), 0, 0),
                 row(model->forward(ids_of({ids[size_t(i)]}), full), 0, 0), 1e-5, 1e-5, "decode " + std::to_string(i));
  EXPECT_EQ(rot.capacity(), 12);
  // Past the size: keeps going, memory fixed, finite logits.
  size_t bytes = rot.nbytes();
  for (int i = 12; i < 40; ++i) {
    std::vector<float> r = row(model->forward(ids_of({ids[size_t(i)]}), rot), 0, 0);
    for (float x : r) ASSERT_TRUE(std::isfinite(x));
  }
  EXPECT_EQ(rot.offset(), 40);
  EXPECT_EQ(rot.size(), 12);
  EXPECT_EQ(rot.nbytes(), bytes);
  EXPECT_FALSE(rot.can_trim_to(30));
}

TEST(KVCache, RotatingLongPromptSplitsLikeTokenByToken) {
  // A long prompt into a rotating cache is split by forward (linear until full, then one token
  // at a time): the same as feeding it token by token.
  auto model = random_model(tiny_config("llama", 0), 9);
  std::vector<int32_t> ids = seq(30, 37, 4);
  DenseKVCache a(model->config(), Device::cpu, DType::f32, 1, 10, 4, 256);
  DenseKVCache b(model->config(), Device::cpu, DType::f32, 1, 10, 4, 256);
  Tensor la = model->forward(ids_of(ids), a, true);  // split internally: 10 linear, then 1 by 1
  for (int32_t id : ids) (void)model->forward(ids_of({id}), b);
  EXPECT_EQ(a.offset(), 30);
  Tensor lb_next = model->forward(ids_of({1}), b);
  Tensor la_next = model->forward(ids_of({1}), a);
  expect_close(row(la_next, 0, 0), row(lb_next, 0, 0), 1e-5, 1e-5, "automatic split equals token by token");
}

TEST(KVCache, TrimAndRefused) {
  auto model = random_model(tiny_config("llama", 0), 5);
  std::vector<int32_t> ids = seq(10, 37, 3);
  DenseKVCache c(model->config(), Device::cpu, DType::f32);
  Tensor l1 = model->forward(ids_of(ids), c, true);
  c.trim_to(6);
  Tensor l2 = model->forward(ids_of(std::vector<int32_t>(ids.begin() + 6, ids.end())), c, true);
  expect_close(row(l2, 0, 0), row(l1, 0, 0), 1e-5, 1e-5, "trim then re-prefill");
  EXPECT_THROW(c.trim_to(11), std::exception);
  EXPECT_THROW(DenseKVCache(model->config(), Device::cpu, DType::f32, 1, 4, 4), std::exception);
}
