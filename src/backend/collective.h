// Sums of device buffers across processes, one device each (data-parallel training, issue 14): NCCL
// on CUDA, loaded at run time (libnccl.so.2: the CUDA toolkit's, or PyPI's nvidia-nccl wheel through
// LD_LIBRARY_PATH or LMTUNE_NCCL_LIB), so lmtune neither builds nor starts against it. The processes
// agree on a group id that rank 0 makes and the caller hands to every rank (over dist's TCP group).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace lmtune {

class DeviceCollective {
 public:
  virtual ~DeviceCollective() = default;
  // Elementwise sum of n f32 values at ptr (device memory) over the group, in place, on the device's
  // stream. Calls between group_begin and group_end are launched as one.
  virtual void all_reduce_sum_f32(void* ptr, size_t n) = 0;
  virtual void group_begin() = 0;
  virtual void group_end() = 0;
  // The same sum without holding the device's stream: it runs on the collective's own stream once
  // the work queued so far on the device's stream is done, so the device computes meanwhile (data
  // parallel's buckets, overlapped with backward). ptr must stay allocated until wait_started().
  virtual void start_all_reduce_sum_f32(void* ptr, size_t n) = 0;
  // The device's stream waits (on the device, the host goes on) for every sum started so far.
  virtual void wait_started() = 0;
};

// "" when dev has a device collective here, else why not (no CUDA, no libnccl.so.2, ...).
std::string device_collective_unavailable(Device dev);
// A fresh group id (rank 0 makes it; NCCL's is 128 bytes).
std::vector<uint8_t> device_collective_id(Device dev);
// This process's member of the group `id` (the same bytes on every rank), rank of world.
std::unique_ptr<DeviceCollective> make_device_collective(Device dev, const std::vector<uint8_t>& id, int rank,
                                                         int world);

}  // namespace lmtune
