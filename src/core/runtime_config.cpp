#include "core/runtime_config.h"

#include <charconv>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string_view>

#include "core/error.h"

namespace lmtune {

namespace {

struct State {
  std::once_flag once;  // set by the first read or the first set, whichever comes first
  RuntimeConfig config;
};

State& state() {
  static State s;
  return s;
}

bool read_switch(const char* name, const char* v, bool dflt) {
  if (!v || !*v) return dflt;
  if (std::strcmp(v, "0") == 0) return false;
  if (std::strcmp(v, "1") == 0) return true;
  fail("[runtime_config] ", name, " must be 0 or 1, got '", v, "'");
}

int64_t read_count(const char* name, const char* v, int64_t dflt) {
  if (!v || !*v) return dflt;
  std::string_view s(v);
  int64_t n = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
  LMT_CHECK(ec == std::errc() && end == s.data() + s.size() && n >= 0, "[runtime_config] ", name,
            " must be an integer >= 0, got '", v, "'");
  return n;
}

}  // namespace

RuntimeConfig runtime_config_from_env(const std::function<const char*(const char*)>& get) {
  auto var = [&](const char* name) { return get ? get(name) : std::getenv(name); };
  RuntimeConfig d, c;
  c.cuda_gemv = read_switch("LMTUNE_CUDA_GEMV", var("LMTUNE_CUDA_GEMV"), d.cuda_gemv);
  c.cuda_qgemm_rows = read_switch("LMTUNE_CUDA_QGEMM_ROWS", var("LMTUNE_CUDA_QGEMM_ROWS"), d.cuda_qgemm_rows);
  c.cuda_flash = read_switch("LMTUNE_CUDA_FLASH", var("LMTUNE_CUDA_FLASH"), d.cuda_flash);
  c.cuda_decode_split = read_switch("LMTUNE_CUDA_DECODE_SPLIT", var("LMTUNE_CUDA_DECODE_SPLIT"), d.cuda_decode_split);
  c.cuda_decode_gqa = read_switch("LMTUNE_CUDA_DECODE_GQA", var("LMTUNE_CUDA_DECODE_GQA"), d.cuda_decode_gqa);
  c.attn_chunk_rows = read_count("LMTUNE_CUDA_ATTN_CHUNK_ROWS", var("LMTUNE_CUDA_ATTN_CHUNK_ROWS"), d.attn_chunk_rows);
  c.cuda_grouped_gemm = read_switch("LMTUNE_CUDA_GROUPED_GEMM", var("LMTUNE_CUDA_GROUPED_GEMM"), d.cuda_grouped_gemm);
  c.cuda_cache_bound = read_switch("LMTUNE_CUDA_CACHE_BOUND", var("LMTUNE_CUDA_CACHE_BOUND"), d.cuda_cache_bound);
  c.moe_grouped = read_switch("LMTUNE_MOE_GROUPED", var("LMTUNE_MOE_GROUPED"), d.moe_grouped);
  c.cuda_graph = read_switch("LMTUNE_CUDA_GRAPH", var("LMTUNE_CUDA_GRAPH"), d.cuda_graph);
  c.cuda_batch_graph = read_switch("LMTUNE_CUDA_BATCH_GRAPH", var("LMTUNE_CUDA_BATCH_GRAPH"), d.cuda_batch_graph);
  c.cuda_pdl = read_switch("LMTUNE_CUDA_PDL", var("LMTUNE_CUDA_PDL"), d.cuda_pdl);
  c.group_gate_up = read_switch("LMTUNE_GROUP_GATE_UP", var("LMTUNE_GROUP_GATE_UP"), d.group_gate_up);
  c.fused_epilogues = read_switch("LMTUNE_FUSED_EPILOGUES", var("LMTUNE_FUSED_EPILOGUES"), d.fused_epilogues);
  c.fused_norms = read_switch("LMTUNE_FUSED_NORMS", var("LMTUNE_FUSED_NORMS"), d.fused_norms);
  c.fused_rope = read_switch("LMTUNE_FUSED_ROPE", var("LMTUNE_FUSED_ROPE"), d.fused_rope);
  c.cuda_profile = read_switch("LMTUNE_CUDA_PROFILE", var("LMTUNE_CUDA_PROFILE"), d.cuda_profile);
  c.fused_xent = read_switch("LMTUNE_FUSED_XENT", var("LMTUNE_FUSED_XENT"), d.fused_xent);
  c.lora_fused = read_switch("LMTUNE_LORA_FUSED", var("LMTUNE_LORA_FUSED"), d.lora_fused);
  c.lora_linear = read_switch("LMTUNE_LORA_LINEAR", var("LMTUNE_LORA_LINEAR"), d.lora_linear);
  c.lora_16bit = read_switch("LMTUNE_LORA_16BIT", var("LMTUNE_LORA_16BIT"), d.lora_16bit);
  c.xent_chunk_rows = read_count("LMTUNE_XENT_CHUNK_ROWS", var("LMTUNE_XENT_CHUNK_ROWS"), d.xent_chunk_rows);
  c.cuda_qgemv_variant =
      read_count("LMTUNE_CUDA_QGEMV_VARIANT", var("LMTUNE_CUDA_QGEMV_VARIANT"), d.cuda_qgemv_variant);
  c.cuda_qgemv_ring_x_smem =
      read_switch("LMTUNE_CUDA_QGEMV_RING_X_SMEM", var("LMTUNE_CUDA_QGEMV_RING_X_SMEM"), d.cuda_qgemv_ring_x_smem);
  c.cuda_qgemv_simt_spread =
      read_switch("LMTUNE_CUDA_QGEMV_SIMT_SPREAD", var("LMTUNE_CUDA_QGEMV_SIMT_SPREAD"), d.cuda_qgemv_simt_spread);
  c.cuda_qgemv_simt_early =
      read_switch("LMTUNE_CUDA_QGEMV_SIMT_EARLY", var("LMTUNE_CUDA_QGEMV_SIMT_EARLY"), d.cuda_qgemv_simt_early);
  c.cuda_qgemv_simt_wide =
      read_switch("LMTUNE_CUDA_QGEMV_SIMT_WIDE", var("LMTUNE_CUDA_QGEMV_SIMT_WIDE"), d.cuda_qgemv_simt_wide);
  c.cuda_decode_chain = read_switch("LMTUNE_CUDA_DECODE_CHAIN", var("LMTUNE_CUDA_DECODE_CHAIN"), d.cuda_decode_chain);
  c.cuda_decode_chain_qkv =
      read_switch("LMTUNE_CUDA_DECODE_CHAIN_QKV", var("LMTUNE_CUDA_DECODE_CHAIN_QKV"), d.cuda_decode_chain_qkv);
  c.cuda_qgemv_simt_tasks =
      read_count("LMTUNE_CUDA_QGEMV_SIMT_TASKS", var("LMTUNE_CUDA_QGEMV_SIMT_TASKS"), d.cuda_qgemv_simt_tasks);
  LMT_CHECK(c.cuda_qgemv_simt_tasks <= 8, "[runtime_config] LMTUNE_CUDA_QGEMV_SIMT_TASKS must be 0 to 8, got ",
            c.cuda_qgemv_simt_tasks);
  c.cuda_qgemv_stream_normed =
      read_count("LMTUNE_CUDA_QGEMV_STREAM_NORMED", var("LMTUNE_CUDA_QGEMV_STREAM_NORMED"), d.cuda_qgemv_stream_normed);
  LMT_CHECK(c.cuda_qgemv_stream_normed <= 2, "[runtime_config] LMTUNE_CUDA_QGEMV_STREAM_NORMED must be 0, 1 or 2, got ",
            c.cuda_qgemv_stream_normed);
  c.cuda_qgemv_stream = read_count("LMTUNE_CUDA_QGEMV_STREAM", var("LMTUNE_CUDA_QGEMV_STREAM"), d.cuda_qgemv_stream);
  LMT_CHECK(c.cuda_qgemv_stream <= 2, "[runtime_config] LMTUNE_CUDA_QGEMV_STREAM must be 0, 1 or 2, got ",
            c.cuda_qgemv_stream);
  c.cuda_qgemv_tma_split =
      read_count("LMTUNE_CUDA_QGEMV_TMA_SPLIT", var("LMTUNE_CUDA_QGEMV_TMA_SPLIT"), d.cuda_qgemv_tma_split);
  LMT_CHECK(c.cuda_qgemv_tma_split <= 8, "[runtime_config] LMTUNE_CUDA_QGEMV_TMA_SPLIT must be 0 to 8, got ",
            c.cuda_qgemv_tma_split);
  LMT_CHECK(c.cuda_qgemv_variant <= 10, "[runtime_config] LMTUNE_CUDA_QGEMV_VARIANT must be 0 to 10, got ",
            c.cuda_qgemv_variant);
  return c;
}

const RuntimeConfig& runtime_config() {
  State& s = state();
  // An invalid variable throws here, leaving the flag unset: every later call throws the same.
  std::call_once(s.once, [&] { s.config = runtime_config_from_env(); });
  return s.config;
}

void set_runtime_config(const RuntimeConfig& config) {
  State& s = state();
  std::call_once(s.once, [] {});  // the environment is then never read
  s.config = config;
}

}  // namespace lmtune
