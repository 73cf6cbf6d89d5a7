// Model::forward_packed against each sequence run alone (Model::forward with its own cache), on
// sequences that join at different steps, at different positions, mixing prefill chunks and decode
// tokens in one step. Dense f32, f32 with q/k norms, and 4-bit quantized on the CPU; the same on
// CUDA (f32 weights) in the gpu-labelled binary (LMTUNE_PACKED_CUDA), which skips without a GPU;
// there also the recorded batched step (BatchGraph) against the eager one.
//
// Not bit for bit: alone, a decode step's projections are one-row products (OpenBLAS's GEMV; the
// fused decode kernels), while packed they are rows of a larger GEMM, which sums in another order.
// So each row agrees to f32 rounding (atol 1e-4 + rtol 1e-4 on logits of magnitude ~1, measured
// ~1e-6) and the greedy choices are equal. A single sequence takes forward() itself: exact.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>

#include "backend/backend.h"
#include "batch_fixture.h"
#include "core/error.h"
#include "ops/ops.h"
#include "runtime/batch_graph.h"
#include "runtime/sampler.h"
#include "tolerance.h"

using namespace lmtune;
using namespace lmtune::test;

namespace {

#ifdef LMTUNE_PACKED_CUDA
constexpr Device kDevice = Device::cuda;
constexpr DType kDtype = DType::f32;  // f32 weights: bf16 rounding could flip a near-tie argmax
constexpr double kTol = 1e-3;         // cuBLAS picks other kernels for other row counts
#else
constexpr Device kDevice = Device::cpu;
constexpr DType kDtype = DType::f32;
constexpr double kTol = 1e-4;
#endif

bool device_ready() { return kDevice == Device::cpu || cuda_available(); }

// One sequence's feeds: its prompt in chunks, then decode tokens (fixed, not sampled, so both
// runs feed the same ids), and the step at which it joins the batch.
struct Plan {
  std::vector<int32_t> prompt;
  int64_t chunk;  // prefill chunk size
  int decode;     // decode tokens after the prompt
  int join;       // the packed step at which its first feed runs
  std::vector<std::vector<int32_t>> feeds() const {
    std::vector<std::vector<int32_t>> f;
    for (size_t i = 0; i < prompt.size(); i += size_t(chunk))
      f.emplace_back(prompt.begin() + long(i), prompt.begin() + long(std::min(prompt.size(), i + size_t(chunk))));
    std::vector<int32_t> extra = tokens(size_t(decode), int(prompt.size()) + 3);
    for (int32_t t : extra) f.push_back({t});
    return f;
  }
};

std::vector<Plan> plans() {
  return {{tokens(23, 1), 8, 9, 0},
          {tokens(5, 2), 16, 12, 1},
          {tokens(40, 3), 16, 4, 2},
          {tokens(1, 4), 4, 10, 2},
          {tokens(300, 5), 128, 6, 3}};  // the last one grows past 256
}

void run_case(const TinySpec& spec) {
  auto model = tiny_model(spec);
  const int64_t V = model->config().n_vocab;
  std::vector<Plan> ps = plans();
  // Alone: each sequence's logits after each feed.
  std::vector<std::vector<std::vector<float>>> alone(ps.size());
  for (size_t j = 0; j < ps.size(); ++j) {
    DenseKVCache cache(model->config(), kDevice, kDtype);
    for (const auto& f : ps[j].feeds())
      alone[j].push_back(host_f32(model->forward(Tensor::from_i32(f, {1, int64_t(f.size())}), cache, true)));
  }
  // Packed: at step s every sequence that has joined and has feeds left contributes its next feed.
  std::vector<std::unique_ptr<DenseKVCache>> caches;
  std::vector<size_t> next(ps.size(), 0);
  for (size_t j = 0; j < ps.size(); ++j)
    caches.push_back(std::make_unique<DenseKVCache>(model->config(), kDevice, kDtype));
  int max_rows = 0, mixed_steps = 0;
  double worst = 0;  // the largest |packed - alone| over every logit, printed
  for (int step = 0;; ++step) {
    std::vector<int32_t> ids;
    std::vector<PackedSequence> seqs;
    std::vector<size_t> who;
    bool prefill = false, decode = false;
    for (size_t j = 0; j < ps.size(); ++j) {
      auto feeds = ps[j].feeds();
      if (ps[j].join > step || next[j] >= feeds.size()) continue;
      const auto& f = feeds[next[j]];
      ids.insert(ids.end(), f.begin(), f.end());
      seqs.push_back({int64_t(f.size()), caches[j].get()});
      who.push_back(j);
      (next[j] < (ps[j].prompt.size() + size_t(ps[j].chunk) - 1) / size_t(ps[j].chunk) ? prefill : decode) = true;
    }
    if (seqs.empty()) break;
    max_rows = std::max(max_rows, int(seqs.size()));
    mixed_steps += prefill && decode;
    std::vector<float> got = host_f32(model->forward_packed(Tensor::from_i32(ids, {1, int64_t(ids.size())}), seqs));
    ASSERT_EQ(got.size(), seqs.size() * size_t(V));
    for (size_t r = 0; r < who.size(); ++r) {
      const size_t j = who[r];
      std::vector<float> row(got.begin() + long(r * size_t(V)), got.begin() + long((r + 1) * size_t(V)));
      const std::vector<float>& want = alone[j][next[j]];
      expect_close(row, want, kTol, kTol, "step " + std::to_string(step) + " sequence " + std::to_string(j));
      for (size_t v = 0; v < row.size(); ++v) worst = std::max(worst, double(std::fabs(row[v] - want[v])));
      EXPECT_EQ(Sampler::argmax(row), Sampler::argmax(want)) << "step " << step << " sequence " << j;
      ++next[j];
    }
  }
  for (size_t j = 0; j < ps.size(); ++j) {
    EXPECT_EQ(next[j], alone[j].size());
    EXPECT_EQ(caches[j]->offset(), int64_t(ps[j].prompt.size()) + ps[j].decode);
  }
  std::printf("largest |packed - alone| logit difference: %.3g\n", worst);
  EXPECT_EQ(max_rows, 5) << "every sequence ran in one step at least once";
  EXPECT_GT(mixed_steps, 0) << "a step mixed prefill chunks and decode tokens";
}

}  // namespace

TEST(ForwardPacked, DenseEqualsAlone) {
  if (!device_ready()) GTEST_SKIP() << "no CUDA device";
  run_case({kDevice, kDtype, 0, false});
}

TEST(ForwardPacked, QkNormEqualsAlone) {
  if (!device_ready()) GTEST_SKIP() << "no CUDA device";
  run_case({kDevice, kDtype, 0, true});
}

TEST(ForwardPacked, QuantizedEqualsAlone) {
  if (!device_ready()) GTEST_SKIP() << "no CUDA device";
  run_case({kDevice, kDtype, 4, false});
}

TEST(ForwardPacked, OneSequenceIsForwardItself) {
  if (!device_ready()) GTEST_SKIP() << "no CUDA device";
  auto model = tiny_model({kDevice, kDtype, 0, false});
  DenseKVCache a(model->config(), kDevice, kDtype), b(model->config(), kDevice, kDtype);
  for (const auto& f : {tokens(9, 1), tokens(1, 2), tokens(1, 3)}) {
    Tensor ids = Tensor::from_i32(f, {1, int64_t(f.size())});
    std::vector<float> want = host_f32(model->forward(ids, a, true));
    std::vector<float> got = host_f32(model->forward_packed(ids, {{int64_t(f.size()), &b}}));
    EXPECT_EQ(got, want);
  }
  EXPECT_EQ(b.offset(), 11);
}

TEST(ForwardPacked, RefusesBadLengths) {
  if (!device_ready()) GTEST_SKIP() << "no CUDA device";
  auto model = tiny_model({kDevice, kDtype, 0, false});
  DenseKVCache a(model->config(), kDevice, kDtype), b(model->config(), kDevice, kDtype);
  Tensor ids = Tensor::from_i32(tokens(5, 1), {1, 5});
  EXPECT_THROW(model->forward_packed(ids, {{2, &a}, {2, &b}}), Error);  // sums to 4, not 5
  EXPECT_THROW(model->forward_packed(ids, {{5, &a}, {0, &b}}), Error);  // an empty sequence
  EXPECT_THROW(model->forward_packed(ids, {{3, &a}, {2, nullptr}}), Error);
  EXPECT_THROW(model->forward_packed(ids, {}), Error);
}

// The batched decode-row kernels are CUDA's only: the CPU declines at once, before gathering or
// checking anything (bad shapes pass unnoticed there), while CUDA checks them.
TEST(ForwardPacked, DecodeRowsOnlyWhereTheBackendHasThem) {
  if (!device_ready()) GTEST_SKIP() << "no CUDA device";
  EXPECT_EQ(ops::has_decode_rows(kDevice), kDevice == Device::cuda);
  Tensor q = ops::zeros({2, 4, 64}, kDtype, kDevice), k = ops::zeros({2, 2, 64}, kDtype, kDevice);
  Tensor bad_v = ops::zeros({3, 2, 64}, kDtype, kDevice), inv = ops::zeros({32}, DType::f32, kDevice);
  Tensor out = ops::empty({2, 4 * 64}, kDtype, kDevice);
  Tensor kc = ops::zeros({8, 2, 64}, kDtype, kDevice), vc = ops::zeros({8, 2, 64}, kDtype, kDevice);
  std::vector<ops::DecodeRowRef> rows{{0, 3, kc, vc}, {1, 5, kc, vc}};
  if (kDevice == Device::cpu)
    EXPECT_FALSE(ops::decode_rows_attention(q, k, bad_v, inv, rows, 0.125f, 0, out));
  else
    EXPECT_THROW(ops::decode_rows_attention(q, k, bad_v, inv, rows, 0.125f, 0, out), Error);
}

// runtime/batch_graph.h: decoding steps of n sequences replayed from a recording against the eager
// forward_packed of the same steps on a second set of caches. The same kernels on the same inputs,
// so equal bit for bit; over 70 steps the caches grow (16 positions at a time, so their planes
// move between replays), the tiny model's attention changes its split of the keys as they lengthen
// (recorded again), and the set of sequences changes (another n). Dense and 4-bit weights.
TEST(BatchGraph, ReplaysEqualEagerSteps) {
  if (kDevice != Device::cuda || !cuda_available()) GTEST_SKIP() << "CUDA only (the CPU has no graphs)";
  for (int bits : {0, 4}) {
    auto model = tiny_model({kDevice, kDtype, bits, false});
    const int64_t V = model->config().n_vocab;
    const std::vector<std::vector<int32_t>> prompts = {tokens(5, 1), tokens(30, 2), tokens(61, 3)};
    auto prefilled = [&] {
      std::vector<std::unique_ptr<DenseKVCache>> cs;
      for (const auto& p : prompts) {
        cs.push_back(std::make_unique<DenseKVCache>(model->config(), kDevice, kDtype, 1, 0, 4, 16));
        (void)model->forward(Tensor::from_i32(p, {1, int64_t(p.size())}), *cs.back(), true);
      }
      return cs;
    };
    auto eager = prefilled(), graphed = prefilled();
    std::map<size_t, std::unique_ptr<BatchGraph>> graphs;
    int64_t recordings = 0;
    for (int step = 0; step < 70; ++step) {
      const size_t n = step < 40 ? 3 : 2;  // from step 40 the first sequence has ended
      std::vector<int32_t> ids;
      std::vector<PackedSequence> seqs;
      std::vector<DenseKVCache*> caches;
      for (size_t j = prompts.size() - n; j < prompts.size(); ++j) {
        ids.push_back(int32_t((step * 7 + int(j) * 13) % V));
        seqs.push_back({1, eager[j].get()});
        caches.push_back(graphed[j].get());
      }
      ASSERT_TRUE(BatchGraph::usable(*model, caches));
      std::vector<float> want = host_f32(model->forward_packed(Tensor::from_i32(ids, {1, int64_t(n)}), seqs));
      auto& g = graphs[n];
      if (!g) g = std::make_unique<BatchGraph>(*model, int64_t(n));
      std::vector<float> got = g->step(ids, caches);
      ASSERT_EQ(got.size(), want.size());
      EXPECT_EQ(got, want) << bits << "-bit step " << step;
      for (size_t j = prompts.size() - n; j < prompts.size(); ++j)
        EXPECT_EQ(graphed[j]->offset(), eager[j]->offset()) << "step " << step;
    }
    for (auto& [n, g] : graphs) {
      recordings += g->recordings();
      EXPECT_GT(g->replays(), 20) << n << " sequences";
    }
    std::printf("%d-bit: %lld recordings for %zu sequence counts\n", bits, (long long)recordings, graphs.size());
    EXPECT_GT(recordings, int64_t(graphs.size())) << "the attention's split changed at least once";
  }
}

TEST(BatchGraph, RefusesWhatItCannotRecord) {
  if (kDevice != Device::cuda || !cuda_available()) GTEST_SKIP() << "CUDA only (the CPU has no graphs)";
  auto model = tiny_model({kDevice, kDtype, 0, false});
  DenseKVCache a(model->config(), kDevice, kDtype), b(model->config(), kDevice, kDtype);
  DenseKVCache rotating(model->config(), kDevice, kDtype, 1, 64);
  EXPECT_TRUE(BatchGraph::usable(*model, {&a, &b}));
  EXPECT_FALSE(BatchGraph::usable(*model, {&a}));             // one sequence: DecodeGraph's
  EXPECT_FALSE(BatchGraph::usable(*model, {&a, &rotating}));  // a rotating cache
  EXPECT_THROW(BatchGraph(*model, 1), Error);
  BatchGraph g(*model, 2);
  EXPECT_THROW(g.step({1, 2, 3}, {&a, &b}), Error);                              // three ids for two sequences
  EXPECT_THROW(g.step({1, int32_t(model->config().n_vocab)}, {&a, &b}), Error);  // outside the vocabulary
  EXPECT_EQ(a.offset(), 0);
}
