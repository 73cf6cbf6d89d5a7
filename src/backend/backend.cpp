#include "backend/backend.h"

#include "core/error.h"

namespace lmtune {

void Backend::missing(const char* op) const { fail("[", op, "] has no ", name(), " implementation"); }

void Backend::copy_h2d(void*, const void*, size_t) { missing("copy_h2d"); }
void Backend::copy_d2h(void*, const void*, size_t) { missing("copy_d2h"); }
void Backend::copy_d2d(void*, const void*, size_t) { missing("copy_d2d"); }
void Backend::copy_d2d_2d(void*, size_t, const void*, size_t, size_t, size_t) { missing("copy_d2d_2d"); }
void Backend::synchronize() {}
void Backend::fill(void*, DType, int64_t, float) { missing("fill"); }
void Backend::cast(const void*, DType, void*, DType, int64_t) { missing("cast"); }
void Backend::binary(BinaryOp, const void*, const void*, void*, int64_t, int64_t, DType) { missing("binary"); }
void Backend::axpby(const void*, const void*, void*, int64_t, float, float, DType) { missing("axpby"); }
void Backend::unary(UnaryOp, const void*, void*, int64_t, float, DType) { missing("unary"); }
void Backend::unary_backward(UnaryOp, const void*, const void*, void*, int64_t, DType) { missing("unary_backward"); }
void Backend::reduce_sum(const void*, void*, int64_t, int64_t, int64_t, DType, DType) { missing("reduce_sum"); }
void Backend::gemm(const GemmArgs&) { missing("gemm"); }
void Backend::gemm_grouped(const std::vector<GemmArgs>& problems) {
  for (const GemmArgs& g : problems) gemm(g);
}
void Backend::embedding(const void*, const int32_t*, void*, int64_t, int64_t, DType) { missing("embedding"); }
void Backend::embedding_backward(const void*, const int32_t*, float*, int64_t, int64_t, DType) {
  missing("embedding_backward");
}
void Backend::rms_norm(const void*, const void*, void*, float*, int64_t, int64_t, float, DType) { missing("rms_norm"); }
void Backend::rms_norm_backward(const void*, const void*, const float*, const void*, void*, float*, int64_t, int64_t,
                                DType) {
  missing("rms_norm_backward");
}
void Backend::rope(const void*, void*, const float*, int64_t, int64_t, int64_t, int64_t, int64_t, const int32_t*, float,
                   bool, DType) {
  missing("rope");
}
void Backend::rope_at(const void*, void*, const float*, const int32_t*, int64_t, int64_t, int64_t, int64_t, float, bool,
                      DType) {
  missing("rope_at");
}
void Backend::copy_rows_at(void*, const void*, int64_t, int64_t, const int32_t*) { missing("copy_rows_at"); }
void Backend::graph_begin() { missing("graph_begin"); }
void* Backend::graph_end() { missing("graph_end"); }
void Backend::graph_launch(void*) { missing("graph_launch"); }
void Backend::graph_free(void*) { missing("graph_free"); }
void Backend::graph_track_rows() { missing("graph_track_rows"); }
bool Backend::graph_set_rows(void*, size_t, const DecodeRows&) { missing("graph_set_rows"); }
void Backend::dequantize_affine(const uint32_t*, const void*, const void*, void*, int64_t, int64_t, int, int, DType) {
  missing("dequantize_affine");
}
void Backend::quantize_affine(const void*, uint32_t*, void*, void*, int64_t, int64_t, int, int, DType) {
  missing("quantize_affine");
}
bool Backend::quantized_gemv(const void*, const uint32_t*, const void*, const void*, void*, int64_t, int64_t, int64_t,
                             int, int, DType) {
  return false;
}
bool Backend::quantized_gemv_group(const void*, const uint32_t* const*, const void* const*, const void* const*,
                                   void* const*, const int64_t*, int, int64_t, int64_t, int, int, DType) {
  return false;
}
void Backend::dequantize_fp(const uint32_t*, const uint8_t*, void*, int64_t, int64_t, QuantMode, DType) {
  missing("dequantize_fp");
}
bool Backend::quantized_gemv_fp(const void*, const uint32_t*, const uint8_t*, void*, int64_t, int64_t, int64_t,
                                QuantMode, DType) {
  return false;
}
void Backend::attention(const AttentionArgs&) { missing("attention"); }
void Backend::attention_backward(const AttentionBackwardArgs&) { missing("attention_backward"); }
void Backend::softmax(const void*, void*, int64_t, int64_t, DType) { missing("softmax"); }
void Backend::softmax_backward(const void*, const void*, void*, int64_t, int64_t, DType) {
  missing("softmax_backward");
}
void Backend::swiglu(const void*, const void*, void*, int64_t, DType) { missing("swiglu"); }
void Backend::swiglu_backward(const void*, const void*, const void*, void*, void*, int64_t, DType) {
  missing("swiglu_backward");
}
void Backend::cross_entropy(const void*, const int32_t*, float*, float*, int64_t, int64_t, DType) {
  missing("cross_entropy");
}
void Backend::cross_entropy_backward(const void*, const int32_t*, const float*, const float*, void*, int64_t, int64_t,
                                     DType) {
  missing("cross_entropy_backward");
}
void Backend::adamw(float*, const float*, float*, float*, int64_t, float, float, float, float, float, float, float) {
  missing("adamw");
}

Backend& backend(Device d) { return d == Device::cpu ? cpu_backend() : cuda_backend(); }

}  // namespace lmtune
