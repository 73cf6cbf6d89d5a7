// NCCL for the device collective (backend/collective.h), opened with dlopen: the few entry points
// of NCCL 2's stable C API are declared here by their documented signatures (ncclUniqueId is 128
// bytes; ncclFloat32 = 7, ncclSum = 0, ncclSuccess = 0). NVLink multicast stays off
// (NCCL_NVLS_ENABLE=0 unless the environment says otherwise), as the GPU machines require.
#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <mutex>

#include "backend/collective.h"
#include "backend/cuda/cuda_backend.h"
#include "core/error.h"

namespace lmtune {

namespace {

struct NcclUniqueId {
  char internal[128];
};
using NcclComm = void*;
using GetUniqueId = int (*)(NcclUniqueId*);
using CommInitRank = int (*)(NcclComm*, int, NcclUniqueId, int);
using AllReduce = int (*)(const void*, void*, size_t, int, int, NcclComm, cudaStream_t);
using CommDestroy = int (*)(NcclComm);
using GetErrorString = const char* (*)(int);
using GroupCall = int (*)();
constexpr int kNcclFloat32 = 7, kNcclSum = 0;

struct Nccl {
  void* lib = nullptr;
  std::string error;  // why it could not be opened
  GetUniqueId get_unique_id = nullptr;
  CommInitRank comm_init_rank = nullptr;
  AllReduce all_reduce = nullptr;
  CommDestroy comm_destroy = nullptr;
  GetErrorString error_string = nullptr;
  GroupCall group_start = nullptr, group_end = nullptr;

  void check(int rc, const char* what) const {
    if (rc != 0) fail("[nccl] ", what, " failed: ", error_string ? error_string(rc) : "error ", rc);
  }
};

const Nccl& nccl() {
  static Nccl n;
  static std::once_flag once;
  std::call_once(once, [] {
    const char* path = std::getenv("LMTUNE_NCCL_LIB");
    n.lib = ::dlopen(path && *path ? path : "libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!n.lib) {
      const char* e = ::dlerror();
      n.error = std::string("cannot open ") + (path && *path ? path : "libnccl.so.2") + ": " + (e ? e : "?") +
                " (LD_LIBRARY_PATH or LMTUNE_NCCL_LIB: the CUDA toolkit's NCCL or PyPI's nvidia-nccl wheel)";
      return;
    }
    auto sym = [&](const char* name) {
      void* s = ::dlsym(n.lib, name);
      if (!s && n.error.empty()) n.error = std::string("libnccl.so.2 has no ") + name;
      return s;
    };
    n.get_unique_id = reinterpret_cast<GetUniqueId>(sym("ncclGetUniqueId"));
    n.comm_init_rank = reinterpret_cast<CommInitRank>(sym("ncclCommInitRank"));
    n.all_reduce = reinterpret_cast<AllReduce>(sym("ncclAllReduce"));
    n.comm_destroy = reinterpret_cast<CommDestroy>(sym("ncclCommDestroy"));
    n.error_string = reinterpret_cast<GetErrorString>(sym("ncclGetErrorString"));
    n.group_start = reinterpret_cast<GroupCall>(sym("ncclGroupStart"));
    n.group_end = reinterpret_cast<GroupCall>(sym("ncclGroupEnd"));
  });
  return n;
}

class NcclCollective final : public DeviceCollective {
 public:
  NcclCollective(const std::vector<uint8_t>& id, int rank, int world) {
    LMT_CHECK(id.size() == sizeof(NcclUniqueId), "[nccl] a group id is ", sizeof(NcclUniqueId), " bytes, got ",
              id.size());
    NcclUniqueId u;
    std::memcpy(u.internal, id.data(), sizeof u.internal);
    (void)cuda_impl();  // the device is chosen and its stream made before NCCL binds to it
    nccl().check(nccl().comm_init_rank(&comm_, world, u, rank), "ncclCommInitRank");
    LMT_CUDA_CHECK(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
    LMT_CUDA_CHECK(cudaEventCreateWithFlags(&queued_, cudaEventDisableTiming));
    LMT_CUDA_CHECK(cudaEventCreateWithFlags(&summed_, cudaEventDisableTiming));
  }
  ~NcclCollective() override {
    if (summed_) cudaEventDestroy(summed_);
    if (queued_) cudaEventDestroy(queued_);
    if (side_) cudaStreamDestroy(side_);
    if (comm_) nccl().comm_destroy(comm_);
  }
  void start_all_reduce_sum_f32(void* ptr, size_t n) override {
    LMT_CUDA_CHECK(cudaEventRecord(queued_, cuda_impl().stream()));
    LMT_CUDA_CHECK(cudaStreamWaitEvent(side_, queued_, 0));
    nccl().check(nccl().all_reduce(ptr, ptr, n, kNcclFloat32, kNcclSum, comm_, side_), "ncclAllReduce");
  }
  void wait_started() override {
    LMT_CUDA_CHECK(cudaEventRecord(summed_, side_));
    LMT_CUDA_CHECK(cudaStreamWaitEvent(cuda_impl().stream(), summed_, 0));
  }
  void all_reduce_sum_f32(void* ptr, size_t n) override {
    nccl().check(nccl().all_reduce(ptr, ptr, n, kNcclFloat32, kNcclSum, comm_, cuda_impl().stream()), "ncclAllReduce");
  }
  void group_begin() override { nccl().check(nccl().group_start(), "ncclGroupStart"); }
  void group_end() override { nccl().check(nccl().group_end(), "ncclGroupEnd"); }

 private:
  NcclComm comm_ = nullptr;
  cudaStream_t side_ = nullptr;  // the started sums' stream
  cudaEvent_t queued_ = nullptr, summed_ = nullptr;
};

}  // namespace

std::string device_collective_unavailable(Device dev) {
  if (dev != Device::cuda) return "the CPU has no device collective (its sums go over TCP)";
  if (!cuda_available()) return "no CUDA device";
  ::setenv("NCCL_NVLS_ENABLE", "0", 0);
  return nccl().error;
}

std::vector<uint8_t> device_collective_id(Device dev) {
  const std::string why = device_collective_unavailable(dev);
  LMT_CHECK(why.empty(), "[nccl] ", why);
  NcclUniqueId u;
  nccl().check(nccl().get_unique_id(&u), "ncclGetUniqueId");
  return std::vector<uint8_t>(u.internal, u.internal + sizeof u.internal);
}

std::unique_ptr<DeviceCollective> make_device_collective(Device dev, const std::vector<uint8_t>& id, int rank,
                                                         int world) {
  const std::string why = device_collective_unavailable(dev);
  LMT_CHECK(why.empty(), "[nccl] ", why);
  return std::make_unique<NcclCollective>(id, rank, world);
}

}  // namespace lmtune
