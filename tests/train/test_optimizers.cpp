// Optimizers and lr schedules against MLX itself (tests/ref/make_optim_golden.py runs
// mlx.optimizers and mlx-lm's build_schedule at test time): the parameters after each of 6
// updates from the same gradients, and schedule values at many steps.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

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
    train::Schedule lr = c["lr"].is_object() ? train::build_schedule(c["lr"], 0.0)
                                             : train::constant_schedule(c["lr"].get<double>());
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
  EXPECT_THROW(train::make_optimizer("muon", json::object(), lr), Error);
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
  Tensor g = Tensor::from_f32({0.5f, -1.f, 2.f, 0.25f}, {2, 2});
  std::vector<std::pair<std::string, Tensor>> p1{{"w", Tensor::from_f32({1, 2, 3, 4}, {2, 2})}};
  auto o1 = train::make_optimizer("adamw", json::object(), lr);
  o1->update(p1, {{"w", g}});
  std::vector<std::pair<std::string, Tensor>> p2{{"w", ops::clone(p1[0].second)}};
  auto o2 = train::make_optimizer("adamw", json::object(), lr);
  std::map<std::string, Tensor> st;
  for (auto& [k, t] : o1->state()) st[k] = ops::clone(t);
  o2->set_state(st, o1->step());
  o1->update(p1, {{"w", g}});
  o2->update(p2, {{"w", g}});
  EXPECT_EQ(p1[0].second.to_f32_vector(), p2[0].second.to_f32_vector());
}

}  // namespace
