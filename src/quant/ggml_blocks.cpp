// ggml's Q8_0 / Q4_0 / Q5_0 / Q5_1 blocks and f16 / bf16 rows, bit for bit as ggml-quants.c's reference
// quantizers compute them (this file is built without FMA contraction, as ggml's scalar code).
#include "quant/ggml_blocks.h"
#include "quant/ggml_bytes.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"

namespace lmtune::quant::ggml {

namespace {

void check_blocks(int64_t n, const char* what) {
  LMT_CHECK(n % kBlock == 0, "[ggml] ", what, ": ", n, " elements are not a multiple of the block of ", kBlock);
}

// The block's element of largest magnitude, with its sign (the first of equal magnitudes), as Q4_0's and Q5_0's
// reference quantizers take it.
float signed_absmax(const float* v) {
  float amax = 0.f, max = 0.f;
  for (int j = 0; j < kBlock; ++j)
    if (amax < std::fabs(v[j])) {
      amax = std::fabs(v[j]);
      max = v[j];
    }
  return max;
}

}  // namespace

std::string encode_q8_0(const float* x, int64_t n) {
  check_blocks(n, "Q8_0");
  std::string out(size_t(n / kBlock * 34), '\0');
  for (int64_t b = 0; b < n / kBlock; ++b) {
    const float* v = x + b * kBlock;
    float amax = 0.f;
    for (int j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / 127;
    const float id = d != 0.f ? 1.0f / d : 0.0f;
    char* p = out.data() + b * 34;
    put_f16(p, d);
    for (int j = 0; j < kBlock; ++j) p[2 + j] = char(int8_t(std::roundf(v[j] * id)));
  }
  return out;
}

std::string encode_q4_0(const float* x, int64_t n) {
  check_blocks(n, "Q4_0");
  std::string out(size_t(n / kBlock * 18), '\0');
  for (int64_t b = 0; b < n / kBlock; ++b) {
    const float* v = x + b * kBlock;
    const float d = signed_absmax(v) / -8;
    const float id = d != 0.f ? 1.0f / d : 0.0f;
    char* p = out.data() + b * 18;
    put_f16(p, d);
    for (int j = 0; j < kBlock / 2; ++j) {
      const uint8_t q0 = std::min<uint8_t>(15, uint8_t(int8_t(v[j] * id + 8.5f)));
      const uint8_t q1 = std::min<uint8_t>(15, uint8_t(int8_t(v[j + kBlock / 2] * id + 8.5f)));
      p[2 + j] = char(q0 | (q1 << 4));
    }
  }
  return out;
}

namespace {

// The low nibbles of a 32-block's codes packed as Q4_0 (element j low, j + 16 high) and their fifth
// bits as one little-endian u32 (bit j for element j): Q5_0's and Q5_1's layout.
void put_5bit_codes(char* qh_and_qs, const uint8_t* q) {
  uint32_t qh = 0;
  for (int j = 0; j < kBlock / 2; ++j) {
    qh_and_qs[4 + j] = char((q[j] & 0x0F) | ((q[j + kBlock / 2] & 0x0F) << 4));
    qh |= uint32_t((q[j] >> 4) & 1) << j;
    qh |= uint32_t((q[j + kBlock / 2] >> 4) & 1) << (j + kBlock / 2);
  }
  std::memcpy(qh_and_qs, &qh, 4);
}

void get_5bit_codes(const char* qh_and_qs, uint8_t* q) {
  uint32_t qh;
  std::memcpy(&qh, qh_and_qs, 4);
  for (int j = 0; j < kBlock / 2; ++j) {
    const uint8_t b = uint8_t(qh_and_qs[4 + j]);
    q[j] = uint8_t((b & 0x0F) | (((qh >> j) & 1) << 4));
    q[j + kBlock / 2] = uint8_t((b >> 4) | (((qh >> (j + kBlock / 2)) & 1) << 4));
  }
}

}  // namespace

std::string encode_q5_0(const float* x, int64_t n) {
  check_blocks(n, "Q5_0");
  std::string out(size_t(n / kBlock * 22), '\0');
  for (int64_t b = 0; b < n / kBlock; ++b) {
    const float* v = x + b * kBlock;
    const float d = signed_absmax(v) / -16;
    const float id = d != 0.f ? 1.0f / d : 0.0f;
    uint8_t q[kBlock];
    for (int j = 0; j < kBlock; ++j) q[j] = uint8_t(std::min<int>(31, int8_t(v[j] * id + 16.5f)));
    char* p = out.data() + b * 22;
    put_f16(p, d);
    put_5bit_codes(p + 2, q);
  }
  return out;
}

std::string encode_q5_1(const float* x, int64_t n) {
  check_blocks(n, "Q5_1");
  std::string out(size_t(n / kBlock * 24), '\0');
  for (int64_t b = 0; b < n / kBlock; ++b) {
    const float* v = x + b * kBlock;
    float min = v[0], max = v[0];
    for (int j = 1; j < kBlock; ++j) {
      min = std::min(min, v[j]);
      max = std::max(max, v[j]);
    }
    const float d = (max - min) / 31;
    const float id = d != 0.f ? 1.0f / d : 0.0f;
    uint8_t q[kBlock];
    for (int j = 0; j < kBlock; ++j) q[j] = uint8_t((v[j] - min) * id + 0.5f);
    char* p = out.data() + b * 24;
    put_f16(p, d);
    put_f16(p + 2, min);
    put_5bit_codes(p + 4, q);
  }
  return out;
}

std::vector<float> decode_q8_0(const std::string& bytes) {
  LMT_CHECK(bytes.size() % 34 == 0, "[ggml] Q8_0: ", bytes.size(), " bytes are not whole blocks of 34");
  std::vector<float> out(bytes.size() / 34 * kBlock);
  for (size_t b = 0; b < bytes.size() / 34; ++b) {
    const char* p = bytes.data() + b * 34;
    const float d = get_f16(p);
    for (int j = 0; j < kBlock; ++j) out[b * kBlock + j] = d * float(int8_t(p[2 + j]));
  }
  return out;
}

std::vector<float> decode_q4_0(const std::string& bytes) {
  LMT_CHECK(bytes.size() % 18 == 0, "[ggml] Q4_0: ", bytes.size(), " bytes are not whole blocks of 18");
  std::vector<float> out(bytes.size() / 18 * kBlock);
  for (size_t b = 0; b < bytes.size() / 18; ++b) {
    const char* p = bytes.data() + b * 18;
    const float d = get_f16(p);
    for (int j = 0; j < kBlock / 2; ++j) {
      const uint8_t q = uint8_t(p[2 + j]);
      out[b * kBlock + j] = d * float(int(q & 15) - 8);
      out[b * kBlock + j + kBlock / 2] = d * float(int(q >> 4) - 8);
    }
  }
  return out;
}

std::vector<float> decode_q5_0(const std::string& bytes) {
  LMT_CHECK(bytes.size() % 22 == 0, "[ggml] Q5_0: ", bytes.size(), " bytes are not whole blocks of 22");
  std::vector<float> out(bytes.size() / 22 * kBlock);
  for (size_t b = 0; b < bytes.size() / 22; ++b) {
    const char* p = bytes.data() + b * 22;
    uint8_t q[kBlock];
    get_5bit_codes(p + 2, q);
    for (int j = 0; j < kBlock; ++j) out[b * kBlock + j] = get_f16(p) * float(int(q[j]) - 16);
  }
  return out;
}

std::vector<float> decode_q5_1(const std::string& bytes) {
  LMT_CHECK(bytes.size() % 24 == 0, "[ggml] Q5_1: ", bytes.size(), " bytes are not whole blocks of 24");
  std::vector<float> out(bytes.size() / 24 * kBlock);
  for (size_t b = 0; b < bytes.size() / 24; ++b) {
    const char* p = bytes.data() + b * 24;
    uint8_t q[kBlock];
    get_5bit_codes(p + 4, q);
    for (int j = 0; j < kBlock; ++j) out[b * kBlock + j] = get_f16(p) * float(q[j]) + get_f16(p + 2);
  }
  return out;
}

std::string encode_f32(const float* x, int64_t n) {
  return std::string(reinterpret_cast<const char*>(x), size_t(n) * 4);
}

std::string encode_f16(const float* x, int64_t n) {
  std::string out(size_t(n) * 2, '\0');
  for (int64_t i = 0; i < n; ++i) put_f16(out.data() + 2 * i, x[i]);
  return out;
}

std::string encode_bf16(const float* x, int64_t n) {
  std::string out(size_t(n) * 2, '\0');
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = f32_to_bf16(x[i]);
    std::memcpy(out.data() + 2 * i, &h, 2);
  }
  return out;
}

}  // namespace lmtune::quant::ggml
