#include "train/data_parallel.h"

#include <algorithm>

#include "autograd/tape.h"
#include "core/error.h"
#include "ops/ops.h"

namespace lmtune::train {

void all_reduce_gradients(dist::Comm& comm, const std::vector<std::pair<std::string, Tensor>>& params) {
  size_t total = 0;
  for (const auto& [name, p] : params) total += size_t(p.numel());
  std::vector<float> buf(total, 0.f);
  size_t off = 0;
  for (const auto& [name, p] : params) {
    const Tensor& g = p.ag()->grad;
    if (g.defined()) {
      LMT_CHECK(g.numel() == p.numel(), "[train] the gradient of ", name, " is ", g.describe(), "; the parameter is ",
                p.describe());
      std::vector<float> v = ops::to(g, Device::cpu, DType::f32).to_f32_vector();
      std::copy(v.begin(), v.end(), buf.begin() + std::ptrdiff_t(off));
    }
    off += size_t(p.numel());
  }
  comm.all_reduce_sum(buf.data(), buf.size());
  off = 0;
  for (const auto& [name, p] : params) {
    const size_t n = size_t(p.numel());
    std::vector<float> v(buf.begin() + std::ptrdiff_t(off), buf.begin() + std::ptrdiff_t(off + n));
    p.ag()->grad = ops::to(Tensor::from_f32(v, p.shape()), p.device(), DType::f32);
    off += n;
  }
}

std::pair<double, int64_t> all_reduce_mean(dist::Comm* comm, double mean, int64_t tokens) {
  if (!comm) return {mean, tokens};
  double v[2] = {tokens > 0 ? mean * double(tokens) : 0.0, double(tokens)};
  comm->all_reduce_sum(v, 2);
  const int64_t n = int64_t(v[1]);
  return {n > 0 ? v[0] / v[1] : 0.0, n};
}

}  // namespace lmtune::train
