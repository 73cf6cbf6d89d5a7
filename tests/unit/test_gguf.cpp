// GGUF writer / reader (src/io/gguf.h) and ggml's Q8_0 / Q4_0 blocks (src/quant/ggml_blocks.h):
// a round trip of every value type and tensor type, the byte layout of the header, alignment,
// atomic writes, and damaged files refused with their name.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/dtype.h"
#include "core/error.h"
#include "io/gguf.h"
#include "quant/ggml_blocks.h"

namespace fs = std::filesystem;
using namespace lmtune;
using gguf::TensorType;
using gguf::Value;

namespace {

std::string tmp_path(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("lmtune_test_gguf_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return (d / name).string();
}

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void spit(const std::string& p, const std::string& b) { std::ofstream(p, std::ios::binary) << b; }

template <typename T>
T at(const std::string& b, size_t off) {
  T v;
  std::memcpy(&v, b.data() + off, sizeof(T));
  return v;
}

}  // namespace

TEST(Gguf, RoundTripsEveryValueTypeAndTensor) {
  gguf::Writer w;
  Value u8;
  u8.type = gguf::ValueType::u8;
  u8.u = 200;
  Value i16;
  i16.type = gguf::ValueType::i16;
  i16.i = -1234;
  Value f64;
  f64.type = gguf::ValueType::f64;
  f64.f = 3.25;
  Value i64;
  i64.type = gguf::ValueType::i64;
  i64.i = -(int64_t(1) << 40);
  w.set("general.architecture", Value::str("llama"));
  w.set("a.u8", u8);
  w.set("a.i16", i16);
  w.set("a.u32", Value::u32(4000000000u));
  w.set("a.i32", Value::i32(-7));
  w.set("a.f32", Value::f32(1.5f));
  w.set("a.bool", Value::boolean(true));
  w.set("a.u64", Value::u64(uint64_t(1) << 50));
  w.set("a.i64", i64);
  w.set("a.f64", f64);
  w.set("a.strings", Value::strings({"x", "", "\xe2\x96\x81hi"}));
  w.set("a.f32s", Value::f32s({-1.f, 0.25f}));
  w.set("a.i32s", Value::i32s({1, 3, 6}));
  EXPECT_THROW(w.set("a.u8", u8), Error);

  std::vector<float> x(3 * 64);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(float(i)) * 3.f;
  w.add_tensor("w.f32", TensorType::f32, {3}, quant::ggml::encode_f32(x.data(), 3));
  w.add_tensor("w.f16", TensorType::f16, {3, 64}, quant::ggml::encode_f16(x.data(), 192));
  w.add_tensor("w.q8", TensorType::q8_0, {3, 64}, quant::ggml::encode_q8_0(x.data(), 192));
  w.add_tensor("w.q4", TensorType::q4_0, {2, 96}, quant::ggml::encode_q4_0(x.data(), 192));
  w.add_tensor("w.bf16", TensorType::bf16, {1, 2, 5}, quant::ggml::encode_bf16(x.data(), 10));
  EXPECT_THROW(w.add_tensor("w.odd", TensorType::q8_0, {2, 40}, std::string()), Error);  // 40 is not blocks of 32

  const std::string p = tmp_path("round.gguf");
  fs::remove(p);
  w.write(p);
  EXPECT_FALSE(fs::exists(p + ".tmp." + std::to_string(::getpid())));

  // The header as GGUF v3 lays it out.
  const std::string b = slurp(p);
  EXPECT_EQ(b.substr(0, 4), "GGUF");
  EXPECT_EQ(at<uint32_t>(b, 4), 3u);
  EXPECT_EQ(at<uint64_t>(b, 8), 5u);    // tensors
  EXPECT_EQ(at<uint64_t>(b, 16), 13u);  // key/values
  EXPECT_EQ(at<uint64_t>(b, 24), std::string("general.architecture").size());

  gguf::Reader r(p);
  EXPECT_EQ(r.version(), 3u);
  EXPECT_EQ(r.get("general.architecture").s, "llama");
  EXPECT_EQ(r.get("a.u8").u, 200u);
  EXPECT_EQ(r.get("a.i16").i, -1234);
  EXPECT_EQ(r.get("a.u32").u, 4000000000u);
  EXPECT_EQ(r.get("a.i32").i, -7);
  EXPECT_EQ(r.get("a.f32").f, 1.5);
  EXPECT_EQ(r.get("a.bool").u, 1u);
  EXPECT_EQ(r.get("a.u64").u, uint64_t(1) << 50);
  EXPECT_EQ(r.get("a.i64").i, -(int64_t(1) << 40));
  EXPECT_EQ(r.get("a.f64").f, 3.25);
  ASSERT_EQ(r.get("a.strings").arr.size(), 3u);
  EXPECT_EQ(r.get("a.strings").arr[2].s, "\xe2\x96\x81hi");
  EXPECT_EQ(r.get("a.f32s").arr[1].f, 0.25);
  EXPECT_EQ(r.get("a.i32s").arr[2].i, 6);
  EXPECT_EQ(r.find("absent"), nullptr);
  EXPECT_THROW(r.get("absent"), Error);

  EXPECT_EQ(r.data_offset() % 32, 0u);
  for (const auto& t : r.tensors()) EXPECT_EQ(t.offset % 32, 0u) << t.name;
  EXPECT_EQ(r.tensor("w.q8").dims, (std::vector<int64_t>{3, 64}));
  EXPECT_EQ(r.tensor("w.bf16").dims, (std::vector<int64_t>{1, 2, 5}));
  EXPECT_EQ(r.tensor("w.q8").nbytes, 6u * 34);
  EXPECT_EQ(r.tensor("w.q4").nbytes, 6u * 18);
  // ne is stored innermost first: the q8 tensor's first dimension in the file is 64.
  EXPECT_EQ(r.tensor_data("w.f16"), quant::ggml::encode_f16(x.data(), 192));
  std::vector<float> q8 = quant::ggml::decode_q8_0(r.tensor_data("w.q8"));
  std::vector<float> q4 = quant::ggml::decode_q4_0(r.tensor_data("w.q4"));
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_NEAR(q8[i], x[i], 3.f / 127 * 0.51f + 1e-3f) << i;
    EXPECT_NEAR(q4[i], x[i], 3.f / 8 + 1e-2f) << i;  // half a step, or a whole one at the clipped edge (-8d..7d)
  }
  std::string f32 = r.tensor_data("w.f32");
  EXPECT_EQ(std::memcmp(f32.data(), x.data(), 12), 0);
  fs::remove(p);
}

TEST(Gguf, Q8AndQ4BlocksMatchGgmlsReference) {
  // One block by hand: amax 127 -> d = 1, codes = round(x) with ties away from zero.
  std::vector<float> x(32, 0.f);
  x[0] = 127.f;
  x[1] = 2.5f;
  x[2] = -2.5f;
  x[3] = -0.49f;
  std::string q = quant::ggml::encode_q8_0(x.data(), 32);
  ASSERT_EQ(q.size(), 34u);
  EXPECT_EQ(at<uint16_t>(q, 0), f32_to_f16(1.f));
  EXPECT_EQ(int8_t(q[2]), 127);
  EXPECT_EQ(int8_t(q[3]), 3);
  EXPECT_EQ(int8_t(q[4]), -3);
  EXPECT_EQ(int8_t(q[5]), 0);
  // Q4_0: the largest magnitude is -16 -> d = 2, codes = min(15, trunc(x / d + 8.5)), element j in
  // the low nibble of byte j, element j + 16 in its high nibble.
  std::vector<float> y(32, 0.f);
  y[0] = -16.f;
  y[16] = 14.f;
  y[1] = 3.f;
  std::string p = quant::ggml::encode_q4_0(y.data(), 32);
  ASSERT_EQ(p.size(), 18u);
  EXPECT_EQ(at<uint16_t>(p, 0), f32_to_f16(2.f));
  EXPECT_EQ(uint8_t(p[2]) & 15, 0);   // -16 / 2 + 8.5 = 0.5 -> 0
  EXPECT_EQ(uint8_t(p[2]) >> 4, 15);  // 14 / 2 + 8.5 = 15.5 -> 15
  EXPECT_EQ(uint8_t(p[3]) & 15, 10);  // 3 / 2 + 8.5 = 10
  EXPECT_EQ(quant::ggml::decode_q4_0(p)[0], -16.f);
  EXPECT_THROW(quant::ggml::encode_q8_0(x.data(), 31), Error);
}

TEST(Gguf, FailedWriteLeavesNoFile) {
  const std::string p = tmp_path("failed.gguf");
  fs::remove(p);
  gguf::Writer w;
  w.set("general.architecture", Value::str("llama"));
  w.add_tensor("a", TensorType::f32, {4}, [] { return std::string(16, '\0'); });
  w.add_tensor("b", TensorType::f32, {4}, []() -> std::string { throw Error("producer failed"); });
  EXPECT_THROW(w.write(p), Error);
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(fs::exists(p + ".tmp." + std::to_string(::getpid())));
  gguf::Writer short_bytes;
  short_bytes.add_tensor("a", TensorType::f32, {4}, std::string(15, '\0'));
  EXPECT_THROW(short_bytes.write(p), Error);
  EXPECT_FALSE(fs::exists(p));
}

TEST(Gguf, DamagedFilesAreRefusedByName) {
  gguf::Writer w;
  w.set("general.architecture", Value::str("llama"));
  w.set("k", Value::strings({"a", "b"}));
  w.add_tensor("t", TensorType::f16, {2, 32}, std::string(128, '\1'));
  const std::string p = tmp_path("good.gguf");
  fs::remove(p);
  w.write(p);
  const std::string good = slurp(p);
  const std::string bad = tmp_path("bad.gguf");
  auto refused = [&](const std::string& bytes, const std::string& needle) {
    spit(bad, bytes);
    try {
      gguf::Reader r(bad);
      ADD_FAILURE() << "accepted a damaged file (" << needle << ")";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  refused("GGUX" + good.substr(4), "magic");
  std::string v = good;
  v[4] = 9;
  refused(v, "version 9");
  for (size_t cut : {size_t(10), size_t(40), good.size() - 200, good.size() - 1}) refused(good.substr(0, cut), "");
  std::string huge = good;
  const uint64_t n = uint64_t(1) << 60;
  std::memcpy(huge.data() + 16, &n, 8);
  refused(huge, "exceed");
  fs::remove(p);
  fs::remove(bad);
}

TEST(Gguf, BlockTypesHaveGgmlsSizesAndRoundTrip) {
  struct Size {
    TensorType t;
    const char* name;
    int64_t elems;
    uint64_t bytes;
  };
  // ggml's type traits (blck_size, type_size) and enum numbers.
  for (const Size& s : {Size{TensorType::q5_0, "Q5_0", 32, 22}, Size{TensorType::q5_1, "Q5_1", 32, 24},
                        Size{TensorType::q4_k, "Q4_K", 256, 144}, Size{TensorType::q5_k, "Q5_K", 256, 176},
                        Size{TensorType::q6_k, "Q6_K", 256, 210}}) {
    EXPECT_STREQ(gguf::tensor_type_name(s.t), s.name);
    EXPECT_EQ(gguf::block_elems(s.t), s.elems) << s.name;
    EXPECT_EQ(gguf::block_bytes(s.t), s.bytes) << s.name;
    EXPECT_EQ(gguf::tensor_bytes(s.t, {3, 2 * s.elems}), 6 * s.bytes) << s.name;
  }
  EXPECT_EQ(uint32_t(TensorType::q5_0), 6u);
  EXPECT_EQ(uint32_t(TensorType::q4_k), 12u);
  EXPECT_EQ(uint32_t(TensorType::q6_k), 14u);
  try {
    gguf::tensor_bytes(TensorType::q4_k, {2, 288});
    FAIL() << "rows of 288 taken as Q4_K";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a row of 288 elements is not a multiple of Q4_K's block of 256"),
              std::string::npos)
        << e.what();
  }

  std::vector<float> x(2 * 512);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::cos(float(i) * 0.37f);
  gguf::Writer w;
  w.set("general.architecture", Value::str("llama"));
  w.add_tensor("w.q4k", TensorType::q4_k, {2, 512}, quant::ggml::encode_q4_k(x.data(), 1024));
  w.add_tensor("w.q6k", TensorType::q6_k, {4, 256}, quant::ggml::encode_q6_k(x.data(), 1024));
  w.add_tensor("w.q51", TensorType::q5_1, {2, 512}, quant::ggml::encode_q5_1(x.data(), 1024));
  const std::string p = tmp_path("kquant.gguf");
  fs::remove(p);
  w.write(p);
  gguf::Reader r(p);
  EXPECT_EQ(r.tensor("w.q4k").type, TensorType::q4_k);
  EXPECT_EQ(r.tensor("w.q6k").nbytes, 4u * 210);
  EXPECT_EQ(r.tensor_data("w.q4k"), quant::ggml::encode_q4_k(x.data(), 1024));
  const std::vector<float> y = quant::ggml::decode_q6_k(r.tensor_data("w.q6k"));
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(y[i], x[i], 2.f / 63) << i;
  fs::remove(p);
}
