// ggml's K-quants Q4_K, Q5_K and Q6_K (super-blocks of 256), bit for bit as ggml-quants.c's
// reference quantizers (quantize_row_q{4,5,6}_K_ref, what llama-quantize runs without an importance
// matrix) compute them: the same searches, the same float operations in the same order (this
// library is built without FMA contraction, as ggml's scalar C code is), the same packing.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "quant/ggml_blocks.h"
#include "quant/ggml_bytes.h"

namespace lmtune::quant::ggml {

namespace {

constexpr int64_t kQ4kBytes = 2 + 2 + 12 + 128;       // d, dmin, 8 x (6-bit scale, 6-bit min), 4-bit codes
constexpr int64_t kQ5kBytes = 2 + 2 + 12 + 32 + 128;  // + the codes' fifth bits
constexpr int64_t kQ6kBytes = 128 + 64 + 16 + 2;      // low nibbles, high 2 bits, int8 scales, d
constexpr float kGroupMaxEps = 1e-15f;                // ggml's GROUP_MAX_EPS: below it a group is zero

void check_super_blocks(int64_t n, const char* what) {
  LMT_CHECK(n % kSuperBlock == 0, "[ggml] ", what, ": ", n, " elements are not a multiple of the super-block of ",
            kSuperBlock);
}

// ggml's nearest_int: adding 1.5 * 2^23 leaves the rounded value (half to even) in the low mantissa
// bits. Kept as ggml has it (not lrintf) so that out-of-range inputs give ggml's results too.
int nearest_int(float v) {
  const float shifted = v + 12582912.f;
  int32_t bits;
  std::memcpy(&bits, &shifted, 4);
  return (bits & 0x007fffff) - 0x00400000;
}

// make_qkx2_quants: codes q in [0, nmax] with x ~ scale * q - the_min (the_min >= 0), minimizing the
// weighted squared error over nstep + 1 candidate scales (nmax + rmin + rdelta * k) / (max - min).
// Returns scale; q and the_min are written.
float fit_scale_min(int n, int nmax, const float* x, const float* w, uint8_t* q, float* the_min, float rmin,
                    float rdelta, int nstep) {
  float min = x[0], max = x[0];
  float sum_w = w[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    std::fill(q, q + n, uint8_t(0));
    *the_min = -min;
    return 0.f;
  }
  float iscale = nmax / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    q[i] = uint8_t(std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax));
    float diff = scale * q[i] + min - x[i];
    diff = diff * diff;
    best_error += w[i] * diff;
  }
  uint8_t trial[32];
  for (int k = 0; k <= nstep; ++k) {
    iscale = (rmin + rdelta * k + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
      trial[i] = uint8_t(l);
      sum_l += w[i] * l;
      sum_l2 += w[i] * l * l;
      sum_xl += w[i] * l * x[i];
    }
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (!(det > 0)) continue;
    float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
    float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
    if (this_min > 0) {
      this_min = 0;
      this_scale = sum_xl / sum_l2;
    }
    float error = 0;
    for (int i = 0; i < n; ++i) {
      float diff = this_scale * trial[i] + this_min - x[i];
      diff = diff * diff;
      error += w[i] * diff;
    }
    if (error < best_error) {
      std::copy(trial, trial + n, q);
      best_error = error;
      scale = this_scale;
      min = this_min;
    }
  }
  *the_min = -min;
  return scale;
}

// make_qx_quants with rmse_type 1 (weights x^2, no importance matrix): symmetric codes q in
// [0, 2 nmax) with x ~ scale * (q - nmax), the best of 19 candidate scales -(nmax + 0.1 k) / max.
float fit_symmetric(int n, int nmax, const float* x, int8_t* q) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  if (amax < kGroupMaxEps) {
    std::fill(q, q + n, int8_t(0));
    return 0.f;
  }
  auto sums = [&](float iscale, float& sumlx, float& suml2) {
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
  };
  auto codes = [&](float iscale) {
    for (int i = 0; i < n; ++i) q[i] = int8_t(nmax + std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1));
  };
  float iscale = -nmax / max;
  float sumlx, suml2;
  codes(iscale);
  sums(iscale, sumlx, suml2);
  float scale = suml2 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int k = -9; k <= 9; ++k) {
    if (k == 0) continue;
    iscale = -(nmax + 0.1f * k) / max;
    sums(iscale, sumlx, suml2);
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      codes(iscale);
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// The 12 bytes of Q4_K / Q5_K scales: 8 pairs (sc, m) of 6 bits. Pairs 0-3 sit in the low 6 bits of
// bytes 0-3 (sc) and 4-7 (m); pairs 4-7 keep their low nibbles in bytes 8-11 and their top 2 bits in
// the top bits of bytes 0-3 (sc) and 4-7 (m).
void pack_scales(uint8_t* s, const uint8_t* sc, const uint8_t* m) {
  for (int j = 0; j < 4; ++j) {
    s[j] = sc[j];
    s[j + 4] = m[j];
  }
  for (int j = 4; j < 8; ++j) {
    s[j + 4] = uint8_t((sc[j] & 0xF) | ((m[j] & 0xF) << 4));
    s[j - 4] |= uint8_t((sc[j] >> 4) << 6);
    s[j] |= uint8_t((m[j] >> 4) << 6);
  }
}

void unpack_scale(const uint8_t* s, int j, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = s[j] & 63;
    m = s[j + 4] & 63;
  } else {
    sc = uint8_t((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
    m = uint8_t((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

// Q4_K / Q5_K's common part for one super-block: per 32-block scale and min fitted, both quantized
// to 6 bits against d = max scale / 63 and dmin = max min / 63, then the codes recomputed from the
// quantized values. Writes d, dmin and the 12 scale bytes to head (16 bytes); codes into q.
void quantize_scale_min_block(const float* x, int nmax, float rmin, int nstep, char* head, uint8_t* q) {
  float scales[8], mins[8], w[32];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    const float* v = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += v[l] * v[l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) w[l] = av_x + std::fabs(v[l]);
    scales[j] = fit_scale_min(32, nmax, v, w, q + 32 * j, &mins[j], rmin, 0.1f, nstep);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  uint8_t sc[8], m[8];
  for (int j = 0; j < 8; ++j) {
    sc[j] = std::min<uint8_t>(63, uint8_t(nearest_int(inv_scale * scales[j])));
    m[j] = std::min<uint8_t>(63, uint8_t(nearest_int(inv_min * mins[j])));
  }
  uint8_t packed[12];
  pack_scales(packed, sc, m);
  put_f16(head, max_scale / 63.f);
  put_f16(head + 2, max_min / 63.f);
  std::memcpy(head + 4, packed, 12);
  for (int j = 0; j < 8; ++j) {
    const float d = get_f16(head) * sc[j];
    if (!d) continue;  // ggml keeps the fitted codes of a sub-block whose scale quantized to 0
    const float dm = get_f16(head + 2) * m[j];
    for (int i = 0; i < 32; ++i) q[32 * j + i] = uint8_t(std::clamp(nearest_int((x[32 * j + i] + dm) / d), 0, nmax));
  }
}

// x = d * sc * q - dmin * m for the 8 sub-blocks of a Q4_K / Q5_K super-block (q: 256 codes).
void dequantize_scale_min_block(const char* head, const uint8_t* q, float* y) {
  const float d = get_f16(head), dmin = get_f16(head + 2);
  const uint8_t* s = reinterpret_cast<const uint8_t*>(head + 4);
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    unpack_scale(s, j, sc, m);
    const float d1 = d * sc, m1 = dmin * m;
    for (int i = 0; i < 32; ++i) y[32 * j + i] = d1 * q[32 * j + i] - m1;
  }
}

void check_bytes(size_t n, int64_t block, const char* what) {
  LMT_CHECK(n % size_t(block) == 0, "[ggml] ", what, ": ", n, " bytes are not whole blocks of ", block);
}

}  // namespace

std::string encode_q4_k(const float* x, int64_t n) {
  check_super_blocks(n, "Q4_K");
  std::string out(size_t(n / kSuperBlock * kQ4kBytes), '\0');
  uint8_t q[kSuperBlock];
  for (int64_t b = 0; b < n / kSuperBlock; ++b) {
    char* p = out.data() + b * kQ4kBytes;
    quantize_scale_min_block(x + b * kSuperBlock, 15, -1.f, 20, p, q);
    // 64 values per 32 bytes: sub-block 2k in the low nibbles, 2k + 1 in the high ones.
    for (int j = 0; j < kSuperBlock; j += 64)
      for (int l = 0; l < 32; ++l) p[16 + j / 2 + l] = char(q[j + l] | (q[j + l + 32] << 4));
  }
  return out;
}

std::string encode_q5_k(const float* x, int64_t n) {
  check_super_blocks(n, "Q5_K");
  std::string out(size_t(n / kSuperBlock * kQ5kBytes), '\0');
  uint8_t q[kSuperBlock];
  for (int64_t b = 0; b < n / kSuperBlock; ++b) {
    char* p = out.data() + b * kQ5kBytes;
    quantize_scale_min_block(x + b * kSuperBlock, 31, -0.5f, 15, p, q);
    // qh[l] bit 2k / 2k + 1: the fifth bit of element l of sub-block 2k / 2k + 1.
    uint8_t* qh = reinterpret_cast<uint8_t*>(p + 16);
    char* ql = p + 48;
    for (int j = 0, k = 0; j < kSuperBlock; j += 64, k += 2)
      for (int l = 0; l < 32; ++l) {
        const uint8_t lo = q[j + l], hi = q[j + l + 32];
        qh[l] |= uint8_t(((lo >> 4) << k) | ((hi >> 4) << (k + 1)));
        ql[j / 2 + l] = char((lo & 0xF) | ((hi & 0xF) << 4));
      }
  }
  return out;
}

std::string encode_q6_k(const float* x, int64_t n) {
  check_super_blocks(n, "Q6_K");
  std::string out(size_t(n / kSuperBlock * kQ6kBytes), '\0');
  int8_t q[kSuperBlock];
  float scales[16];
  for (int64_t b = 0; b < n / kSuperBlock; ++b) {
    const float* v = x + b * kSuperBlock;
    char* p = out.data() + b * kQ6kBytes;
    float max_scale = 0, max_abs_scale = 0;
    for (int j = 0; j < 16; ++j) {
      scales[j] = fit_symmetric(16, 32, v + 16 * j, q + 16 * j);
      if (std::fabs(scales[j]) > max_abs_scale) {
        max_abs_scale = std::fabs(scales[j]);
        max_scale = scales[j];
      }
    }
    if (max_abs_scale < kGroupMaxEps) continue;  // an all-zero block (d = 0)
    const float iscale = -128.f / max_scale;
    put_f16(p + 208, 1 / iscale);
    int8_t* sc = reinterpret_cast<int8_t*>(p + 192);
    for (int j = 0; j < 16; ++j) sc[j] = int8_t(std::min(127, nearest_int(iscale * scales[j])));
    for (int j = 0; j < 16; ++j) {
      const float d = get_f16(p + 208) * sc[j];
      if (!d) continue;
      for (int i = 0; i < 16; ++i) q[16 * j + i] = int8_t(32 + std::clamp(nearest_int(v[16 * j + i] / d), -32, 31));
    }
    // Per half of 128: ql[l] holds elements l (low) and l + 64 (high), ql[l + 32] elements l + 32 and
    // l + 96; qh[l] the top 2 bits of elements l, l + 32, l + 64, l + 96.
    for (int h = 0; h < 2; ++h) {
      const int8_t* c = q + 128 * h;
      uint8_t* ql = reinterpret_cast<uint8_t*>(p + 64 * h);
      uint8_t* qh = reinterpret_cast<uint8_t*>(p + 128 + 32 * h);
      for (int l = 0; l < 32; ++l) {
        ql[l] = uint8_t((c[l] & 0xF) | ((c[l + 64] & 0xF) << 4));
        ql[l + 32] = uint8_t((c[l + 32] & 0xF) | ((c[l + 96] & 0xF) << 4));
        qh[l] = uint8_t((c[l] >> 4) | ((c[l + 32] >> 4) << 2) | ((c[l + 64] >> 4) << 4) | ((c[l + 96] >> 4) << 6));
      }
    }
  }
  return out;
}

std::vector<float> decode_q4_k(const std::string& bytes) {
  check_bytes(bytes.size(), kQ4kBytes, "Q4_K");
  std::vector<float> out(bytes.size() / kQ4kBytes * kSuperBlock);
  uint8_t q[kSuperBlock];
  for (size_t b = 0; b < bytes.size() / kQ4kBytes; ++b) {
    const char* p = bytes.data() + b * kQ4kBytes;
    for (int j = 0; j < kSuperBlock; j += 64)
      for (int l = 0; l < 32; ++l) {
        const uint8_t c = uint8_t(p[16 + j / 2 + l]);
        q[j + l] = c & 0xF;
        q[j + l + 32] = c >> 4;
      }
    dequantize_scale_min_block(p, q, out.data() + b * kSuperBlock);
  }
  return out;
}

std::vector<float> decode_q5_k(const std::string& bytes) {
  check_bytes(bytes.size(), kQ5kBytes, "Q5_K");
  std::vector<float> out(bytes.size() / kQ5kBytes * kSuperBlock);
  uint8_t q[kSuperBlock];
  for (size_t b = 0; b < bytes.size() / kQ5kBytes; ++b) {
    const char* p = bytes.data() + b * kQ5kBytes;
    const uint8_t* qh = reinterpret_cast<const uint8_t*>(p + 16);
    for (int j = 0, k = 0; j < kSuperBlock; j += 64, k += 2)
      for (int l = 0; l < 32; ++l) {
        const uint8_t c = uint8_t(p[48 + j / 2 + l]);
        q[j + l] = uint8_t((c & 0xF) | (((qh[l] >> k) & 1) << 4));
        q[j + l + 32] = uint8_t((c >> 4) | (((qh[l] >> (k + 1)) & 1) << 4));
      }
    dequantize_scale_min_block(p, q, out.data() + b * kSuperBlock);
  }
  return out;
}

std::vector<float> decode_q6_k(const std::string& bytes) {
  check_bytes(bytes.size(), kQ6kBytes, "Q6_K");
  std::vector<float> out(bytes.size() / kQ6kBytes * kSuperBlock);
  for (size_t b = 0; b < bytes.size() / kQ6kBytes; ++b) {
    const char* p = bytes.data() + b * kQ6kBytes;
    const float d = get_f16(p + 208);
    const int8_t* sc = reinterpret_cast<const int8_t*>(p + 192);
    float* y = out.data() + b * kSuperBlock;
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = reinterpret_cast<const uint8_t*>(p + 64 * h);
      const uint8_t* qh = reinterpret_cast<const uint8_t*>(p + 128 + 32 * h);
      for (int l = 0; l < 32; ++l) {
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        const int s = 8 * h + l / 16;
        y[128 * h + l] = d * sc[s] * q1;
        y[128 * h + l + 32] = d * sc[s + 2] * q2;
        y[128 * h + l + 64] = d * sc[s + 4] * q3;
        y[128 * h + l + 96] = d * sc[s + 6] * q4;
      }
    }
  }
  return out;
}

}  // namespace lmtune::quant::ggml
