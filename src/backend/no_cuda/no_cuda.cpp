// Linked where the CUDA backend is not built: every kernel throws "[op] has no cuda implementation".
#include "backend/backend.h"
#include "backend/collective.h"
#include "core/error.h"

namespace lmtune {
namespace {
class NoCudaBackend final : public Backend {
 public:
  const char* name() const override { return "cuda"; }
};
}  // namespace

Backend& cuda_backend() {
  static NoCudaBackend b;
  return b;
}
bool cuda_available() { return false; }
std::string cuda_device_name() { return ""; }
int64_t cuda_qgemv_tma_launches() { return 0; }
int64_t cuda_qgemv_ring_launches() { return 0; }
int64_t cuda_qgemv_simt_ring_launches() { return 0; }
int64_t cuda_qgemv_normed_launches() { return 0; }
int64_t cuda_qgemv_rope_launches() { return 0; }
int64_t cuda_qgemv_simt_early_launches() { return 0; }
int64_t cuda_qgemv_simt_wide_launches() { return 0; }
int64_t cuda_qgemv_stream_launches() { return 0; }
int64_t cuda_qgemv_stream_normed_launches() { return 0; }
int64_t cuda_decode_chain_launches() { return 0; }
int64_t cuda_decode_chain_qkv_launches() { return 0; }

std::string device_collective_unavailable(Device dev) {
  return dev == Device::cuda ? "lmtune was built without CUDA"
                             : "the CPU has no device collective (its sums go over TCP)";
}
std::vector<uint8_t> device_collective_id(Device dev) { fail("[collective] ", device_collective_unavailable(dev)); }
std::unique_ptr<DeviceCollective> make_device_collective(Device dev, const std::vector<uint8_t>&, int, int) {
  fail("[collective] ", device_collective_unavailable(dev));
}

}  // namespace lmtune
