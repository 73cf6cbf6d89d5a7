// mxfp4 / nvfp4 / mxfp8 as MLX's CPU backend computes them (ops.cpp `fp_quantize`'s op graph,
// every op evaluated in f32 and rounded to the weight's dtype D). Per group:
//   s = round_D(max |w| / m)                     m = 6 (E2M1's largest) or 448 (E4M3's largest)
//   nvfp4: scale code = E4M3(s); divisor = round_D(E4M3 value of the code)
//   mx*:   e = rint(round_D(log2 s)), plus 1 if 2^e < s (the smallest power of two >= s; e = 0 when
//          s = 0); scale code = (e + 127) mod 256 (no clamp); divisor = round_D(2^e)
//   x = round_D(w / divisor); code = E4M3(x) (mxfp8) or, for fp4, the first of the 16 E2M1 values
//       v minimizing round_D(|x - v|): ties go to the lower index, so to the smaller magnitude
//       and to +0 for small negatives (MLX's argmin over the table, not round-to-nearest-even).
// Dequantization, in the output dtype O: round_O(round_O(value of the code) * round_O(scale)).
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/fp_formats.h"
#include "quant/quant_impl.h"

namespace lmtune::quant::detail {

namespace {

// MLX's argmin over |x - table| in dtype D: the first index of the smallest distance.
template <typename D>
uint32_t e2m1_code(float x) {
  uint32_t best_i = 0;
  float best = std::abs(D::round(x - kE2m1Values[0]));
  for (uint32_t i = 1; i < 16; ++i) {
    const float d = std::abs(D::round(x - kE2m1Values[i]));
    if (d < best) {
      best = d;
      best_i = i;
    }
  }
  return best_i;
}

// The same for every value of a 16-bit dtype, once: the codes of bf16 / f16 weights are a lookup.
template <typename D>
const uint8_t* e2m1_table() {
  static const std::vector<uint8_t> table = [] {
    std::vector<uint8_t> t(1 << 16);
    for (uint32_t u = 0; u < t.size(); ++u) t[u] = uint8_t(e2m1_code<D>(D::load(uint16_t(u))));
    return t;
  }();
  return table.data();
}

template <typename D>
void quantize_rows(const typename D::T* w, uint32_t* wq, uint8_t* scales, int64_t r0, int64_t r1, int64_t in,
                   Mode mode) {
  const int bits = mode == Mode::mxfp8 ? 8 : 4;
  const int group_size = mode == Mode::nvfp4 ? 16 : 32;
  const float max_code = bits == 4 ? 6.0f : 448.0f;
  const int64_t groups = in / group_size, words = in * bits / 32;
  constexpr bool k16 = std::is_same_v<typename D::T, uint16_t>;
  const uint8_t* table = k16 && bits == 4 ? e2m1_table<D>() : nullptr;
  float x[32];
  for (int64_t r = r0; r < r1; ++r) {
    BitWriter out(wq + r * words);
    for (int64_t g = 0; g < groups; ++g) {
      const typename D::T* src = w + r * in + g * group_size;
      float amax = 0;
      for (int j = 0; j < group_size; ++j) {
        x[j] = D::load(src[j]);
        const float a = std::abs(x[j]);
        amax = a > amax ? a : amax;
      }
      const float s = D::round(amax / max_code);
      uint8_t scale_code;
      float divisor;
      if (mode == Mode::nvfp4) {
        scale_code = f32_to_e4m3(s);
        divisor = D::round(e4m3_to_f32(scale_code));
      } else {
        int e = 0;
        if (s != 0) {
          e = int(std::rint(D::round(std::log2(s))));
          if (std::ldexp(1.0f, e) < s) ++e;
        }
        scale_code = uint8_t(e + 127);  // wraps below 2^-127, as MLX's int32 -> uint8 cast does
        divisor = D::round(std::ldexp(1.0f, e));
      }
      scales[r * groups + g] = scale_code;
      for (int j = 0; j < group_size; ++j) {
        const float v = D::round(x[j] / divisor);
        uint32_t code;
        if (bits == 8)
          code = f32_to_e4m3(v);
        else if constexpr (k16)
          code = table[D::store(v)];  // v is a D value (a NaN reads the canonical NaN's entry, 0)
        else
          code = e2m1_code<D>(v);
        out.put(code, bits);
      }
    }
  }
}

template <typename O>
void dequantize_rows(const uint32_t* wq, const uint8_t* scales, typename O::T* out, int64_t r0, int64_t r1, int64_t in,
                     Mode mode) {
  const int bits = mode == Mode::mxfp8 ? 8 : 4;
  const int group_size = mode == Mode::nvfp4 ? 16 : 32;
  const int64_t groups = in / group_size, words = in * bits / 32;
  for (int64_t r = r0; r < r1; ++r) {
    BitReader codes(wq + r * words);
    for (int64_t g = 0; g < groups; ++g) {
      const uint8_t sc = scales[r * groups + g];
      const float s = O::round(mode == Mode::nvfp4 ? e4m3_to_f32(sc) : e8m0_to_f32(sc));
      typename O::T* dst = out + r * in + g * group_size;
      for (int j = 0; j < group_size; ++j) {
        const uint32_t c = codes.get(bits);
        const float v = O::round(bits == 8 ? e4m3_to_f32(uint8_t(c)) : kE2m1Values[c]);
        dst[j] = O::store(v * s);
      }
    }
  }
}

}  // namespace

void fp_quantize(const Tensor& w, const QuantParams& p, QuantizedWeight& q) {
  const int64_t in = w.dim(-1), rows = w.numel() / in;
  with_float_type(w.dtype(), "quantize", [&](auto d) {
    using D = decltype(d);
    const typename D::T* src = w.data<typename D::T>();
    uint32_t* wq = q.wq.data<uint32_t>();
    uint8_t* scales = q.scales.data<uint8_t>();
    for_row_slices(rows, in, [&](int64_t r0, int64_t r1) { quantize_rows<D>(src, wq, scales, r0, r1, in, p.mode); });
  });
}

void fp_dequantize(const QuantizedWeight& q, Tensor& out) {
  const int64_t in = q.in_features(), rows = out.numel() / in;
  with_float_type(out.dtype(), "dequantize", [&](auto o) {
    using O = decltype(o);
    const uint32_t* wq = q.wq.data<uint32_t>();
    const uint8_t* scales = q.scales.data<uint8_t>();
    typename O::T* dst = out.data<typename O::T>();
    for_row_slices(rows, in,
                   [&](int64_t r0, int64_t r1) { dequantize_rows<O>(wq, scales, dst, r0, r1, in, q.params.mode); });
  });
}

}  // namespace lmtune::quant::detail
