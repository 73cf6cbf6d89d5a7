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
  LMT_CUDA_CHECK(cudaMalloc(&chain_barrier_, 2 * sizeof(unsigned)));
  LMT_CUDA_CHECK(cudaMemset(chain_barrier_, 0, 2 * sizeof(unsigned)));
  static CudaMemory memory;
  register_device_memory(Device::cuda, &memory);
}

// Never runs for the process-wide instance (it is leaked on purpose: the CUDA context may be
// gone by the time static destructors run); kept correct for completeness.
CudaBackend::~CudaBackend() {
  gemm_plans_.clear();
  if (workspace_) cudaFree(workspace_);
  if (decode_counters_) cudaFree(decode_counters_);
  if (chain_barrier_) cudaFree(chain_barrier_);
  if (lt_) cublasLtDestroy(lt_);
  if (blas_) cublasDestroy(blas_);
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

void CudaBackend::copy_d2d_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
                              size_t rows) {
  if (width == 0 || rows == 0) return;
  LMT_CUDA_CHECK(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, rows, cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::synchronize() { LMT_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

// Relaxed capture: the caching allocator may cudaMalloc a new block while a decode step is being
// recorded (the block then belongs to the graph until it is freed; see CachingAllocator::hold).
// The recorded kernels go out with programmatic dependent launch (see pdl()).
namespace {
// What graph_end hands out: the instantiated graph and, when rows were tracked, the graph it came
// from (its nodes name the launches to update) and those launches.
struct RecordedGraph {
  cudaGraphExec_t exec = nullptr;
  cudaGraph_t graph = nullptr;
  std::vector<CudaBackend::TrackedRows> rows;
};
}  // namespace

void CudaBackend::graph_begin() {
  LMT_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
  pdl_ = cc_major_ >= 9 && runtime_config().cuda_pdl;
  track_rows_ = false;
  tracked_.clear();
}

void CudaBackend::graph_track_rows() { track_rows_ = true; }

void CudaBackend::track_rows_launch(TrackedRows t) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  const cudaGraphNode_t* deps = nullptr;
  size_t n = 0;
  LMT_CUDA_CHECK(cudaStreamGetCaptureInfo(stream_, &status, nullptr, nullptr, &deps, nullptr, &n));
  LMT_CHECK(status == cudaStreamCaptureStatusActive && n == 1, "[cuda] a tracked rows launch outside a capture");
  t.node = deps[0];
  tracked_.push_back(std::move(t));
}

void* CudaBackend::graph_end() {
  pdl_ = false;
  const bool tracked = track_rows_;
  track_rows_ = false;
  auto rec = std::make_unique<RecordedGraph>();
  rec->rows = std::move(tracked_);
  tracked_.clear();
  cudaError_t e = cudaStreamEndCapture(stream_, &rec->graph);
  if (e != cudaSuccess) {
    // An invalidated capture (a call that may not be recorded, such as a synchronize): the stream
    // is out of capture mode now; clear the error it left, so the next checked launch is judged
    // on its own.
    (void)cudaGetLastError();
    if (rec->graph) cudaGraphDestroy(rec->graph);
    LMT_CUDA_CHECK(e);
  }
  e = cudaGraphInstantiate(&rec->exec, rec->graph, 0);
  if (e == cudaSuccess && tracked) {
    // Each tracked node's launch as recorded (kernel, grid, block, shared memory), its arguments
    // from now on read from our copies.
    for (TrackedRows& t : rec->rows) {
      e = cudaGraphKernelNodeGetParams(t.node, &t.params);
      if (e != cudaSuccess) break;
      t.params.kernelParams = t.arg_ptrs.data();
      t.params.extra = nullptr;
    }
  }
  if (!tracked || e != cudaSuccess) {
    cudaGraphDestroy(rec->graph);
    rec->graph = nullptr;
    rec->rows.clear();
  }
  if (e != cudaSuccess && rec->exec) cudaGraphExecDestroy(rec->exec);
  LMT_CUDA_CHECK(e);
  return rec.release();
}

void CudaBackend::graph_launch(void* graph) {
  LMT_CUDA_CHECK(cudaGraphLaunch(static_cast<RecordedGraph*>(graph)->exec, stream_));
}

void CudaBackend::graph_free(void* graph) {
  if (!graph) return;
  std::unique_ptr<RecordedGraph> rec(static_cast<RecordedGraph*>(graph));
  if (rec->graph) cudaGraphDestroy(rec->graph);
  LMT_CUDA_CHECK(cudaGraphExecDestroy(rec->exec));
}

size_t CudaBackend::graph_rows(void* graph) const {
  return graph ? static_cast<RecordedGraph*>(graph)->rows.size() : 0;
}

bool CudaBackend::graph_set_rows(void* graph, size_t i, const DecodeRows& rows) {
  auto* rec = static_cast<RecordedGraph*>(graph);
  LMT_CHECK(rec && i < rec->rows.size(), "[cuda] graph_set_rows: launch ", i, " of ", rec ? rec->rows.size() : 0);
  TrackedRows& t = rec->rows[i];
  if (rows.n != t.rows->n || (t.accepts && !t.accepts(rows))) return false;
  *t.rows = rows;
  LMT_CUDA_CHECK(cudaGraphExecKernelNodeSetParams(rec->exec, t.node, &t.params));
  return true;
}

}  // namespace lmtune
