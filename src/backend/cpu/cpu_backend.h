// The CPU backend: f32 compute (bf16/f16 only as storage, through cast/fill/embedding),
// OpenBLAS for matrix products, plain loops elsewhere.
#pragma once
#include "backend/backend.h"

namespace lmtune {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  void copy_h2d(void* dst, const void* src, size_t n) override;
  void copy_d2h(void* dst, const void* src, size_t n) override;
  void copy_d2d(void* dst, const void* src, size_t n) override;
  void copy_d2d_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t rows) override;
  void fill(void* dst, DType dt, int64_t n, float value) override;
  void cast(const void* src, DType src_dt, void* dst, DType dst_dt, int64_t n) override;
  void binary(BinaryOp op, const void* a, const void* b, void* out, int64_t n, int64_t nb, DType dt) override;
  void axpby(const void* a, const void* b, void* out, int64_t n, float alpha, float beta, DType dt) override;
  void unary(UnaryOp op, const void* x, void* out, int64_t n, float param, DType dt) override;
  void unary_backward(UnaryOp op, const void* x, const void* dy, void* dx, int64_t n, DType dt) override;
  void reduce_sum(const void* x, void* out, int64_t outer, int64_t n, int64_t inner, DType dt, DType out_dt) override;
  void gemm(const GemmArgs& args) override;
  bool takes_lora_linear(int64_t rows) const override;    // from 64 rows (fewer, decoding: the GEMVs split)
  bool lora_linear(const LoraLinearArgs& args) override;  // declines where takes_lora_linear does
  bool lora_linear_backward(const LoraLinearArgs& args) override;
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
  void dequantize_affine(const uint32_t* wq, const void* scales, const void* biases, void* out, int64_t rows,
                         int64_t in, int bits, int group_size, DType dt) override;
  void quantize_affine(const void* w, uint32_t* wq, void* scales, void* biases, int64_t rows, int64_t in, int bits,
                       int group_size, DType dt) override;
  bool quantized_gemv(const void* x, const uint32_t* wq, const void* scales, const void* biases, void* y, int64_t M,
                      int64_t N, int64_t K, int bits, int group_size, DType dt) override;
  void dequantize_fp(const uint32_t* wq, const uint8_t* scales, void* out, int64_t rows, int64_t in, QuantMode mode,
                     DType dt) override;
  bool quantized_gemv_fp(const void* x, const uint32_t* wq, const uint8_t* scales, void* y, int64_t M, int64_t N,
                         int64_t K, QuantMode mode, DType dt) override;
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
};

// Throws unless dt is f32: the CPU computes in f32 only.
void cpu_require_f32(DType dt, const char* op);

}  // namespace lmtune
