// Internal to src/quant: float storage types, the row bitstream, the row split over threads and the
// per-mode kernels that quant.cpp dispatches to (affine.cpp, fp.cpp).
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>

#include "core/dtype.h"
#include "core/error.h"
#include "quant/quant.h"

namespace lmtune::quant::detail {

// A float storage type: load to f32, round an f32 to the nearest storable value (ties to even),
// store. MLX evaluates every bf16/f16 operation in f32 and rounds the result like this. Its NaNs are
// its own (mlx/types/bf16.h, fp16.h): bf16 0x7fc0 whatever the sign, f16 sign | 0x7d00; store()
// writes those so that even a NaN (0 * inf in a dequantization) matches bit for bit.
struct F32 {
  using T = float;
  static float load(T v) { return v; }
  static float round(float x) { return x; }
  static T store(float x) { return x; }
};
struct Bf16 {
  using T = uint16_t;
  static float load(T v) { return bf16_to_f32(v); }
  static float round(float x) { return bf16_to_f32(f32_to_bf16(x)); }
  static T store(float x) { return std::isnan(x) ? uint16_t(0x7fc0) : f32_to_bf16(x); }
};
struct F16 {
  using T = uint16_t;
  static float load(T v) { return f16_to_f32(v); }
  static float round(float x) { return f16_to_f32(f32_to_f16(x)); }
  static T store(float x) { return std::isnan(x) ? uint16_t((std::signbit(x) ? 0x8000 : 0) | 0x7d00) : f32_to_f16(x); }
};

// Calls fn(D{}) with the storage type of dt (f32, bf16, f16); throws naming where otherwise.
template <typename Fn>
void with_float_type(DType dt, const char* where, Fn&& fn);

// Appends codes of `bits` bits to a u32 stream, LSB first (a group fills whole words).
class BitWriter {
 public:
  explicit BitWriter(uint32_t* out) : out_(out) {}
  void put(uint32_t code, int bits) {
    acc_ |= uint64_t(code) << n_;
    n_ += bits;
    if (n_ >= 32) {
      *out_++ = uint32_t(acc_);
      acc_ >>= 32;
      n_ -= 32;
    }
  }

 private:
  uint32_t* out_;
  uint64_t acc_ = 0;
  int n_ = 0;
};

// Reads such a stream back.
class BitReader {
 public:
  explicit BitReader(const uint32_t* in) : in_(in) {}
  uint32_t get(int bits) {
    if (n_ < bits) {
      acc_ |= uint64_t(*in_++) << n_;
      n_ += 32;
    }
    const uint32_t code = uint32_t(acc_) & ((1u << bits) - 1);
    acc_ >>= bits;
    n_ -= bits;
    return code;
  }

 private:
  const uint32_t* in_;
  uint64_t acc_ = 0;
  int n_ = 0;
};

// Runs fn(r0, r1) over [0, rows) in contiguous slices, one thread per slice when the work
// (rows * cols elements) is large enough to pay for the threads.
void for_row_slices(int64_t rows, int64_t cols, const std::function<void(int64_t, int64_t)>& fn);

// Kernels over whole tensors already validated: w (rows, in) of the given dtype.
void affine_quantize(const Tensor& w, const QuantParams& p, QuantizedWeight& q);
void affine_dequantize(const QuantizedWeight& q, Tensor& out);
void fp_quantize(const Tensor& w, const QuantParams& p, QuantizedWeight& q);
void fp_dequantize(const QuantizedWeight& q, Tensor& out);

template <typename Fn>
void with_float_type(DType dt, const char* where, Fn&& fn) {
  switch (dt) {
    case DType::f32: fn(F32{}); return;
    case DType::bf16: fn(Bf16{}); return;
    case DType::f16: fn(F16{}); return;
    default: break;
  }
  throw Error(str_cat("[", where, "] needs a float dtype (f32, bf16, f16), got ", dtype_name(dt)));
}

}  // namespace lmtune::quant::detail
