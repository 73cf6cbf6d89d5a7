// Optimizers exactly as mlx.optimizers defines them (Adam, AdamW, SGD, Adafactor, Muon), with mlx's
// defaults and optimizer_config keys; the learning rate comes from a Schedule evaluated at the
// number of updates already made, as mlx's Optimizer.apply_gradients does. Parameters and state
// are f32; updates are in place, so the model's own leaves are trained.
#pragma once
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "train/schedules.h"

namespace lmtune::train {

class Optimizer {
 public:
  explicit Optimizer(Schedule lr) : lr_(std::move(lr)) {}
  virtual ~Optimizer() = default;
  virtual const char* name() const = 0;  // as make_optimizer takes it ("adamw")
  // One update of every parameter from the gradient of the same name (a parameter without a
  // gradient entry, or with an undefined one, is left alone).
  void update(const std::vector<std::pair<std::string, Tensor>>& params, const std::map<std::string, Tensor>& grads);
  // The same, taking each parameter's accumulated autograd gradient.
  void update(const std::vector<std::pair<std::string, Tensor>>& params);
  int64_t step() const { return step_; }               // updates made so far
  double learning_rate() const { return lr_(step_); }  // the rate of the next update
  // State tensors by "<param>.<slot>" (f32, the parameter's device), for checkpoints.
  std::map<std::string, Tensor> state() const;
  void set_state(const std::map<std::string, Tensor>& state, int64_t step);

 protected:
  // t counts this update (1 for the first), as mlx's self.step inside apply_single.
  virtual void apply(const std::string& name, Tensor& p, const Tensor& g, double lr, int64_t t) = 0;
  Tensor& slot(const std::string& name, const std::string& key, const Shape& shape, Device d);
  Schedule lr_;
  int64_t step_ = 0;
  std::map<std::string, std::map<std::string, Tensor>> state_;
};

// name: adam | adamw | sgd | adafactor | muon; config: that optimizer's optimizer_config entry
// (mlx's keyword arguments, e.g. {"betas": [0.9, 0.98], "weight_decay": 0.1}); unknown keys are refused.
std::unique_ptr<Optimizer> make_optimizer(const std::string& name, const nlohmann::json& config, Schedule lr);

}  // namespace lmtune::train
