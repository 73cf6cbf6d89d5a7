// The CUDA backend: one stream, one cuBLASLt handle with its workspace, kernels in the .cu
// files beside this. Every CUDA and cuBLAS call is checked; a failure throws lmtune::Error
// naming the call. Internal to src/backend/cuda.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "backend/backend.h"

namespace lmtune {

[[noreturn]] void cuda_fail(const char* what, const char* why, const char* file, int line);
inline void cuda_check(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess) cuda_fail(what, cudaGetErrorString(e), file, line);
}
inline void cublas_check(cublasStatus_t s, const char* what, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS) cuda_fail(what, cublasLtGetStatusString(s), file, line);
}

}  // namespace lmtune

#define LMT_CUDA_CHECK(call) ::lmtune::cuda_check((call), #call, __FILE__, __LINE__)
#define LMT_CUBLAS_CHECK(call) ::lmtune::cublas_check((call), #call, __FILE__, __LINE__)
// After every kernel launch: a bad launch configuration surfaces here, at its cause.
#define LMT_CUDA_LAUNCH_CHECK(kernel) ::lmtune::cuda_check(cudaGetLastError(), kernel, __FILE__, __LINE__)

namespace lmtune {

// Scratch device memory from the caching allocator, returned when this goes out of scope.
// Reuse by a later op is safe without synchronizing because every kernel of the backend runs
// in order on its one stream.
class DeviceScratch {
 public:
  explicit DeviceScratch(size_t nbytes);
  ~DeviceScratch();
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_;
  size_t nbytes_;
};

// One cached cuBLASLt plan: descriptors and the heuristic's algorithm for a shape key.
struct GemmPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;  // cuBLAS's operands (ours swapped)
  cublasLtMatmulAlgo_t algo{};
  GemmPlan() = default;
  GemmPlan(const GemmPlan&) = delete;
  GemmPlan& operator=(const GemmPlan&) = delete;
  ~GemmPlan();
};

class CudaBackend final : public Backend {
 public:
  CudaBackend();
  ~CudaBackend() override;
  const char* name() const override { return "cuda"; }

  cudaStream_t stream() const { return stream_; }
  int sm_count() const { return sm_count_; }
  // Whether launches now go out with programmatic dependent launch: only while a decode step is
  // recorded (its weights are constant, which the quantized products' early weight loads need),
  // on sm_90 and newer, with LMTUNE_CUDA_PDL=1.
  bool pdl() const { return pdl_; }

  void copy_h2d(void* dst, const void* src, size_t n) override;
  void copy_d2h(void* dst, const void* src, size_t n) override;
  void copy_d2d(void* dst, const void* src, size_t n) override;
  void copy_d2d_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t rows) override;
  void synchronize() override;

  void fill(void* dst, DType dt, int64_t n, float value) override;
  void cast(const void* src, DType src_dt, void* dst, DType dst_dt, int64_t n) override;
  void binary(BinaryOp op, const void* a, const void* b, void* out, int64_t n, int64_t nb, DType dt) override;
  void axpby(const void* a, const void* b, void* out, int64_t n, float alpha, float beta, DType dt) override;
  void unary(UnaryOp op, const void* x, void* out, int64_t n, float param, DType dt) override;
  void unary_backward(UnaryOp op, const void* x, const void* dy, void* dx, int64_t n, DType dt) override;
  void reduce_sum(const void* x, void* out, int64_t outer, int64_t n, int64_t inner, DType dt, DType out_dt) override;

  void gemm(const GemmArgs& args) override;
  // gemm with C (and D) in c_dt while A and B are in args.dtype: bf16 x bf16 -> f32 for the
  // attention scores and for f32 gradient accumulation.
  void gemm_ex(const GemmArgs& args, DType c_dt);
  void gemm_grouped(const std::vector<GemmArgs>& problems) override;  // gemm_grouped.cpp

  void embedding(const void* weight, const int32_t* ids, void* out, int64_t N, int64_t D, DType dt) override;
  void embedding_backward(const void* dout, const int32_t* ids, float* dweight, int64_t N, int64_t D,
                          DType dt) override;
  void rms_norm(const void* x, const void* w, void* out, float* rstd, int64_t rows, int64_t dim, float eps,
                DType dt) override;
  void rms_norm_backward(const void* x, const void* w, const float* rstd, const void* dy, void* dx, float* dw,
                         int64_t rows, int64_t dim, DType dt) override;
  void rope(const void* x, void* out, const float* inv_freq, int64_t B, int64_t T, int64_t H, int64_t D,
            int64_t pos_offset, const int32_t* pos_at, float mscale, bool inverse, DType dt) override;
  void rope_at(const void* x, void* out, const float* inv_freq, const int32_t* positions, int64_t B, int64_t T,
               int64_t H, int64_t D, float mscale, bool inverse, DType dt) override;
  void copy_rows_at(void* dst, const void* src, int64_t row_bytes, int64_t n, const int32_t* row_at) override;
  bool has_graphs() const override { return true; }
  // Per-row counters of the split decode attention (decode_split.cu), zero between its launches.
  static constexpr int64_t kDecodeCounters = 65536;
  int32_t* decode_counters() const { return decode_counters_; }
  void graph_begin() override;
  void* graph_end() override;
  void graph_launch(void* graph) override;
  void graph_free(void* graph) override;
  void graph_track_rows() override;
  size_t graph_rows(void* graph) const override;
  bool graph_set_rows(void* graph, size_t i, const DecodeRows& rows) override;
  // A rows kernel (rope_append_rows, attention_rows) launched into a capture that tracks rows: its
  // arguments kept by value in args, arg_ptrs pointing at each, rows the DecodeRows among them;
  // accepts (may be null) says whether new rows fit the launch as recorded.
  struct TrackedRows {
    cudaGraphNode_t node = nullptr;
    cudaKernelNodeParams params{};
    std::shared_ptr<void> args;
    std::vector<void*> arg_ptrs;
    DecodeRows* rows = nullptr;
    std::function<bool(const DecodeRows&)> accepts;
  };
  bool tracking_rows() const { return track_rows_; }
  // Called right after the launch: its node is the capture's last one.
  void track_rows_launch(TrackedRows t);
  bool gemv_group(const void* x, const void* const* ws, void* const* ys, const int64_t* ns, int count, int64_t M,
                  int64_t K, DType dt) override;
  bool gemv_swiglu(const void* x, const void* w_gate, const void* w_up, void* out, int64_t M, int64_t N, int64_t K,
                   DType dt) override;
  bool rope_append(const void* q, const void* k, const void* v, void* q_out, void* k_cache, void* v_cache,
                   const float* inv_freq, int64_t T, int64_t H, int64_t KV, int64_t D, int64_t pos_offset,
                   const int32_t* pos_at, DType dt) override;
  bool add_rms_norm(const void* x, const void* y, const void* w, void* sum, void* out, int64_t rows, int64_t dim,
                    float eps, DType dt) override;
  bool has_decode_rows() const override { return true; }
  bool rope_append_rows(const void* q, const void* k, const void* v, void* q_out, const float* inv_freq, int64_t H,
                        int64_t KV, int64_t D, const DecodeRows& rows, DType dt) override;
  bool attention_rows(const void* q, void* out, const DecodeRows& rows, int64_t H, int64_t KV, int64_t D, float scale,
                      int64_t window, DType dt) override;
  void dequantize_affine(const uint32_t* wq, const void* scales, const void* biases, void* out, int64_t rows,
                         int64_t in, int bits, int group_size, DType dt) override;
  void quantize_affine(const void* w, uint32_t* wq, void* scales, void* biases, int64_t rows, int64_t in, int bits,
                       int group_size, DType dt) override;
  bool quantized_gemv(const void* x, const uint32_t* wq, const void* scales, const void* biases, void* y, int64_t M,
                      int64_t N, int64_t K, int bits, int group_size, DType dt) override;
  bool quantized_gemm_rows(const void* x, const uint32_t* wq, const void* scales, const void* biases, void* y,
                           int64_t M, int64_t N, int64_t K, int bits, int group_size, DType dt) override;
  bool quantized_gemv_fp(const void* x, const uint32_t* wq, const uint8_t* scales, void* y, int64_t M, int64_t N,
                         int64_t K, QuantMode mode, DType dt) override;
  bool quantized_gemv_group(const void* x, const uint32_t* const* wqs, const void* const* scales,
                            const void* const* biases, void* const* ys, const int64_t* ns, int count, int64_t M,
                            int64_t K, int bits, int group_size, DType dt) override;
  bool quantized_gemv_add(const void* x, const uint32_t* wq, const void* scales, const void* biases,
                          const void* residual, void* y, int64_t M, int64_t N, int64_t K, int bits, int group_size,
                          DType dt) override;
  bool quantized_gemv_swiglu(const void* x, const uint32_t* const* wqs, const void* const* scales,
                             const void* const* biases, void* out, int64_t M, int64_t N, int64_t K, int bits,
                             int group_size, DType dt) override;
  bool quantized_gemv_normed(const void* x, const void* norm_w, float eps, const uint32_t* const* wqs,
                             const void* const* scales, const void* const* biases, void* const* ys, const int64_t* ns,
                             int count, bool swiglu, int64_t K, int bits, int group_size, DType dt,
                             const RopeAppendArgs* rope = nullptr) override;
  bool takes_decode_chain(const QuantizedDecodeChain& args) const override;  // qgemv.cu
  bool quantized_decode_chain(const QuantizedDecodeChain& args) override;    // qgemv.cu
  void dequantize_fp(const uint32_t* wq, const uint8_t* scales, void* out, int64_t rows, int64_t in, QuantMode mode,
                     DType dt) override;
  void attention(const AttentionArgs& a) override;
  void attention_backward(const AttentionBackwardArgs& a) override;
  void softmax(const void* x, void* y, int64_t rows, int64_t n, DType dt) override;
  void softmax_backward(const void* y, const void* dy, void* dx, int64_t rows, int64_t n, DType dt) override;
  void swiglu(const void* gate, const void* up, void* out, int64_t n, DType dt) override;
  void swiglu_backward(const void* gate, const void* up, const void* dout, void* dgate, void* dup, int64_t n,
                       DType dt) override;
  void cross_entropy(const void* logits, const int32_t* targets, float* loss, float* lse, int64_t N, int64_t V,
                     DType dt) override;
  void cross_entropy_backward(const void* logits, const int32_t* targets, const float* lse, const float* dloss,
                              void* dlogits, int64_t N, int64_t V, DType dt) override;
  void adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float b1, float b2, float eps, float wd,
             float bc1, float bc2) override;

 private:
  // dtype of A/B, dtype of C, M, N, K, trans_a, trans_b, lda, ldb, ldc, batch, strides a/b/c,
  // alignment (bytes) of A, B, C.
  using GemmKey = std::tuple<int, int, int64_t, int64_t, int64_t, bool, bool, int64_t, int64_t, int64_t, int64_t,
                             int64_t, int64_t, int64_t, int, int, int>;
  const GemmPlan& gemm_plan(const GemmKey& key);

  int device_ = 0;
  int sm_count_ = 1;
  int cc_major_ = 0;
  bool pdl_ = false;
  bool track_rows_ = false;
  std::vector<TrackedRows> tracked_;  // the capture's, until graph_end hands them to its graph
  cudaStream_t stream_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  cublasHandle_t blas_ = nullptr;  // cuBLAS proper, made on first use (its grouped GEMM)
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  int32_t* decode_counters_ = nullptr;
  unsigned* chain_barrier_ = nullptr;  // quantized_decode_chain's grid barrier: two words, zero between its launches
  std::mutex gemm_mu_;
  std::map<GemmKey, std::unique_ptr<GemmPlan>> gemm_plans_;
};

// The one CudaBackend (the same object cuda_backend() returns).
CudaBackend& cuda_impl();

// Fused attention (flash_*.cu) for bf16/f16 and head_dim 64 or 128; false where the arguments
// are not covered, and then attention.cu's gemm path runs. LMTUNE_CUDA_FLASH=0 turns it off.
bool flash_enabled();
bool flash_attention_forward(const AttentionArgs& a);
bool flash_attention_backward(const AttentionBackwardArgs& a);
// y = alpha x W^T for 1-4 rows of x in bf16/f16 (gemv.cu); false where the arguments are not
// covered (then cuBLASLt runs). LMTUNE_CUDA_GEMV=0 turns it off.
bool gemv(const GemmArgs& g, DType c_dt);
// Decoding's attention (T <= 4, bf16/f16, head_dim 64 or 128) split over the keys
// (decode_split.cu); false where it does not apply. LMTUNE_CUDA_DECODE_SPLIT=0 turns it off.
bool decode_split_attention(const AttentionArgs& a);
// Attention with a run-time query offset (decode_attention.cu), where flash does not apply.
void decode_attention(const AttentionArgs& a);

}  // namespace lmtune
