// Core: dtype conversions, tensor views, allocator accounting.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <string>

#include "core/allocator.h"
#include "core/error.h"
#include "core/runtime_config.h"
#include "ops/ops.h"

using namespace lmtune;

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_FLOAT_EQ(bf16_to_f32(f32_to_bf16(3.140625f)), 3.140625f);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties to even (1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(DType, F16RoundTripsAndSubnormals) {
  for (float v : {0.f, 1.f, -2.5f, 65504.f, 6.1035156e-05f, 5.9604645e-08f, 0.333251953125f})
    EXPECT_FLOAT_EQ(f16_to_f32(f32_to_f16(v)), v) << v;
  EXPECT_EQ(f32_to_f16(1e6f), 0x7c00);  // overflow to inf
  EXPECT_EQ(f32_to_f16(1e-9f), 0x0000);
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(NAN))));
  // Every f16 value survives f16 -> f32 -> f16.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;  // NaN payloads
    ASSERT_EQ(f32_to_f16(f16_to_f32(uint16_t(h))), h) << std::hex << h;
  }
}

TEST(Tensor, ReshapeAndSliceShareStorage) {
  Tensor t = Tensor::from_f32({0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor r = t.reshape({3, -1});
  EXPECT_EQ(r.shape(), (Shape{3, 2}));
  EXPECT_EQ(r.raw(), t.raw());
  Tensor s = t.slice_rows(1, 2);
  EXPECT_EQ(s.data<float>()[0], 3.f);
  EXPECT_THROW(t.reshape({4, 2}), Error);
  EXPECT_THROW(t.slice_rows(1, 3), Error);
  EXPECT_THROW(Tensor::from_f32({1, 2}, {3}), Error);
}

TEST(Allocator, TracksCurrentAndPeakAndReuses) {
  CachingAllocator& a = allocator(Device::cpu);
  size_t base = a.current_bytes();
  a.reset_peak();
  void* p;
  {
    Tensor t = Tensor::empty({1000}, DType::f32);
    p = t.raw();
    EXPECT_GE(a.current_bytes(), base + 4000);
  }
  EXPECT_EQ(a.current_bytes(), base);
  EXPECT_GE(a.peak_bytes(), base + 4000);
  Tensor u = Tensor::empty({1000}, DType::f32);
  EXPECT_EQ(u.raw(), p);  // the cached block came back
}

// The cache is bounded by what was ever in use: a block grown a step at a time (a KV cache) used
// to leave every earlier size cached for ever (~the sum of all sizes: 353 MiB here).
TEST(Allocator, CacheOfChangingSizesIsBounded) {
  CachingAllocator a(Device::cpu);
  void* p = nullptr;
  size_t n = 0;
  for (size_t k = 1; k <= 300; ++k) {
    void* q = a.allocate(k * 8192);
    if (p) a.release(p, n);
    p = q;
    n = k * 8192;
  }
  const size_t peak = a.peak_bytes();  // two blocks of ~2.4 MiB
  EXPECT_LE(a.current_bytes() + a.cached_bytes(), peak + peak / 4 + (size_t(32) << 20) + n);
  a.release(p, n);
  // Unbounded (the GPU's default, LMTUNE_CUDA_CACHE_BOUND unset): a block of every size class met stays
  // cached (~140 MiB of address space here, never touched); bounded, the same sizes stay within the bound.
  CachingAllocator u(Device::cpu, /*bounded=*/false), w(Device::cpu);
  std::set<size_t> classes;
  for (size_t m = size_t(1) << 20; m <= size_t(12) << 20; m += size_t(512) << 10) {
    u.release(u.allocate(m), m);
    w.release(w.allocate(m), m);
    classes.insert(CachingAllocator::round_size(m));
  }
  size_t kept = 0;
  for (size_t c : classes) kept += c;
  EXPECT_EQ(u.cached_bytes(), kept);
  EXPECT_LE(w.cached_bytes(), w.peak_bytes() + w.peak_bytes() / 4 + (size_t(32) << 20));
  EXPECT_LT(w.cached_bytes(), kept);
  // A loop of fixed sizes reuses its blocks: nothing is evicted, no new memory is taken.
  CachingAllocator b(Device::cpu);
  const std::vector<size_t> sizes = {size_t(1) << 20, 3000, size_t(40) << 20};
  std::vector<void*> first;
  for (int round = 0; round < 3; ++round) {
    std::vector<void*> got;
    for (size_t s : sizes) got.push_back(b.allocate(s));
    if (round == 0) first = got;
    EXPECT_EQ(got, first) << "round " << round;
    for (size_t i = 0; i < got.size(); ++i) b.release(got[i], sizes[i]);
  }
  EXPECT_EQ(b.cached_bytes(), CachingAllocator::round_size(sizes[0]) + CachingAllocator::round_size(sizes[1]) +
                                  CachingAllocator::round_size(sizes[2]));
}

TEST(Ops, CastAndCopyAcrossDtypes) {
  Tensor t = Tensor::from_f32({1.5f, -2.25f, 3.0f}, {3});
  Tensor b = ops::cast(t, DType::bf16);
  EXPECT_EQ(b.dtype(), DType::bf16);
  EXPECT_EQ(ops::cast(b, DType::f32).to_f32_vector(), (std::vector<float>{1.5f, -2.25f, 3.0f}));
  Tensor h = ops::cast(t, DType::f16);
  EXPECT_EQ(h.to_f32_vector(), (std::vector<float>{1.5f, -2.25f, 3.0f}));
}

TEST(Ops, CudaWithoutBackendThrowsClearly) {
  if (cuda_available()) GTEST_SKIP() << "a CUDA device is present";
  try {
    ops::zeros({4}, DType::f32, Device::cuda);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda"), std::string::npos) << e.what();
  }
}

// The kernel switches come from the environment once (runtime_config_from_env); a bad value
// names its variable. Needs no GPU.
TEST(RuntimeConfig, FromEnvironment) {
  std::map<std::string, std::string> env;
  auto get = [&](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  RuntimeConfig d = runtime_config_from_env(get);
  EXPECT_TRUE(d.cuda_gemv && d.cuda_flash && d.cuda_graph && d.cuda_decode_split);
  EXPECT_EQ(d.attn_chunk_rows, 0);
  EXPECT_FALSE(d.cuda_pdl);
  EXPECT_TRUE(d.group_gate_up);
  EXPECT_TRUE(d.fused_epilogues);
  EXPECT_TRUE(d.fused_norms);
  EXPECT_TRUE(d.fused_rope);
  EXPECT_TRUE(d.cuda_qgemv_simt_spread);
  EXPECT_EQ(d.cuda_qgemv_simt_tasks, 0);
  EXPECT_FALSE(d.cuda_qgemv_simt_early);
  EXPECT_FALSE(d.cuda_qgemv_simt_wide);
  EXPECT_EQ(d.cuda_qgemv_stream, 2);
  EXPECT_EQ(d.cuda_qgemv_stream_normed, 0);
  EXPECT_FALSE(d.cuda_decode_chain);
  EXPECT_FALSE(d.cuda_decode_chain_qkv);
  EXPECT_EQ(d.cuda_qgemv_variant, 9);
  EXPECT_TRUE(d.fused_xent);
  EXPECT_EQ(d.xent_chunk_rows, 0);
  EXPECT_TRUE(d.lora_fused);
  EXPECT_TRUE(d.lora_linear);
  EXPECT_TRUE(d.lora_16bit);
  EXPECT_FALSE(d.cuda_batch_graph);
  EXPECT_FALSE(d.cuda_decode_gqa);
  env = {{"LMTUNE_CUDA_DECODE_GQA", "1"}};
  EXPECT_TRUE(runtime_config_from_env(get).cuda_decode_gqa);
  env = {{"LMTUNE_CUDA_GEMV", "0"},
         {"LMTUNE_CUDA_FLASH", "0"},
         {"LMTUNE_CUDA_GRAPH", "0"},
         {"LMTUNE_CUDA_ATTN_CHUNK_ROWS", "7"},
         {"LMTUNE_CUDA_PDL", "1"},
         {"LMTUNE_GROUP_GATE_UP", "0"},
         {"LMTUNE_CUDA_QGEMV_VARIANT", "3"},
         {"LMTUNE_FUSED_EPILOGUES", "0"},
         {"LMTUNE_CUDA_DECODE_SPLIT", "0"},
         {"LMTUNE_FUSED_XENT", "0"},
         {"LMTUNE_XENT_CHUNK_ROWS", "300"},
         {"LMTUNE_LORA_FUSED", "0"},
         {"LMTUNE_LORA_16BIT", "0"},
         {"LMTUNE_CUDA_BATCH_GRAPH", "1"},
         {"LMTUNE_FUSED_NORMS", "0"},
         {"LMTUNE_FUSED_ROPE", "0"},
         {"LMTUNE_LORA_LINEAR", "0"},
         {"LMTUNE_CUDA_QGEMV_SIMT_SPREAD", "0"},
         {"LMTUNE_CUDA_QGEMV_SIMT_TASKS", "2"},
         {"LMTUNE_CUDA_QGEMV_SIMT_EARLY", "1"},
         {"LMTUNE_CUDA_QGEMV_SIMT_WIDE", "1"},
         {"LMTUNE_CUDA_QGEMV_STREAM", "1"},
         {"LMTUNE_CUDA_QGEMV_STREAM_NORMED", "2"},
         {"LMTUNE_CUDA_DECODE_CHAIN", "1"},
         {"LMTUNE_CUDA_DECODE_CHAIN_QKV", "1"}};
  RuntimeConfig c = runtime_config_from_env(get);
  EXPECT_FALSE(c.cuda_gemv || c.cuda_flash || c.cuda_graph || c.cuda_decode_split);
  EXPECT_EQ(c.attn_chunk_rows, 7);
  EXPECT_TRUE(c.cuda_pdl);
  EXPECT_FALSE(c.group_gate_up || c.fused_epilogues);
  EXPECT_FALSE(c.fused_norms);
  EXPECT_FALSE(c.fused_rope);
  EXPECT_FALSE(c.cuda_qgemv_simt_spread);
  EXPECT_EQ(c.cuda_qgemv_simt_tasks, 2);
  EXPECT_TRUE(c.cuda_qgemv_simt_early);
  EXPECT_TRUE(c.cuda_qgemv_simt_wide);
  EXPECT_EQ(c.cuda_qgemv_stream, 1);
  EXPECT_EQ(c.cuda_qgemv_stream_normed, 2);
  EXPECT_TRUE(c.cuda_decode_chain);
  EXPECT_TRUE(c.cuda_decode_chain_qkv);
  EXPECT_EQ(c.cuda_qgemv_variant, 3);
  EXPECT_FALSE(c.fused_xent);
  EXPECT_EQ(c.xent_chunk_rows, 300);
  EXPECT_FALSE(c.lora_fused);
  EXPECT_FALSE(c.lora_linear);
  EXPECT_FALSE(c.lora_16bit);
  EXPECT_TRUE(c.cuda_batch_graph);
  env = {{"LMTUNE_CUDA_GEMV", "1"}, {"LMTUNE_CUDA_GRAPH", ""}};  // empty: the default
  c = runtime_config_from_env(get);
  EXPECT_TRUE(c.cuda_gemv && c.cuda_graph);
  const std::pair<const char*, const char*> bad[] = {{"LMTUNE_CUDA_GRAPH", "yes"},
                                                     {"LMTUNE_CUDA_FLASH", "2"},
                                                     {"LMTUNE_CUDA_ATTN_CHUNK_ROWS", "-1"},
                                                     {"LMTUNE_CUDA_ATTN_CHUNK_ROWS", "7x"},
                                                     {"LMTUNE_CUDA_PDL", "on"},
                                                     {"LMTUNE_GROUP_GATE_UP", "2"},
                                                     {"LMTUNE_CUDA_QGEMV_VARIANT", "11"},
                                                     {"LMTUNE_CUDA_QGEMV_VARIANT", "-1"},
                                                     {"LMTUNE_CUDA_DECODE_SPLIT", "x"},
                                                     {"LMTUNE_CUDA_QGEMV_TMA_SPLIT", "9"},
                                                     {"LMTUNE_FUSED_XENT", "off"},
                                                     {"LMTUNE_XENT_CHUNK_ROWS", "-5"},
                                                     {"LMTUNE_LORA_FUSED", "no"},
                                                     {"LMTUNE_LORA_16BIT", "2"},
                                                     {"LMTUNE_LORA_LINEAR", "x"},
                                                     {"LMTUNE_CUDA_BATCH_GRAPH", "on"},
                                                     {"LMTUNE_CUDA_DECODE_GQA", "2"},
                                                     {"LMTUNE_CUDA_QGEMV_SIMT_SPREAD", "yes"},
                                                     {"LMTUNE_CUDA_QGEMV_SIMT_TASKS", "9"},
                                                     {"LMTUNE_CUDA_QGEMV_SIMT_TASKS", "-1"},
                                                     {"LMTUNE_CUDA_QGEMV_SIMT_EARLY", "2"},
                                                     {"LMTUNE_CUDA_QGEMV_SIMT_WIDE", "on"},
                                                     {"LMTUNE_CUDA_QGEMV_STREAM", "3"},
                                                     {"LMTUNE_CUDA_QGEMV_STREAM_NORMED", "3"},
                                                     {"LMTUNE_CUDA_DECODE_CHAIN", "2"},
                                                     {"LMTUNE_CUDA_DECODE_CHAIN_QKV", "x"}};
  for (const auto& [name, value] : bad) {
    env = {{name, value}};
    try {
      (void)runtime_config_from_env(get);
      ADD_FAILURE() << name << "=" << value << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  }
}

TEST(RuntimeConfig, ScopedConfigRestores) {
  const RuntimeConfig before = runtime_config();
  {
    RuntimeConfig off = before;
    off.cuda_graph = !before.cuda_graph;
    off.attn_chunk_rows = 3;
    ScopedRuntimeConfig scoped(off);
    EXPECT_EQ(runtime_config().cuda_graph, off.cuda_graph);
    EXPECT_EQ(runtime_config().attn_chunk_rows, 3);
  }
  EXPECT_EQ(runtime_config().cuda_graph, before.cuda_graph);
  EXPECT_EQ(runtime_config().attn_chunk_rows, before.attn_chunk_rows);
}
