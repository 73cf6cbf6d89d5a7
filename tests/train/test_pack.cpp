// --pack (lmtune lora): the packer (train::packed_batches, make_packed_batch) keeps every example whole,
// within max_seq_length, with the targets and masks it has alone; positions restart per example; and
// a packed forward (Model::forward with PackedRows) gives each example the per-token losses and LoRA
// gradients of its unpacked run, with no attention across examples. The models are
// make_lora_golden.py's tiny families (GQA, sliding window, bias + tied head), f32 on the CPU;
// PackCuda* (ctest pack_cuda, label gpu) runs the same packed step on CUDA against the CPU.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "autograd/tape.h"
#include "backend/backend.h"
#include "core/error.h"
#include "ops/ops.h"
#include "tolerance.h"
#include "train/adapters.h"
#include "train/dataset.h"
#include "train/optimizers.h"
#include "train/schedules.h"
#include "train/trainer.h"

using namespace lmtune;

namespace {

std::string golden_model(const std::string& c) {
  const char* d = std::getenv("LMTUNE_LORA_GOLDEN_DIR");
  return std::string(d ? d : "") + "/" + c;
}

// n examples of 1..max_len tokens from ids below 60 (every tiny family's vocabulary is larger); every
// third has a prompt to mask.
train::Dataset random_data(int n, int max_len, uint32_t seed) {
  train::Dataset ds;
  std::mt19937 rng(seed);
  for (int i = 0; i < n; ++i) {
    train::Example ex;
    const int len = 1 + int(rng() % uint32_t(max_len));
    for (int k = 0; k < len; ++k) ex.tokens.push_back(int32_t(rng() % 60));
    ex.offset = i % 3 == 1 ? int64_t(rng() % uint32_t(len)) : 0;
    ex.line = i + 1;
    ds.examples.push_back(ex);
  }
  return ds;
}

std::vector<int32_t> ints(const Tensor& t) {
  const int32_t* p = t.data<int32_t>();
  return std::vector<int32_t>(p, p + t.numel());
}

int64_t fill_of(const train::Example& ex, int64_t max_seq) {
  return std::max<int64_t>(0, std::min<int64_t>(int64_t(ex.tokens.size()), max_seq) - 1);
}

TEST(PackRows, EveryExampleOnceWithinMaxLengthWithItsOwnTargets) {
  const train::Dataset ds = random_data(300, 90, 5);
  for (int64_t max_seq : {16, 64, 200})
    for (int64_t bs : {1, 3, 8}) {
      SCOPED_TRACE("max_seq_length " + std::to_string(max_seq) + " batch_size " + std::to_string(bs));
      const auto groups = train::packed_batches(ds, bs, max_seq);
      std::vector<int> seen(ds.size(), 0);
      int64_t rows = 0, filled = 0;
      for (size_t g = 0; g < groups.size(); ++g) {
        ASSERT_FALSE(groups[g].empty());
        ASSERT_LE(int64_t(groups[g].size()), bs);
        if (g + 1 < groups.size()) {
          EXPECT_EQ(int64_t(groups[g].size()), bs) << "only the last group may be short";
        }
        for (const auto& row : groups[g]) {
          int64_t f = 0;
          for (size_t i : row) ++seen[i], f += fill_of(ds.examples[i], max_seq);
          EXPECT_LE(f, max_seq - 1);
          ++rows, filled += f;
        }
        const train::Batch b = train::make_packed_batch(ds, groups[g], max_seq, false);
        const int64_t B = b.inputs.dim(0), T = b.inputs.dim(1);
        ASSERT_EQ(B, int64_t(groups[g].size()));
        ASSERT_LE(T, max_seq - 1);
        const auto in = ints(b.inputs), tg = ints(b.targets), pos = ints(b.positions), seg = ints(b.segments);
        int64_t n_tokens = 0;
        for (int64_t r = 0; r < B; ++r) {
          int64_t at = 0;
          for (size_t i : groups[g][size_t(r)]) {
            // The example alone, as make_batch pads it: its inputs and targets up to its last input.
            const train::Batch u = train::make_batch(ds, {i}, max_seq, false);
            const auto uin = ints(u.inputs), utg = ints(u.targets);
            const int64_t n = fill_of(ds.examples[i], max_seq);
            for (int64_t j = 0; j < n; ++j) {
              const size_t k = size_t(r * T + at + j);
              ASSERT_EQ(in[k], uin[size_t(j)]) << "example " << i << " input " << j;
              ASSERT_EQ(tg[k], utg[size_t(j)]) << "example " << i << " target " << j;
              ASSERT_EQ(pos[k], j) << "positions restart at each example";
              if (j > 0) {
                ASSERT_EQ(seg[k], seg[k - 1]);
              }
              if (j == 0 && at > 0) {
                ASSERT_EQ(seg[k], seg[k - 1] + 1) << "a new example, a new segment";
              }
            }
            for (size_t j = size_t(n); j < utg.size(); ++j) ASSERT_EQ(utg[j], -1) << "nothing supervised past it";
            n_tokens += u.n_tokens;
            at += n;
          }
          for (int64_t k = at; k < T; ++k) {
            EXPECT_EQ(tg[size_t(r * T + k)], -1) << "padding is never a target";
            if (k > 0) {
              EXPECT_GE(seg[size_t(r * T + k)], seg[size_t(r * T + k - 1)]);
            }
          }
        }
        EXPECT_EQ(b.n_tokens, n_tokens);
      }
      for (size_t i = 0; i < ds.size(); ++i) ASSERT_EQ(seen[i], 1) << "example " << i;
      // Best fit decreasing leaves at most one row less than half full.
      int64_t half_empty = 0;
      for (const auto& g : groups)
        for (const auto& row : g) {
          int64_t f = 0;
          for (size_t i : row) f += fill_of(ds.examples[i], max_seq);
          half_empty += 2 * f < max_seq - 1;
        }
      EXPECT_LE(half_empty, 1);
      EXPECT_LE(rows, 2 * (filled + max_seq - 2) / (max_seq - 1) + 1);
    }
}

TEST(PackRows, ClearErrors) {
  const train::Dataset ds = random_data(10, 20, 6);
  EXPECT_THROW(train::packed_batches(train::Dataset{}, 4, 64), Error);
  EXPECT_THROW(train::packed_batches(ds, 0, 64), Error);
  EXPECT_THROW(train::packed_batches(ds, 4, 1), Error);
  train::PackedGroup overfull{{}};
  for (size_t i = 0; i < ds.size(); ++i) overfull[0].push_back(i);
  try {
    train::make_packed_batch(ds, overfull, 16, false);
    FAIL() << "an overfull row was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("more than max_seq_length - 1"), std::string::npos) << e.what();
  }
  // A packed layout the model cannot use: segment ids going down, or shaped unlike the ids.
  auto m = load_model(golden_model("llama_gqa"), Device::cpu, DType::f32);
  Tensor ids = Tensor::from_i32({1, 2, 3, 4}, {1, 4});
  PackedRows bad{Tensor::from_i32({0, 1, 0, 1}, {1, 4}), Tensor::from_i32({0, 0, 1, 0}, {1, 4})};
  EXPECT_THROW(m->forward(ids, bad), Error);
  PackedRows shaped{Tensor::from_i32({0, 1, 0}, {1, 3}), Tensor::from_i32({0, 0, 1}, {1, 3})};
  EXPECT_THROW(m->forward(ids, shaped), Error);
}

TEST(PackRows, RopeAtEqualsRopeOfEachPiece) {
  const int64_t B = 2, T = 9, H = 3, D = 8;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> xv(size_t(B * T * H * D)), inv = {1.f, 0.1f, 0.01f, 0.001f};
  for (float& x : xv) x = u(rng);
  Tensor x = Tensor::from_f32(xv, {B, T, H, D}), f = Tensor::from_f32(inv, {D / 2});
  // Row 0: pieces of 4 and 5 tokens; row 1: one piece of 9 starting at 0.
  Tensor pos = Tensor::from_i32({0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 7, 8}, {B, T});
  const std::vector<float> got = ops::rope_at(x, f, pos, 1.f, false).to_f32_vector();
  const std::vector<float> whole = ops::rope(x, f, 0, 1.f, false).to_f32_vector();
  const size_t row = size_t(T * H * D), tok = size_t(H * D);
  // Row 1 and row 0's first piece are at the positions rope gives from 0.
  for (size_t i = 0; i < row; ++i) EXPECT_EQ(got[row + i], whole[row + i]);
  for (size_t i = 0; i < 4 * tok; ++i) EXPECT_EQ(got[i], whole[i]);
  // Row 0's second piece: tokens 4..8 rotated as tokens 0..4.
  std::vector<float> piece(xv.begin() + long(4 * tok), xv.begin() + long(9 * tok));
  const auto ref = ops::rope(Tensor::from_f32(piece, {1, 5, H, D}), f, 0, 1.f, false).to_f32_vector();
  for (size_t i = 0; i < 5 * tok; ++i) EXPECT_EQ(got[4 * tok + i], ref[i]) << i;
  // The backward rule is the inverse rotation at the same positions: inverse(rope_at(x)) == x.
  const auto back = ops::rope_at(ops::rope_at(x, f, pos, 1.f, false), f, pos, 1.f, true).to_f32_vector();
  expect_close(back, xv, 1e-6, 1e-5, "rope_at inverse");
}

// An adapted f32 model: LoRA rank 4 on every linear layer of every block, A and B drawn here on the
// host (the same on every device; B is zero at creation, which would leave A's gradient zero).
std::unique_ptr<Model> adapted(const std::string& family, Device dev = Device::cpu) {
  auto m = load_model(golden_model(family), dev, DType::f32);
  train::AdapterConfig cfg;
  cfg.num_layers = -1;
  cfg.lora.rank = 4;
  train::attach_adapters(*m, cfg, 9);
  std::mt19937 rng(17);
  std::normal_distribution<float> nd(0.f, 0.05f);
  for (auto& [name, a] : m->adapters())
    for (Tensor* t : {&a.lora_a, &a.lora_b}) {
      std::vector<float> v(size_t(t->numel()));
      for (float& x : v) x = nd(rng);
      Tensor host = Tensor::from_f32(v, t->shape());
      backend(t->device()).copy_h2d(t->raw(), host.raw(), host.nbytes());
    }
  return m;
}

// A packed step's per-token losses (each example's supervised and unsupervised inputs, in row order)
// and LoRA gradients by name.
struct PackedStep {
  std::vector<float> losses;
  std::map<std::string, std::vector<float>> grads;
};

std::map<std::string, std::vector<float>> grads_and_clear(Model& m) {
  std::map<std::string, std::vector<float>> out;
  for (auto& [name, p] : train::trainable_parameters(m)) {
    if (p.ag()->grad.defined()) out[name] = ops::to(p.ag()->grad, Device::cpu).to_f32_vector();
    p.ag()->grad = Tensor();
  }
  return out;
}

// Per-token losses (f32 (B * T)) of a batch, and the backward of their sum.
std::vector<float> token_losses_backward(Model& m, const train::Batch& b, bool packed) {
  const PackedRows rows{b.positions, b.segments};
  Tensor logits = packed ? m.forward(b.inputs, rows) : m.forward(b.inputs);
  Tensor flat = ag::reshape(logits, {b.inputs.numel(), logits.dim(2)});
  Tensor tg = ops::to(b.targets.reshape({b.inputs.numel()}), flat.device());
  std::vector<float> per_token = ops::to(ops::cross_entropy(flat.detach(), tg).loss, Device::cpu).to_f32_vector();
  ag::backward(ag::cross_entropy_sum(flat, tg).sum);
  return per_token;
}

// The packed step against the unpacked runs of the same examples: per-token losses, and the LoRA
// gradients of the summed loss (packed: one backward; unpacked: one per example, accumulated).
void check_packed_equals_unpacked(const std::string& family, bool checkpoint, Device dev, double rtol,
                                  PackedStep* step = nullptr) {
  SCOPED_TRACE(family + (checkpoint ? " with grad checkpointing" : "") + " on " + device_name(dev));
  auto m = adapted(family, dev);
  m->set_grad_checkpoint(checkpoint);
  const train::Dataset ds = random_data(9, 40, 21);
  const int64_t max_seq = 64;
  const auto groups = train::packed_batches(ds, 2, max_seq);
  ASSERT_GE(groups.size(), 2u);
  const train::PackedGroup& g = groups.back();  // the fullest rows
  const train::Batch pb = train::make_packed_batch(ds, g, max_seq, false);
  const std::vector<float> packed = token_losses_backward(*m, pb, true);
  const auto packed_grads = grads_and_clear(*m);
  const int64_t T = pb.inputs.dim(1);
  std::vector<float> got, want;
  for (size_t r = 0; r < g.size(); ++r) {
    int64_t at = 0;
    for (size_t i : g[r]) {
      const train::Batch u = train::make_batch(ds, {i}, max_seq, false);
      const std::vector<float> alone = token_losses_backward(*m, u, false);
      const int64_t n = fill_of(ds.examples[i], max_seq);
      for (int64_t j = 0; j < n; ++j) {
        got.push_back(packed[size_t(int64_t(r) * T + at + j)]);
        want.push_back(alone[size_t(j)]);
      }
      at += n;
    }
  }
  ASSERT_GT(got.size(), 20u);
  expect_close(got, want, 1e-6, rtol, "per-token losses");
  const auto unpacked_grads = grads_and_clear(*m);  // accumulated over the examples' backwards
  ASSERT_EQ(packed_grads.size(), unpacked_grads.size());
  ASSERT_FALSE(packed_grads.empty());
  for (const auto& [name, gp] : packed_grads) {
    const std::vector<float>& gu = unpacked_grads.at(name);
    float mx = 0.f;
    for (float x : gu) mx = std::max(mx, std::fabs(x));
    ASSERT_GT(mx, 0.f) << name << ": a zero gradient would prove nothing";
    expect_close(gp, gu, 1e-5 * mx, rtol, "gradient of " + name);
  }
  // Model::loss with the rows is the mean over the supervised tokens, as unpacked.
  double sum = 0;
  for (float x : packed) sum += x;
  const PackedRows rows{pb.positions, pb.segments};
  ag::NoGradGuard no_grad;
  EXPECT_NEAR(double(ops::item(m->loss(pb.inputs, pb.targets, &rows))), sum / double(pb.n_tokens), 1e-5);
  if (step) *step = {got, packed_grads};
}

TEST(PackModel, LossesAndLoraGradientsEqualUnpacked) {
  for (const char* family : {"llama_gqa", "mistral_window", "qwen2_bias_tied"})
    check_packed_equals_unpacked(family, false, Device::cpu, 1e-4);
  check_packed_equals_unpacked("llama_gqa", true, Device::cpu, 1e-4);
}

// Changing one example's tokens leaves the other examples' logits in the row bit for bit alone.
TEST(PackModel, AttentionNeverCrossesAnExample) {
  auto m = load_model(golden_model("llama_gqa"), Device::cpu, DType::f32);
  train::Dataset ds = random_data(3, 1, 8);
  const int lens[3] = {11, 17, 9};
  std::mt19937 rng(4);
  for (int i = 0; i < 3; ++i) {
    ds.examples[size_t(i)].tokens.clear();
    for (int k = 0; k < lens[i]; ++k) ds.examples[size_t(i)].tokens.push_back(int32_t(rng() % 60));
  }
  const train::PackedGroup one_row{{0, 1, 2}};
  const int64_t V = m->config().n_vocab, n0 = lens[0] - 1, n1 = lens[1] - 1, n2 = lens[2] - 1;
  ag::NoGradGuard no_grad;
  auto logits = [&](const train::Dataset& d) {
    const train::Batch b = train::make_packed_batch(d, one_row, 64, false);
    EXPECT_GE(b.inputs.dim(1), n0 + n1 + n2);
    return m->forward(b.inputs, PackedRows{b.positions, b.segments}).to_f32_vector();
  };
  const std::vector<float> before = logits(ds);
  for (int32_t& t : ds.examples[1].tokens) t = (t + 7) % 60;  // the middle example changes
  const std::vector<float> after = logits(ds);
  size_t changed_mid = 0;
  for (int64_t t = 0; t < n0 + n1 + n2; ++t)
    for (int64_t v = 0; v < V; ++v) {
      const size_t k = size_t(t * V + v);
      if (t >= n0 && t < n0 + n1)
        changed_mid += before[k] != after[k];
      else
        ASSERT_EQ(before[k], after[k]) << "token " << t << " of another example changed";
    }
  EXPECT_GT(changed_mid, 0u) << "the changed example's own logits must change";
}

TEST(PackModel, TrainerRunsPackedAndRefusesAMismatchedResume) {
  auto m = adapted("llama_gqa");
  const train::Dataset ds = random_data(12, 30, 12);
  const auto root = std::filesystem::temp_directory_path() / ("lmtune-test-pack-" + std::to_string(::getpid()));
  std::filesystem::remove_all(root);
  train::TrainingArgs a;
  a.batch_size = 2, a.iters = 3, a.save_every = 2, a.steps_per_report = 1, a.max_seq_length = 48, a.pack = true;
  a.adapter_path = (root / "run").string();
  auto opt = train::make_optimizer("adam", nlohmann::json::object(), train::build_schedule(nullptr, 1e-3));
  std::FILE* quiet = std::fopen("/dev/null", "w");
  const train::TrainResult r = train::train(*m, *opt, train::build_schedule(nullptr, 1e-3), ds, {}, a, quiet);
  EXPECT_EQ(r.iterations, 3);
  train::TrainingArgs b = a;
  b.pack = false, b.iters = 4, b.resume = (root / "run" / "checkpoints" / "0000002").string();
  try {
    train::train(*m, *opt, train::build_schedule(nullptr, 1e-3), ds, {}, b, quiet);
    ADD_FAILURE() << "resuming a packed checkpoint unpacked was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--pack"), std::string::npos) << e.what();
  }
  std::fclose(quiet);
  std::filesystem::remove_all(root);
}

// On CUDA, packed against unpacked as on the CPU, and the packed step's losses and gradients against
// the CPU's (f32; the tiny models' head_dim keeps attention on the gemm path: the flash kernels'
// segment masks are checked by test_cuda_vs_cpu's AttentionPackedRows).
TEST(PackCuda, PackedStepMatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device (or lmtune built without CUDA): skipping";
  for (const auto& [family, checkpoint] : {std::pair{"llama_gqa", false}, std::pair{"mistral_window", true}}) {
    PackedStep gpu, cpu;
    check_packed_equals_unpacked(family, checkpoint, Device::cuda, 2e-3, &gpu);
    check_packed_equals_unpacked(family, checkpoint, Device::cpu, 1e-4, &cpu);
    expect_close(gpu.losses, cpu.losses, 1e-6, 1e-3, std::string(family) + ": CUDA vs CPU packed per-token losses");
    ASSERT_EQ(gpu.grads.size(), cpu.grads.size());
    for (const auto& [name, gc] : cpu.grads) {
      float mx = 0.f;
      for (float x : gc) mx = std::max(mx, std::fabs(x));
      expect_close(gpu.grads.at(name), gc, 1e-4 * mx, 1e-3, std::string(family) + ": CUDA vs CPU gradient of " + name);
    }
  }
}

}  // namespace
