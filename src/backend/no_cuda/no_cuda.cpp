// Linked where the CUDA backend is not built: every kernel throws "[op] has no cuda implementation".
#include "backend/backend.h"

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

}  // namespace lmtune
