// Data-parallel training's share of the work (issue 14): each rank takes every world-th row of a
// batch, starting at its rank (mlx-lm's idx[i + rank : i + batch_size : world]); loss sums, token
// counts and gradients are added up across the ranks, so that a step equals one process's step on the
// whole batch (the gradient of the batch's token-weighted mean loss), up to the order of the sums.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "backend/collective.h"
#include "core/tensor.h"
#include "dist/comm.h"

namespace lmtune::train {

// This rank's rows of a batch group: g[rank], g[rank + world], ...; all of g without a group.
template <class T>
std::vector<T> rank_share(const std::vector<T>& g, const dist::Comm* comm) {
  if (!comm) return g;
  std::vector<T> out;
  for (size_t i = size_t(comm->rank()); i < g.size(); i += size_t(comm->world())) out.push_back(g[i]);
  return out;
}

// Every trainable parameter's gradient summed over the ranks, in place, in the parameters' order; a
// parameter without a gradient on a rank (no supervised token in its share) adds zeros there. With a
// device collective (NCCL) the sums are made on the devices, as one group of all-reduces; without,
// in host memory (f32) through comm, then put back on the parameter's device.
void all_reduce_gradients(dist::Comm& comm, DeviceCollective* device,
                          const std::vector<std::pair<std::string, Tensor>>& params);

// The device collective of the group for dev, when every rank has one (NCCL on CUDA), made from an id
// that rank 0 draws and comm hands to the others; else null, and *why says why not (on rank 0).
std::unique_ptr<DeviceCollective> make_group_collective(dist::Comm& comm, Device dev, std::string* why);

// The token-weighted mean of per-share mean losses: (sum over ranks of mean * tokens) / tokens, and the
// tokens; on one process (comm null) the inputs unchanged. A share without tokens adds nothing.
std::pair<double, int64_t> all_reduce_mean(dist::Comm* comm, double mean, int64_t tokens);

}  // namespace lmtune::train
