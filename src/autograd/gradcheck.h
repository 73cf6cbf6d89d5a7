// Finite-difference gradient check: compares backward's gradient of sum(r * f(x)) (r a
// fixed random projection) with central differences, input element by element.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace lmtune::ag {

struct GradcheckResult {
  bool ok = true;
  double max_abs_err = 0, max_rel_err = 0;
  std::string report;  // the worst elements, for a failure message
};

struct GradcheckOptions {
  float eps = 1e-2f;  // step; f32 forward rounding limits how small it can be
  double atol = 1e-3;
  double rtol = 5e-3;
  uint64_t seed = 1234;
};

// inputs: f32 CPU tensors; those listed in check get numeric gradients (all when empty).
GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                          const std::vector<Tensor>& inputs, const GradcheckOptions& opt = {},
                          std::vector<size_t> check = {});

}  // namespace lmtune::ag
