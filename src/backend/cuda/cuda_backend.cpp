// The CUDA backend's lifetime and memory: device selection, stream, cuBLASLt handle and
// workspace, the cudaMalloc-backed DeviceMemory behind Tensor::empty(..., Device::cuda), copies.
#include "backend/cuda/cuda_backend.h"

#include "core/allocator.h"
#include "core/error.h"
#include "core/runtime_config.h"

namespace lmtune {

namespace {

constexpr size_t kWorkspaceBytes = size_t(64) << 20;  // cuBLASLt's split-K and stream-K scratch

struct CudaMemory final : DeviceMemory {
  void* raw_alloc(size_t nbytes) override {
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, nbytes);
    if (e != cudaSuccess) {
      cudaGetLastError();  // clear it, so the next launch check does not report this failure
      fail("[allocator] cuda: cannot allocate ", nbytes, " bytes: ", cudaGetErrorString(e));
    }
    return p;
  }
  void raw_free(void* p) override { LMT_CUDA_CHECK(cudaFree(p)); }
};

}  // namespace

void cuda_fail(const char* what, const char* why, const char* file, int line) {
  fail("[cuda] ", what, " failed: ", why ? why : "unknown error", " (", file, ":", line, ")");
}

DeviceScratch::DeviceScratch(size_t nbytes) : ptr_(allocator(Device::cuda).allocate(nbytes)), nbytes_(nbytes) {}
DeviceScratch::~DeviceScratch() { allocator(Device::cuda).release(ptr_, nbytes_); }

CudaBackend::CudaBackend() {
  (void)runtime_config();  // the kernel switches: a bad LMTUNE_CUDA_* value fails here, before any work
  LMT_CHECK(cuda_available(), "[cuda] no CUDA device is available");
  LMT_CUDA_CHECK(cudaSetDevice(device_));
  LMT_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device_));
  LMT_CUDA_CHECK(cudaDeviceGetAttribute(&cc_major_, cudaDevAttrComputeCapabilityMajor, device_));
  // A blocking stream: work on the legacy default stream (other libraries) stays ordered with ours.
  LMT_CUDA_CHECK(cudaStreamCreate(&stream_));
  LMT_CUBLAS_CHECK(cublasLtCreate(&lt_));
  workspace_bytes_ = kWorkspaceBytes;
  LMT_CUDA_CHECK(cudaMalloc(&workspace_, workspace_bytes_));
  LMT_CUDA_CHECK(cudaMalloc(&decode_counters_, size_t(kDecodeCounters) * sizeof(int32_t)));
  LMT_CUDA_CHECK(cudaMemset(decode_counters_, 0, size_t(kDecodeCounters) * sizeof(int32_t)));
  static CudaMemory memory;
  register_device_memory(Device::cuda, &memory);
}

// Never runs for the process-wide instance (it is leaked on purpose: the CUDA context may be
// gone by the time static destructors run); kept correct for completeness.
CudaBackend::~CudaBackend() {
  gemm_plans_.clear();
  if (workspace_) cudaFree(workspace_);
  if (decode_counters_) cudaFree(decode_counters_);
  if (lt_) cublasLtDestroy(lt_);
  if (stream_) cudaStreamDestroy(stream_);
}

CudaBackend& cuda_impl() {
  static CudaBackend* b = new CudaBackend();
  return *b;
}

Backend& cuda_backend() { return cuda_impl(); }

bool cuda_available() {
  static const bool available = [] {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return n > 0;
  }();
  return available;
}

std::string cuda_device_name() {
  if (!cuda_available()) return "";
  cudaDeviceProp prop{};
  LMT_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  return prop.name;
}

void CudaBackend::copy_h2d(void* dst, const void* src, size_t n) {
  if (n == 0) return;
  // From pageable memory this returns once src is staged, so the caller may free src.
  LMT_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, stream_));
}

void CudaBackend::copy_d2h(void* dst, const void* src, size_t n) {
  if (n == 0) return;
  LMT_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, stream_));
  LMT_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::copy_d2d(void* dst, const void* src, size_t n) {
  if (n == 0 || dst == src) return;
  LMT_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::synchronize() { LMT_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

// Relaxed capture: the caching allocator may cudaMalloc a new block while a decode step is being
// recorded (the block then belongs to the graph until it is freed; see CachingAllocator::hold).
// The recorded kernels go out with programmatic dependent launch (see pdl()).
void CudaBackend::graph_begin() {
  LMT_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
  pdl_ = cc_major_ >= 9 && runtime_config().cuda_pdl;
}

void* CudaBackend::graph_end() {
  pdl_ = false;
  cudaGraph_t graph = nullptr;
  LMT_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
  cudaGraphExec_t exec = nullptr;
  cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  LMT_CUDA_CHECK(e);
  return exec;
}

void CudaBackend::graph_launch(void* graph) {
  LMT_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph), stream_));
}

void CudaBackend::graph_free(void* graph) {
  if (graph) LMT_CUDA_CHECK(cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(graph)));
}

}  // namespace lmtune
