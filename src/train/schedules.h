// Learning-rate schedules as mlx.optimizers.schedulers defines them, and mlx-lm's
// build_schedule (tuner/utils.py): an optional linear warmup from warmup_init joined to the main
// schedule at step warmup + 1. A schedule maps the number of optimizer updates already made
// (0 for the first update) to the learning rate of the next one.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <vector>

namespace lmtune::train {

using Schedule = std::function<double(int64_t step)>;

Schedule constant_schedule(double lr);
Schedule cosine_decay(double init, int64_t decay_steps, double end = 0.0);
Schedule linear_schedule(double init, double end, int64_t steps);
Schedule exponential_decay(double init, double decay_rate);
Schedule step_decay(double init, double decay_rate, int64_t step_size);
// Schedule i + 1 takes over at boundaries[i] and sees the steps since that boundary.
Schedule join_schedules(std::vector<Schedule> schedules, std::vector<int64_t> boundaries);

// mlx-lm's lr_schedule YAML: {name, arguments: [...], warmup: N, warmup_init: x}; a null config
// gives the constant learning_rate (mlx-lm then ignores --learning-rate only when a schedule is set).
Schedule build_schedule(const nlohmann::json& cfg, double learning_rate);

}  // namespace lmtune::train
