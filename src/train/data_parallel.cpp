#include "train/data_parallel.h"

#include <algorithm>
#include <cstring>

#include "autograd/tape.h"
#include "core/error.h"
#include "ops/ops.h"

namespace lmtune::train {

void all_reduce_gradients(dist::Comm& comm, DeviceCollective* device,
                          const std::vector<std::pair<std::string, Tensor>>& params) {
  if (device) {
    // Fresh f32 buffers (a gradient's storage may be shared), summed in place as one NCCL group.
    std::vector<Tensor> sums;
    for (const auto& [name, p] : params) {
      const Tensor& g = p.ag()->grad;
      sums.push_back(g.defined() ? ops::cast(ops::clone(g), DType::f32)
                                 : ops::zeros(p.shape(), DType::f32, p.device()));
    }
    device->group_begin();
    for (Tensor& t : sums) device->all_reduce_sum_f32(t.raw(), size_t(t.numel()));
    device->group_end();
    for (size_t i = 0; i < params.size(); ++i) params[i].second.ag()->grad = sums[i];
    return;
  }
  size_t total = 0;
  for (const auto& [name, p] : params) total += size_t(p.numel());
  std::vector<float> buf(total, 0.f);
  size_t off = 0;
  for (const auto& [name, p] : params) {
    const Tensor& g = p.ag()->grad;
    if (g.defined()) {
      LMT_CHECK(g.numel() == p.numel(), "[train] the gradient of ", name, " is ", g.describe(), "; the parameter is ",
                p.describe());
      const Tensor h = ops::to(g, Device::cpu, DType::f32);
      std::memcpy(buf.data() + off, h.data<float>(), h.nbytes());
    }
    off += size_t(p.numel());
  }
  comm.all_reduce_sum(buf.data(), buf.size());
  off = 0;
  for (const auto& [name, p] : params) {
    Tensor sum = Tensor::empty(p.shape(), DType::f32);
    std::memcpy(sum.data<float>(), buf.data() + off, sum.nbytes());
    p.ag()->grad = ops::to(sum, p.device());
    off += size_t(p.numel());
  }
}

std::pair<double, int64_t> all_reduce_mean(dist::Comm* comm, double mean, int64_t tokens) {
  if (!comm) return {mean, tokens};
  double v[2] = {tokens > 0 ? mean * double(tokens) : 0.0, double(tokens)};
  comm->all_reduce_sum(v, 2);
  const int64_t n = int64_t(v[1]);
  return {n > 0 ? v[0] / v[1] : 0.0, n};
}

std::unique_ptr<DeviceCollective> make_group_collective(dist::Comm& comm, Device dev, std::string* why) {
  // Every rank says whether it has one; all or none use it.
  const std::string mine = device_collective_unavailable(dev);
  double have = mine.empty() ? 1.0 : 0.0;
  comm.all_reduce_sum(&have, 1);
  if (int(have) != comm.world()) {
    if (why) *why = mine.empty() ? "another rank has none" : mine;
    return nullptr;
  }
  // Rank 0's id, handed to the others as a sum to which they add zeros.
  std::vector<uint8_t> id = comm.rank() == 0 ? device_collective_id(dev) : std::vector<uint8_t>();
  double n = double(id.size());  // rank 0's length
  comm.all_reduce_sum(&n, 1);
  std::vector<double> v(size_t(n), 0.0);
  for (size_t i = 0; i < id.size(); ++i) v[i] = double(id[i]);
  comm.all_reduce_sum(v.data(), v.size());
  id.assign(v.size(), 0);
  for (size_t i = 0; i < v.size(); ++i) id[i] = uint8_t(v[i]);
  return make_device_collective(dev, id, comm.rank(), comm.world());
}

}  // namespace lmtune::train
