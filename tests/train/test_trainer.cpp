// The training loop (train/trainer.h) on make_lora_golden.py's tiny llama, calling train::train
// directly: a run resumed from a checkpoint ends with the same adapters, byte for byte, as the
// uninterrupted run, for every optimizer (including ones that keep no state: an optimizer file
// with no tensors), and the adapters' dropout counter is theirs once train() has returned.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "core/error.h"
#include "io/safetensors.h"
#include "ops/ops.h"
#include "train/adapters.h"
#include "train/optimizers.h"
#include "train/trainer.h"

using namespace lmtune;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string golden_model(const std::string& c) {
  const char* d = std::getenv("LMTUNE_LORA_GOLDEN_DIR");
  return std::string(d ? d : "") + "/" + c;
}

fs::path work_root() { return fs::temp_directory_path() / ("lmtune-test-trainer-" + std::to_string(::getpid())); }
struct RemoveWorkRoot {
  ~RemoveWorkRoot() { fs::remove_all(work_root()); }
} remove_work_root;

fs::path work_dir(const std::string& name) {
  fs::path d = work_root() / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// Eight texts of 5..12 tokens from llama_gqa's vocabulary of 101; half have a prompt to mask.
train::Dataset toy_data() {
  train::Dataset ds;
  std::mt19937 rng(11);
  for (int i = 0; i < 8; ++i) {
    train::Example ex;
    for (int k = 0; k < 5 + (i * 5) % 8; ++k) ex.tokens.push_back(int32_t(rng() % 101));
    ex.offset = i % 2 ? 2 : 0;
    ex.line = i + 1;
    ds.examples.push_back(ex);
  }
  return ds;
}

std::unique_ptr<Model> adapted_model(float dropout) {
  auto m = load_model(golden_model("llama_gqa"), Device::cpu, DType::f32);
  train::AdapterConfig cfg;
  cfg.num_layers = 1;
  cfg.lora.rank = 4;
  cfg.lora.dropout = dropout;
  train::attach_adapters(*m, cfg, 3);
  return m;
}

struct Quiet {
  std::FILE* f = std::fopen("/dev/null", "w");
  ~Quiet() { std::fclose(f); }
};

train::TrainResult run(Model& m, const std::string& opt_name, const json& cfg, const train::TrainingArgs& args) {
  train::Schedule lr = train::constant_schedule(2e-2);
  auto opt = train::make_optimizer(opt_name, cfg, lr);
  Quiet q;
  return train::train(m, *opt, lr, toy_data(), train::Dataset{}, args, q.f);
}

train::TrainingArgs base_args(const fs::path& dir) {
  train::TrainingArgs a;
  a.batch_size = 2;
  a.iters = 10;
  a.save_every = 3;  // checkpoints 3 and 9 fall between the updates of 2-step accumulation, 6 after one
  a.grad_accumulation_steps = 2;
  a.steps_per_report = 5;
  a.seed = 4;
  a.adapter_path = dir.string();
  return a;
}

struct OptCase {
  const char* name;
  json config;
};

// From checkpoints 3 (a gradient accumulated, pending) and 6 (just after an update: SGD without
// momentum then has nothing at all to save) the resumed run must end where the whole run ends;
// dropout is on, so the restored dropout counter is checked too.
TEST(Trainer, ResumeEqualsUninterruptedRunForEveryOptimizer) {
  const std::vector<OptCase> cases = {
      {"sgd", json::object()},  {"sgd", {{"momentum", 0.9}}},       {"adafactor", json::object()},
      {"adam", json::object()}, {"adamw", {{"weight_decay", 0.1}}}, {"muon", json::object()},
  };
  for (const OptCase& c : cases) {
    std::string label = std::string(c.name) + " " + c.config.dump();
    SCOPED_TRACE(label);
    fs::path dir = work_dir(std::string(c.name) + "-" + std::to_string(&c - cases.data()));
    auto whole = adapted_model(0.1f);
    auto args = base_args(dir / "whole");
    ASSERT_NO_THROW(run(*whole, c.name, c.config, args));
    const std::string want = read_file(dir / "whole" / "adapters.safetensors");
    ASSERT_FALSE(want.empty());
    for (int from : {3, 6}) {
      SCOPED_TRACE("resumed from " + std::to_string(from));
      auto resumed = adapted_model(0.1f);
      auto ra = base_args(dir / ("from" + std::to_string(from)));
      char ck[16];
      std::snprintf(ck, sizeof ck, "%07d", from);
      ra.resume = (dir / "whole" / "checkpoints" / ck).string();
      train::TrainResult r;
      ASSERT_NO_THROW(r = run(*resumed, c.name, c.config, ra));
      EXPECT_EQ(r.iterations, 10);
      EXPECT_TRUE(read_file(ra.adapter_path + "/adapters.safetensors") == want)
          << "final adapters differ from the uninterrupted run's";
      EXPECT_EQ(read_file(ra.adapter_path + "/checkpoints/0000010/optimizer.safetensors"),
                read_file(dir / "whole" / "checkpoints" / "0000010" / "optimizer.safetensors"));
    }
  }
}

TEST(Trainer, ResumeRefusesForeignOptimizerFiles) {
  fs::path dir = work_dir("refusals");
  auto m = adapted_model(0.f);
  auto args = base_args(dir / "whole");
  args.iters = 3;
  run(*m, "adam", json::object(), args);
  const fs::path ck = dir / "whole" / "checkpoints" / "0000003";
  auto resume_with = [&](const std::string& opt) {
    auto again = adapted_model(0.f);
    auto ra = base_args(dir / "again");
    ra.resume = ck.string();
    try {
      run(*again, opt, json::object(), ra);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  // Adam's m and v would be read as another optimizer's slots of the same names.
  EXPECT_NE(resume_with("sgd").find("holds the state of optimizer adam; this run uses sgd"), std::string::npos);
  // An unknown tensor is named with its file, not cut up as "state.<...>".
  const fs::path of = ck / "optimizer.safetensors";
  auto tensors = load_safetensors(of.string());
  tensors.push_back({"stray", Tensor::zeros_cpu({1})});
  save_safetensors(of.string(), tensors);
  std::string e = resume_with("adam");
  EXPECT_NE(e.find(of.string() + ": unknown tensor 'stray'"), std::string::npos) << e;
  tensors.pop_back();
  tensors.push_back({"state.model.layers.9.mlp.up_proj.lora_a.m", Tensor::zeros_cpu({1})});
  save_safetensors(of.string(), tensors);
  e = resume_with("adam");
  EXPECT_NE(e.find("is not the state of a trainable parameter"), std::string::npos) << e;
  // Files written before optimizer files could be empty hold one placeholder tensor, "empty".
  save_safetensors(of.string(), {{"empty", Tensor::zeros_cpu({1})}});
  EXPECT_EQ(resume_with("adam"), "");
}

// After train() returns, the adapters still draw dropout masks from the run's counter: it holds
// the value the last checkpoint recorded, survives another run's frame reusing the stack, is owned
// by the adapters alone, and a grad-enabled forward advances it by one per adapter.
TEST(Trainer, DropoutCounterOutlivesTrain) {
  fs::path dir = work_dir("dropout");
  auto m = adapted_model(0.3f);
  auto args = base_args(dir / "first");
  args.iters = 4;
  args.save_every = 4;
  run(*m, "adam", json::object(), args);
  json st = json::parse(read_file(dir / "first" / "checkpoints" / "0000004" / "trainer_state.json"));
  const uint64_t after = st.at("loop").at("dropout_seed").get<uint64_t>();
  // Another run in between: its frame lands where the first one's was.
  auto other = adapted_model(0.3f);
  auto oargs = base_args(dir / "other");
  oargs.iters = 2;
  oargs.seed = 9;
  run(*other, "adam", json::object(), oargs);

  const size_t n = m->adapters().size();
  ASSERT_EQ(n, 7u);
  for (auto& [name, a] : m->adapters()) {
    ASSERT_TRUE(a.dropout_seed) << name;
    EXPECT_EQ(*a.dropout_seed, after) << name;
    EXPECT_EQ(a.dropout_seed.use_count(), long(n)) << name << ": train() kept a reference, or adapters differ";
  }
  Tensor ids = Tensor::from_i32({1, 5, 9, 2, 7, 3, 8, 4, 6, 0, 11, 12}, {2, 6});
  Tensor targets = Tensor::from_i32({5, 9, 2, 7, 3, 8, 4, 6, 0, 11, 12, 13}, {2, 6});
  float loss = ops::item(m->loss(ids, targets));
  EXPECT_EQ(*m->adapters().begin()->second.dropout_seed, after + n);

  // The same adapters with a fresh counter of that value draw the same masks.
  auto fresh = adapted_model(0.3f);
  train::load_adapter_weights(*fresh, (dir / "first" / "adapters.safetensors").string());
  auto counter = std::make_shared<uint64_t>(after);
  for (auto& [name, a] : fresh->adapters()) a.dropout_seed = counter;
  EXPECT_EQ(ops::item(fresh->loss(ids, targets)), loss);
  EXPECT_EQ(*counter, after + n);
}

}  // namespace
