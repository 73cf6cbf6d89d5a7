#include "train/schedules.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace lmtune::train {

using json = nlohmann::json;

Schedule constant_schedule(double lr) {
  return [lr](int64_t) { return lr; };
}

Schedule cosine_decay(double init, int64_t decay_steps, double end) {
  LMT_CHECK(decay_steps >= 1, "[cosine_decay] decay_steps must be greater than 0, but got ", decay_steps);
  return [=](int64_t step) {
    double s = double(std::min(step, decay_steps));
    double decay = 0.5 * (1.0 + std::cos(M_PI / double(decay_steps) * s));
    return end + decay * (init - end);
  };
}

Schedule linear_schedule(double init, double end, int64_t steps) {
  LMT_CHECK(steps >= 1, "[linear_schedule] steps must be greater than 0, but got ", steps);
  return [=](int64_t step) { return double(std::min(step, steps)) * ((end - init) / double(steps)) + init; };
}

Schedule exponential_decay(double init, double decay_rate) {
  return [=](int64_t step) { return init * std::pow(decay_rate, double(step)); };
}

Schedule step_decay(double init, double decay_rate, int64_t step_size) {
  LMT_CHECK(step_size >= 1, "[step_decay] step_size must be greater than 0, but got ", step_size);
  return [=](int64_t step) { return init * std::pow(decay_rate, double(step / step_size)); };
}

Schedule join_schedules(std::vector<Schedule> schedules, std::vector<int64_t> boundaries) {
  LMT_CHECK(!schedules.empty(), "[join_schedules] must provide at least 1 schedule to join");
  LMT_CHECK(schedules.size() == boundaries.size() + 1, "[join_schedules] received ", boundaries.size(),
            " boundaries but expected ", schedules.size() - 1);
  return [=](int64_t step) {
    double out = schedules[0](step);
    for (size_t i = 0; i < boundaries.size(); ++i)
      if (step >= boundaries[i]) out = schedules[i + 1](step - boundaries[i]);
    return out;
  };
}

Schedule build_schedule(const json& cfg, double learning_rate) {
  if (cfg.is_null()) return constant_schedule(learning_rate);
  LMT_CHECK(cfg.is_object() && cfg.contains("name") && cfg.contains("arguments") && cfg["arguments"].is_array(),
            "[lr_schedule] needs {name, arguments: [...]}, got ", cfg.dump());
  std::string name = cfg["name"].get<std::string>();
  const json& a = cfg["arguments"];
  auto arg = [&](size_t i, const char* what) {
    LMT_CHECK(i < a.size() && a[i].is_number(), "[lr_schedule] ", name, " needs argument ", i + 1, " (", what,
              "), got ", a.dump());
    return a[i].get<double>();
  };
  auto count = [&](size_t expect_min, size_t expect_max) {
    LMT_CHECK(a.size() >= expect_min && a.size() <= expect_max, "[lr_schedule] ", name, " takes ", expect_min,
              expect_min == expect_max ? "" : "-" + std::to_string(expect_max), " arguments, got ", a.dump());
  };
  Schedule main;
  if (name == "cosine_decay") {
    count(2, 3);
    main = cosine_decay(arg(0, "init"), int64_t(arg(1, "decay_steps")), a.size() > 2 ? arg(2, "end") : 0.0);
  } else if (name == "linear_schedule") {
    count(3, 3);
    main = linear_schedule(arg(0, "init"), arg(1, "end"), int64_t(arg(2, "steps")));
  } else if (name == "exponential_decay") {
    count(2, 2);
    main = exponential_decay(arg(0, "init"), arg(1, "decay_rate"));
  } else if (name == "step_decay") {
    count(3, 3);
    main = step_decay(arg(0, "init"), arg(1, "decay_rate"), int64_t(arg(2, "step_size")));
  } else {
    fail("[lr_schedule] unknown schedule '", name, "' (cosine_decay, linear_schedule, exponential_decay, step_decay)");
  }
  int64_t warmup = cfg.value("warmup", int64_t(0));
  if (warmup == 0) return main;
  double warmup_init = cfg.value("warmup_init", 0.0);
  return join_schedules({linear_schedule(warmup_init, arg(0, "init"), warmup), main}, {warmup + 1});
}

}  // namespace lmtune::train
