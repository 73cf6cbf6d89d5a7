// Optimizers and lr schedules against MLX itself (tests/ref/make_optim_golden.py runs
// mlx.optimizers and mlx-lm's build_schedule at test time): the parameters after each of 6
// updates from the same gradients, and schedule values at many steps. Muon, composed from ops,
// also on CUDA against the CPU where a GPU is present.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "ops/ops.h"
#include "tolerance.h"
#include "train/optimizers.h"

using namespace lmtune;
using json = nlohmann::json;

namespace {

std::string ref_dir() {
  const char* d = std::getenv("LMTUNE_OPTIM_GOLDEN_DIR");
  return d && *d ? d : "";
}

json load_meta() {
  std::ifstream f(ref_dir() + "/optim.json");
  EXPECT_TRUE(f.good()) << "no reference at " << ref_dir();
  return f.good() ? json::parse(f) : json();
}

TEST(OptimizersVsMlx, SixUpdates) {
  json meta = load_meta();
  ASSERT_FALSE(meta.is_null());
  SafetensorsFile ref(ref_dir() + "/optim.safetensors");
  int steps = meta["steps"].get<int>();
  std::vector<std::string> names = meta["params"].get<std::vector<std::string>>();
  for (const json& c : meta["cases"]) {
    std::string cname = c["name"].get<std::string>();
    train::Schedule lr =
        c["lr"].is_object() ? train::build_schedule(c["lr"], 0.0) : train::constant_schedule(c["lr"].get<double>());
    auto opt = train::make_optimizer(c["optimizer"].get<std::string>(), c["config"], lr);
    std::vector<std::pair<std::string, Tensor>> params;
    for (const std::string& n : names) params.push_back({n, ops::clone(ref.get("init." + n))});
    double worst = 0;
    for (int k = 0; k < steps; ++k) {
      std::map<std::string, Tensor> grads;
      for (const std::string& n : names) grads[n] = ref.get("grad." + std::to_string(k) + "." + n);
      opt->update(params, grads);
      for (const auto& [n, p] : params) {
        std::vector<float> r = ref.get(cname + "." + std::to_string(k) + "." + n).to_f32_vector();
        double e = max_rel_error(p.to_f32_vector(), r);
        worst = std::max(worst, e);
        // f32 arithmetic in a different order than MLX's: a few ulps per step.
        EXPECT_LE(e, 1e-5) << cname << " step " << k + 1 << " parameter " << n;
      }
    }
    EXPECT_EQ(opt->step(), steps);
    std::printf("%-24s %d updates: worst parameter rel err %.2e\n", cname.c_str(), steps, worst);
  }
}

TEST(SchedulesVsMlx, BuildSchedule) {
  json meta = load_meta();
  ASSERT_FALSE(meta.is_null());
  for (const json& s : meta["schedules"]) {
    train::Schedule f = train::build_schedule(s["config"], 0.0);
    std::vector<int64_t> steps = s["steps"].get<std::vector<int64_t>>();
    std::vector<double> vals = s["values"].get<std::vector<double>>();
    // MLX evaluates in f32 (linear_schedule's end - init cancels, decay_rate**step rounds), we in
    // double: agreement to 1e-5 of the schedule's peak value.
    double peak = 0;
    for (double v : vals) peak = std::max(peak, std::abs(v));
    double worst = 0;
    for (size_t i = 0; i < steps.size(); ++i) {
      double want = vals[i], got = f(steps[i]);
      worst = std::max(worst, std::abs(got - want) / peak);
      EXPECT_LE(std::abs(got - want), 1e-5 * peak) << s["config"].dump() << " at step " << steps[i];
    }
    std::printf("%s: worst |error| / peak %.2e over %zu steps\n", s["config"].dump().c_str(), worst, steps.size());
  }
}

TEST(Optimizers, RefusesUnknownNamesAndKeys) {
  auto lr = train::constant_schedule(1e-3);
  EXPECT_THROW(train::make_optimizer("lion", json::object(), lr), Error);
  EXPECT_THROW(train::make_optimizer("muon", json{{"betas", {0.9, 0.99}}}, lr), Error);
  EXPECT_THROW(train::make_optimizer("muon", json{{"ns_steps", -1}}, lr), Error);
  EXPECT_THROW(train::make_optimizer("adam", json{{"weight_decay", 0.1}}, lr), Error);  // Adam has none
  EXPECT_THROW(train::make_optimizer("adam", json{{"betas", {0.9, 1.0}}}, lr), Error);
  EXPECT_THROW(train::make_optimizer("sgd", json{{"nesterov", true}}, lr), Error);  // needs momentum
  EXPECT_THROW(train::build_schedule(json{{"name", "cosine"}, {"arguments", {1e-3, 10}}}, 1e-3), Error);
  EXPECT_THROW(train::build_schedule(json{{"name", "cosine_decay"}, {"arguments", {1e-3}}}, 1e-3), Error);
  EXPECT_DOUBLE_EQ(train::build_schedule(nullptr, 3e-4)(17), 3e-4);
}

TEST(Optimizers, StateRoundTrip) {
  // Two optimizers fed the same gradients, one restored from the other's state mid-way, agree.
  auto lr = train::constant_schedule(1e-2);
  std::map<std::string, Tensor> g{{"w", Tensor::from_f32({0.5f, -1.f, 2.f, 0.25f, 1.5f, -0.5f}, {2, 3})},
                                  {"b", Tensor::from_f32({0.3f, -0.7f}, {2})}};
  for (const char* name : {"adam", "adamw", "sgd", "adafactor", "muon"}) {
    SCOPED_TRACE(name);
    json cfg = std::string(name) == "sgd" ? json{{"momentum", 0.9}} : json::object();
    std::vector<std::pair<std::string, Tensor>> p1{{"b", Tensor::from_f32({1, -2}, {2})},
                                                   {"w", Tensor::from_f32({1, 2, 3, 4, 5, 6}, {2, 3})}};
    auto o1 = train::make_optimizer(name, cfg, lr);
    EXPECT_EQ(o1->name(), std::string(name));
    o1->update(p1, g);
    std::vector<std::pair<std::string, Tensor>> p2;
    for (auto& [k, t] : p1) p2.push_back({k, ops::clone(t)});
    auto o2 = train::make_optimizer(name, cfg, lr);
    std::map<std::string, Tensor> st;
    for (auto& [k, t] : o1->state()) st[k] = ops::clone(t);
    EXPECT_FALSE(st.empty());
    o2->set_state(st, o1->step());
    o1->update(p1, g);
    o2->update(p2, g);
    for (size_t i = 0; i < p1.size(); ++i) EXPECT_EQ(p1[i].second.to_f32_vector(), p2[i].second.to_f32_vector());
  }
}

TEST(Optimizers, MuonOnCudaMatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  // A tall, a wide, a 3-D and a 1-D parameter; 4 updates with the default Nesterov momentum.
  std::vector<Shape> shapes = {{48, 20}, {16, 40}, {3, 8, 5}, {24}};
  auto lr = train::constant_schedule(2e-2);
  auto cpu = train::make_optimizer("muon", json::object(), lr), gpu = train::make_optimizer("muon", json::object(), lr);
  std::vector<std::pair<std::string, Tensor>> pc, pg;
  for (size_t i = 0; i < shapes.size(); ++i) {
    Tensor t = ops::randn(shapes[i], 100 + i);
    pc.push_back({"p" + std::to_string(i), t});
    pg.push_back({"p" + std::to_string(i), ops::to(t, Device::cuda)});
  }
  for (int k = 0; k < 4; ++k) {
    std::map<std::string, Tensor> gc, gg;
    for (size_t i = 0; i < shapes.size(); ++i) {
      Tensor g = ops::randn(shapes[i], 200 + 10 * k + i, 0.5f);
      gc[pc[i].first] = g;
      gg[pc[i].first] = ops::to(g, Device::cuda);
    }
    cpu->update(pc, gc);
    gpu->update(pg, gg);
  }
  for (size_t i = 0; i < shapes.size(); ++i) {
    EXPECT_EQ(pg[i].second.device(), Device::cuda);
    double e = max_rel_error(ops::to(pg[i].second, Device::cpu).to_f32_vector(), pc[i].second.to_f32_vector());
    // f32 GEMMs in another summation order, through 5 Newton-Schulz steps: a few ulps of the update.
    EXPECT_LE(e, 1e-5) << pc[i].first;
    std::printf("muon cuda vs cpu %s %s: 4 updates, rel err %.2e\n", pc[i].first.c_str(), shape_str(shapes[i]).c_str(),
                e);
  }
}

}  // namespace
