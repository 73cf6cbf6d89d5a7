// Kernel switches, read once from the environment (LMTUNE_CUDA_*) at the first runtime_config()
// call instead of at every launch; tests and benchmarks set them directly (ScopedRuntimeConfig).
#pragma once
#include <cstdint>
#include <functional>

namespace lmtune {

struct RuntimeConfig {
  bool cuda_gemv = true;        // LMTUNE_CUDA_GEMV=0: products of 1-4 rows go to cuBLASLt, not gemv.cu
  bool cuda_qgemm_rows = true;  // LMTUNE_CUDA_QGEMM_ROWS=0: 4-bit products of 9-64 rows dequantize, not qgemm_rows.cu
  bool cuda_flash = true;       // LMTUNE_CUDA_FLASH=0: attention takes attention.cu's gemm path
  // LMTUNE_CUDA_GROUPED_GEMM=1: Backend::gemm_grouped (a mixture's per-expert products) as one launch of
  // cuBLAS's grouped GEMM instead of one cuBLASLt product after another: off by default, a Mixtral-shaped
  // LoRA step ran 1.09x faster on cuBLASLt on an H100 (8 experts of ~2k rows; bench/NOTES.md).
  // LMTUNE_CUDA_CACHE_BOUND=1: the GPU allocator's cache bounded as the CPU's is (1.25 x the most bytes
  // ever in use + 32 MiB; least recently freed blocks go back first). Off by default until measured:
  // cudaFree synchronizes, and a training step's varying sizes could make the cache churn.
  bool cuda_cache_bound = false;
  bool cuda_grouped_gemm = false;
  // LMTUNE_MOE_GROUPED=0: a mixture of experts runs each expert's MLP on its gathered rows and
  // scatters each result (nn/moe.cpp's loop), instead of one gather, grouped products and one scatter.
  bool moe_grouped = true;
  // LMTUNE_CUDA_DECODE_SPLIT=0: decoding's attention (T <= 4) takes the flash kernel, one block a
  // head, instead of decode_split.cu's blocks over stretches of the keys.
  bool cuda_decode_split = true;
  // LMTUNE_CUDA_DECODE_GQA=1: decode_split.cu gives one block to up to 4 query heads that share a kv
  // head (each key and value read once for all of them) instead of blocks a head. Off by default until
  // its gpu tests and figures have run on a GPU (written in session 18, when none could be started).
  bool cuda_decode_gqa = false;
  int64_t attn_chunk_rows = 0;  // LMTUNE_CUDA_ATTN_CHUNK_ROWS: most query rows per gemm-path chunk (0: no cap)
  bool cuda_graph = true;       // LMTUNE_CUDA_GRAPH=0: decode runs eagerly, no recorded CUDA graph
  // LMTUNE_CUDA_BATCH_GRAPH=1: the server's batched decoding steps (2-64 sequences) replay a recorded
  // CUDA graph (runtime/batch_graph.h). Off until its GPU tests and figures have run on a GPU.
  bool cuda_batch_graph = false;
  // LMTUNE_CUDA_PDL=1: a recorded decode step's kernels go out with programmatic dependent launch
  // (off by default: a 4-bit Mistral-7B decoded 3% slower with it on the H200; bench/NOTES.md).
  bool cuda_pdl = false;
  // LMTUNE_CUDA_QGEMV_VARIANT: the quantized GEMV's batches (backend/cuda/qgemv.cu; for A/B
  // measurements): 0 loads 8 words a row, then uses them; 1 software-pipelines 4-word batches; 2
  // loads 16 words, then uses them; 3 stages the weights through shared memory by cp.async
  // in 64-byte chunks of a row, 4 in 128-byte chunks (qgemv_async.cu), 5 is 3 with fewer
  // instructions a chunk (qgemv_lean.cu): +5-10% decode over 0 on the H200; 6 is 5 with x's group
  // sums computed once a block (qgemv_lean.cu); 7 is 5 with the weights brought by
  // bulk tensor copies (qgemv_tma.cu; the same sums; 5 where its copies cannot take a shape): a
  // token's products 2.13 ms against 5's 2.31 on the H200 (bench/NOTES.md); 8 streams each block's
  // tiles through a ring of bulk copies while 8 warps compute (qgemv_ring.cu; 7, then 5, where its
  // copies cannot take a shape); 9, the default, runs one-row 4-bit products (any group, K <= 12288) on the CUDA
  // cores, warps streaming rows grid-stride (qgemv_simt.cu; 7 for the others): decode +7-8% over 7 on an H100,
  // session 23 (bench/NOTES.md); 10 is 9 with each warp's chunks brought through a
  // ring of cp.async stages in shared memory (qgemv_simt_ring.cu; 9, then 7, where it cannot take a shape); where 3-8
  // do not apply (4 bits in groups of 128, 8 bits in groups of 64 or 128, 2 bits), 0. Decoding's fused epilogues
  // (swiglu of gate and up, the residual add of down) run with 5 to 10 only.
  int64_t cuda_qgemv_variant = 9;
  // LMTUNE_CUDA_QGEMV_TMA_SPLIT: variant 7's most warps sharing a row tile's K (1, 2, 4, 8; 0: as
  // the lean kernel splits, which gives the lean kernel's sums bit for bit). Fewer warps a tile
  // give each warp more chunks to stream through its two stages (for A/B measurements).
  int64_t cuda_qgemv_tma_split = 0;
  // LMTUNE_CUDA_QGEMV_RING_X_SMEM=0: variant 8 reads x through L1 for every group instead of from
  // its own copy in shared memory (made once a block where x is at most 28 KB; for A/B measurements).
  bool cuda_qgemv_ring_x_smem = true;
  // LMTUNE_CUDA_QGEMV_SIMT_SPREAD=0: variant 9 without its SPREAD layout (qgemv_simt.cuh: codes turned into floats in
  // place in three copies of each word, x staged pre-scaled; 10 instructions a word on the codes instead of 16; +3%
  // decode on an H100, session 27). Only where variant 9 is the one chosen: variant 10's fused rope borrows variant 9's
  // kernel without it, so that its sums stay variant 10's.
  bool cuda_qgemv_simt_spread = true;
  // LMTUNE_CUDA_QGEMV_SIMT_TASKS: variant 9's least tasks a warp (1-8) before its grid reaches what the card holds:
  // fewer blocks for the small products, since every block stages x; 0 (the default): one where the tasks fit the
  // card's warps at once, else two (qgemv_simt.cuh's grid_for; a 4-bit Mistral-7B decode +4.1% against 2 on an H100,
  // bench/NOTES.md, session 30). The sums do not change.
  int64_t cuda_qgemv_simt_tasks = 0;
  // LMTUNE_CUDA_QGEMV_SIMT_EARLY=1: variant 9's warps load the first round of their first task before x is staged (and
  // before the wait on the previous kernel), so that its latency runs under the staging (qgemv_simt.cu; the same sums;
  // off: a decode step lost 2-3% with it on an H100, bench/NOTES.md, session 30).
  bool cuda_qgemv_simt_early = false;
  // LMTUNE_CUDA_QGEMV_SIMT_WIDE=1: variant 9's one-row tasks (o's product, k's, v's) load 4 chunks a lane a round
  // instead of 2 (the registers two-row tasks' rounds take): half the dependent rounds; the same sums (qgemv_simt.cu;
  // off until measured on a GPU: bench/NOTES.md, session 28).
  bool cuda_qgemv_simt_wide = false;
  // LMTUNE_CUDA_QGEMV_STREAM=1 or 2: variant 9's single products (o and down with their residual add, lm_head) through
  // a kernel that reads x through L1 as it goes instead of staging it a block, the next chunk of its two rows loaded
  // ahead, with 1 or 2 warps a pair of rows (qgemv_stream.cu; variant 9's arithmetic without SPREAD, the chunk sums of
  // x in another order); 0: variant 9's own kernel. Default 2: the decode step's products 2.07 -> 1.95 ms and decode
  // +2.2% / +4.7% at prompts 16 / 512 on an H200 (bench/RESULTS.md, session 32).
  int64_t cuda_qgemv_stream = 2;
  // LMTUNE_CUDA_QGEMV_STREAM_NORMED=1: variant 9's normed launches (q/k/v with the rope epilogue, gate/up with swiglu)
  // streamed the same way, one two-row task a warp, rms_norm's factor taken out of the sums (y = rs sum q (x w)) so
  // that x is never staged; the values differ from rms_norm's then the products' by its rounding of the normed x (a few
  // ulp of the output; qgemv_stream.cu). 2: q/k/v only (gate/up, issue-bound at ~6 slots a code, stays variant 9's).
  // 0: off (the default: on an H200 it made q/k/v 10.6 -> 11.2 us and gate/up 26.7 -> 38.1, decode -1% with 2 and
  // -12% with 1; bench/RESULTS.md, session 32).
  int64_t cuda_qgemv_stream_normed = 0;
  // LMTUNE_CUDA_DECODE_CHAIN=1: a quantized decode step's o product, gate/up and down as one launch of three phases
  // with grid barriers between them (qgemv_chain.cu; variant 9's values, bit for bit; off: slower than the launches it
  // replaces on an H100, 67 against 55 us a layer, bench/NOTES.md, session 30).
  bool cuda_decode_chain = false;
  // LMTUNE_CUDA_DECODE_CHAIN_QKV=1 (with the chain): the next layer's q/k/v products (its input norm, rope and cache
  // append) as the chain's fourth phase, so that a layer's step is its attention and one launch (off: slower again,
  // session 30).
  bool cuda_decode_chain_qkv = false;
  // LMTUNE_GROUP_GATE_UP=0: a decode step's quantized gate and up products as two launches, not
  // one (grouped: +4% with variant 5; variant 0 runs big grouped matrices one by one anyway).
  bool group_gate_up = true;
  // LMTUNE_FUSED_EPILOGUES=0: a quantized decode step's swiglu and the residual add after down as
  // kernels of their own, not in the GEMVs' epilogues (variants 5 and 6; for A/B measurements).
  bool fused_epilogues = true;
  // LMTUNE_FUSED_NORMS=0: a quantized decode step's rms_norms as kernels of their own, not inside the q/k/v and gate/up
  // products' staging of x (variants 9 and 10; Backend::quantized_gemv_normed) with the residual add after attention
  // in o's epilogue (the same values; +6% decode on an H100, session 27).
  bool fused_norms = true;
  // LMTUNE_FUSED_ROPE=0: a quantized decode step's rope and KV-cache append as a rope_append kernel a layer, not in the
  // epilogue of the q/k/v products (variant 9; Backend::quantized_gemv_normed's rope; the same values).
  bool fused_rope = true;
  // LMTUNE_CUDA_PROFILE=1: every kernel and cuBLASLt product timed with CUDA events and a table of
  // time by kernel printed to stderr at exit (backend/cuda/profile.cpp; graph captures excluded).
  bool cuda_profile = false;
  // LMTUNE_FUSED_XENT=0: Model::loss materializes the (N, n_vocab) logits and takes the plain
  // cross-entropy, instead of ag::linear_cross_entropy's chunks (for A/B measurements).
  bool fused_xent = true;
  // LMTUNE_XENT_CHUNK_ROWS: most rows a chunk of the fused loss (0: as many as keep one chunk's
  // logits within 256 MiB).
  int64_t xent_chunk_rows = 0;
  // LMTUNE_LORA_FUSED=0: an adapted layer's scale * (x A) B added to the base output op by op (cast,
  // products, scale, add), not by ag::lora_add (the scale the second product's alpha, the sum its
  // beta = 1 into the base output); for A/B measurements.
  bool lora_fused = true;
  // LMTUNE_LORA_LINEAR=0: an adapted f32 layer's base product and LoRA as separate nodes (linear, lora_add) even
  // where the backend runs them as one (ag::lora_linear: the CPU, a block of rows at a time); for A/B measurements.
  bool lora_linear = true;
  // With lora_add on CUDA, a 16-bit base (bf16) keeps the adapter's products in its dtype (x and dy
  // read as they are, A and B cast once a call, f32 accumulation; dA and dB written in f32) instead
  // of casting x and dy to f32: 1.41x a Mistral-7B LoRA step on an H200, the same losses
  // (bench/NOTES.md, "Training speed: the profile first"). LMTUNE_LORA_16BIT=0: the f32 products.
  // The CPU keeps f32 products either way.
  bool lora_16bit = true;
};

// The config in force: read from the environment at the first call unless set before. Set it at
// start-up or between runs, not while another thread launches kernels.
const RuntimeConfig& runtime_config();
void set_runtime_config(const RuntimeConfig& config);

// The config the variables give (the defaults for those unset or empty). A switch takes 0 or 1,
// the chunk rows an integer >= 0; anything else throws naming the variable. get is std::getenv
// outside tests.
RuntimeConfig runtime_config_from_env(const std::function<const char*(const char*)>& get = {});

// Sets a config for a scope and puts the previous one back.
class ScopedRuntimeConfig {
 public:
  explicit ScopedRuntimeConfig(const RuntimeConfig& config) : saved_(runtime_config()) { set_runtime_config(config); }
  ~ScopedRuntimeConfig() { set_runtime_config(saved_); }
  ScopedRuntimeConfig(const ScopedRuntimeConfig&) = delete;
  ScopedRuntimeConfig& operator=(const ScopedRuntimeConfig&) = delete;

 private:
  RuntimeConfig saved_;
};

}  // namespace lmtune
