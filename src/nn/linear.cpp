#include "nn/linear.h"

namespace lmtune::nn {

Tensor Linear::forward(const Tensor& x) const { return ag::linear(x, weight, bias); }

}  // namespace lmtune::nn
