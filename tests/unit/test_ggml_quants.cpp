// ggml's Q5_0 / Q5_1 blocks and the K-quants Q4_K / Q5_K / Q6_K (src/quant/ggml_blocks.h): the
// bytes equal ggml's own quantizers (hashes made by tests/ref/ggml_quant_golden.c against
// llama.cpp's libggml-base; ctest -R gguf_llamacpp_golden_hashes re-makes them), the decoders give
// values within each type's quantization error, and sizes that are not whole blocks are refused.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "quant/ggml_blocks.h"

using namespace lmtune;
namespace g = lmtune::quant::ggml;

namespace {

constexpr int kBlocks = 64;

uint32_t next(uint32_t& s) {
  s = s * 1664525u + 1013904223u;
  return s;
}

// A sum of three uniform integers: exact in float, scaled by powers of two only (no rounding, so
// the C reference makes the same values).
float sample(uint32_t& s) {
  int32_t v = 0;
  for (int k = 0; k < 3; ++k) v += int32_t(next(s) >> 11) - (1 << 20);
  return float(v);
}

// The input of tests/ref/ggml_quant_golden.c (keep the two identical): 64 super-blocks of 8 kinds,
// covering ggml's special paths (zero groups, all positive, constant, an outlier, f16 underflow).
std::vector<float> golden_input() {
  std::vector<float> x(256 * kBlocks);
  uint32_t s = 12345u;
  for (int b = 0; b < kBlocks; ++b) {
    float* v = x.data() + 256 * b;
    for (int i = 0; i < 256; ++i) {
      const float r = sample(s);
      switch (b % 8) {
        case 0: v[i] = r * std::ldexp(1.f, -22); break;
        case 1: v[i] = r * std::ldexp(1.f, -30); break;
        case 2: v[i] = (i < 32 || (i >= 48 && i < 64)) ? 0.f : r * std::ldexp(1.f, -22); break;
        case 3: v[i] = std::fabs(r) * std::ldexp(1.f, -22) + 1.f; break;
        case 4: v[i] = 0.f; break;
        case 5: v[i] = -0.375f; break;
        case 6: v[i] = r * std::ldexp(1.f, i == (b * 37) % 256 ? -16 : -22); break;
        default: v[i] = r * std::ldexp(1.f, -40); break;
      }
    }
  }
  return x;
}

uint64_t fnv1a(const std::string& b) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : b) h = (h ^ c) * 1099511628211ull;
  return h;
}

struct Type {
  const char* name;
  std::function<std::string(const float*, int64_t)> encode;
  std::function<std::vector<float>(const std::string&)> decode;
  size_t bytes;     // for the golden input
  uint64_t golden;  // ggml_quantize_chunk's bytes, hashed
};

const std::vector<Type>& types() {
  static const std::vector<Type> kTypes = {
      {"Q4_0", g::encode_q4_0, g::decode_q4_0, 9216, 0xe3642ad10dce3e82ull},
      {"Q5_0", g::encode_q5_0, g::decode_q5_0, 11264, 0x5903873ff31d151aull},
      {"Q5_1", g::encode_q5_1, g::decode_q5_1, 12288, 0x80220338a32005eeull},
      {"Q8_0", g::encode_q8_0, g::decode_q8_0, 17408, 0x13dc8ba4b8b0f4bcull},
      {"Q4_K", g::encode_q4_k, g::decode_q4_k, 9216, 0xe455c216bbb3e1f4ull},
      {"Q5_K", g::encode_q5_k, g::decode_q5_k, 11264, 0x25877a23f830b8dfull},
      {"Q6_K", g::encode_q6_k, g::decode_q6_k, 13440, 0xb7d5dc517fde4736ull},
  };
  return kTypes;
}

}  // namespace

TEST(GgmlQuants, BytesEqualGgmlsReferenceQuantizers) {
  const std::vector<float> x = golden_input();
  for (const Type& t : types()) {
    const std::string b = t.encode(x.data(), int64_t(x.size()));
    EXPECT_EQ(b.size(), t.bytes) << t.name;
    EXPECT_EQ(fnv1a(b), t.golden) << t.name << ": bytes differ from ggml_quantize_chunk's";
  }
}

// Gaussian rows with a few outliers: every decoded value within the type's error bound, measured
// per super-block as a share of its range (max - min): a 4-bit code spans 1/15 of it, 5 bits 1/31,
// 6 bits 1/63; the bound allows one step (the fitted scales clip the extremes and are themselves
// quantized to 6 bits), and the RMS error must be well under half a step.
TEST(GgmlQuants, DecodedValuesWithinTheQuantizationError) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 0.05f);
  std::vector<float> x(256 * 40);
  for (size_t i = 0; i < x.size(); ++i) x[i] = normal(rng) * (i % 97 == 0 ? 6.f : 1.f);
  struct Bound {
    const char* name;
    double levels;
  };
  for (const Bound& bd : {Bound{"Q4_0", 15}, Bound{"Q5_0", 31}, Bound{"Q5_1", 31}, Bound{"Q8_0", 254},
                          Bound{"Q4_K", 15}, Bound{"Q5_K", 31}, Bound{"Q6_K", 63}}) {
    const Type* t = nullptr;
    for (const Type& c : types())
      if (std::string(c.name) == bd.name) t = &c;
    ASSERT_NE(t, nullptr);
    const std::vector<float> y = t->decode(t->encode(x.data(), int64_t(x.size())));
    ASSERT_EQ(y.size(), x.size()) << bd.name;
    double worst = 0, sq = 0, steps = 0;
    for (size_t b = 0; b < x.size() / 256; ++b) {
      float lo = x[256 * b], hi = x[256 * b];
      for (int i = 0; i < 256; ++i) {
        lo = std::min(lo, x[256 * b + i]);
        hi = std::max(hi, x[256 * b + i]);
      }
      const double step = double(hi - lo) / bd.levels;
      steps += step * step;
      for (int i = 0; i < 256; ++i) {
        const double e = std::fabs(double(y[256 * b + i]) - double(x[256 * b + i]));
        worst = std::max(worst, e / step);
        sq += e * e;
      }
    }
    const double rms_in_steps = std::sqrt(sq / double(x.size()) / (steps / double(x.size() / 256)));
    EXPECT_LE(worst, 1.0) << bd.name << ": an element is off by more than one step of its super-block";
    EXPECT_LE(rms_in_steps, 0.35) << bd.name;
    std::printf("%s: worst error %.3f steps of the super-block's range, RMS %.3f steps\n", bd.name, worst,
                rms_in_steps);
  }
}

TEST(GgmlQuants, ZeroBlocksDecodeToZeroAndConstantsToOneLevel) {
  std::vector<float> zero(512, 0.f), c(512, -0.375f);
  for (const Type& t : types()) {
    for (float v : t.decode(t.encode(zero.data(), 512))) EXPECT_EQ(v, 0.f) << t.name;
  }
  // A constant is one level of every type with a min (Q5_1, Q4_K, Q5_K) or a signed max (the rest).
  for (const Type& t : types()) {
    const std::vector<float> y = t.decode(t.encode(c.data(), 512));
    for (float v : y) EXPECT_NEAR(v, -0.375f, 0.375f / 100) << t.name;
  }
}

TEST(GgmlQuants, RefusesPartialBlocksNamingTheType) {
  std::vector<float> x(288, 1.f);  // whole 32-blocks, not a whole super-block
  try {
    g::encode_q4_k(x.data(), 288);
    FAIL() << "Q4_K took 288 elements";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Q4_K: 288 elements are not a multiple of the super-block of 256"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(g::encode_q6_k(x.data(), 288), Error);
  EXPECT_THROW(g::encode_q5_0(x.data(), 40), Error);
  EXPECT_NO_THROW(g::encode_q5_1(x.data(), 288));
  try {
    g::decode_q6_k(std::string(211, '\0'));
    FAIL() << "Q6_K decoded 211 bytes";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Q6_K: 211 bytes are not whole blocks of 210"), std::string::npos) << e.what();
  }
  EXPECT_THROW(g::decode_q5_k(std::string(100, '\0')), Error);
}
