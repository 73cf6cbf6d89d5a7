// The kernel interface every device implements. Pointers are to contiguous device memory
// of the stated dtype; shapes are given as sizes. ops/ validates before calling, so a
// kernel may assume its arguments are consistent. A method a backend does not override
// throws "[name] has no <device> implementation".
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/quant_format.h"

namespace lmtune {

enum class BinaryOp { add, sub, mul, div };
enum class UnaryOp { silu, gelu_tanh, exp, neg, square, sqrt, rsqrt, scale, add_scalar, tanh };

struct GemmArgs {
  // For b in [0, batch): C[b] (M, N) = alpha * op(A[b]) (M, K) @ op(B[b]) (K, N) + beta * C[b]
  // Row-major; op(X) = X^T when trans_x. ld* are row strides in elements of the stored
  // matrix; stride_* are element strides between batches (0 broadcasts one matrix).
  const void* a = nullptr;
  const void* b = nullptr;
  void* c = nullptr;
  DType dtype = DType::f32;  // A, B and C
  int64_t M = 0, N = 0, K = 0;
  bool trans_a = false, trans_b = false;
  int64_t lda = 0, ldb = 0, ldc = 0;
  int64_t batch = 1, stride_a = 0, stride_b = 0, stride_c = 0;
  float alpha = 1.f, beta = 0.f;
  // C (read with beta, and written) in f32 while A and B are in dtype: f32 products of 16-bit
  // operands with f32 accumulation (LoRA's parameter gradients). The CPU's dtype is f32 anyway.
  bool c_f32 = false;
};

struct LoraLinearArgs {
  // A linear layer and its LoRA in one call, f32, every matrix contiguous row-major:
  //   forward:  xa (rows, r) = x (rows, in) @ a (in, r);  y (rows, out) = x @ w^T [+ bias] + scale * xa @ b
  //             (w (out, in), b (r, out), bias (out) or null)
  //   backward: dxa = scale * dy @ b^T;  dx = dy @ w + dxa @ a^T;  da = x^T @ dxa;  db = scale * xa^T @ dy
  //             (each of dx, da, db written when not null; da and db are sums over the rows)
  // The same sums as the separate products, taken a block of rows at a time while it is in cache.
  int64_t rows = 0, in = 0, out = 0, r = 0;
  float scale = 1.f;
  const float* x = nullptr;
  const float* w = nullptr;
  const float* bias = nullptr;
  const float* a = nullptr;
  const float* b = nullptr;
  float* xa = nullptr;  // written by forward, read by backward
  float* y = nullptr;
  const float* dy = nullptr;
  float* dx = nullptr;
  float* da = nullptr;
  float* db = nullptr;
};

struct AttentionArgs {
  // q (B, T, n_head, head_dim); k, v (B, S, n_kv_head, head_dim); out like q; lse f32 (B, n_head, T).
  // Query t is at absolute position q_offset + t, key s at position s. With causal, key s is
  // visible iff s <= q_offset + t, and with window > 0 also q_offset + t - s < window.
  // Head h reads kv head h / (n_head / n_kv_head).
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;
  DType dtype = DType::f32;
  int64_t B = 0, T = 0, S = 0, n_head = 0, n_kv_head = 0, head_dim = 0;
  int64_t q_offset = 0, window = 0;
  // When set, *q_offset_at (device memory, read by the kernel at run time) is added to q_offset:
  // a decode step captured once in a CUDA graph and replayed at every position. k and v then
  // span the whole cache capacity and the causal mask keeps the keys past the query unread.
  const int32_t* q_offset_at = nullptr;
  // Packed rows (training with --pack), when set: i32 (B, T) segment ids, non-decreasing along each
  // row, for self-attention (S == T, q_offset 0, causal). Key s is visible to query t only if
  // segment[b, s] == segment[b, t] as well: attention never crosses an example boundary.
  const int32_t* segment = nullptr;
  float scale = 1.f;
  bool causal = true;
  // > 0: each score becomes softcap * tanh(score / softcap) before the mask and softmax (gemma2's
  // attn_logit_softcapping). CUDA computes it on its cuBLASLt path and in the run-time-offset
  // decode kernel (the fused flash and split-decode kernels do not take it).
  float softcap = 0.f;
};

struct AttentionBackwardArgs {
  AttentionArgs fwd;           // with out and lse as the forward wrote them
  const void* dout = nullptr;  // like q
  void* dq = nullptr;          // like q (overwritten)
  void* dk = nullptr;          // like k (overwritten)
  void* dv = nullptr;          // like v (overwritten)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // Memory movement. Host pointers are ordinary CPU memory.
  virtual void copy_h2d(void* dst, const void* src, size_t n);
  virtual void copy_d2h(void* dst, const void* src, size_t n);
  virtual void copy_d2d(void* dst, const void* src, size_t n);
  // rows blocks of width bytes, from src every src_pitch bytes to dst every dst_pitch bytes
  // (a column block of a row-major matrix), both on this device; the blocks must not overlap.
  virtual void copy_d2d_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t rows);
  virtual void synchronize();

  // dst (n) = value, in dst's dtype.
  virtual void fill(void* dst, DType dt, int64_t n, float value);
  // dst (n) in dst_dt = src (n) in src_dt; float types and i32 -> float.
  virtual void cast(const void* src, DType src_dt, void* dst, DType dst_dt, int64_t n);
  // out[i] = a[i] op b[i % nb]; n % nb == 0. out may alias a.
  virtual void binary(BinaryOp op, const void* a, const void* b, void* out, int64_t n, int64_t nb, DType dt);
  // out[i] = alpha * a[i] + beta * b[i]; out may alias a or b.
  virtual void axpby(const void* a, const void* b, void* out, int64_t n, float alpha, float beta, DType dt);
  // out[i] = f(x[i]); param is the factor of scale and the addend of add_scalar.
  virtual void unary(UnaryOp op, const void* x, void* out, int64_t n, float param, DType dt);
  // dx[i] = dy[i] * f'(x[i]) for silu and gelu_tanh.
  virtual void unary_backward(UnaryOp op, const void* x, const void* dy, void* dx, int64_t n, DType dt);
  // out (outer, inner) in out_dt = sum over the middle axis of x (outer, n, inner) in dt.
  virtual void reduce_sum(const void* x, void* out, int64_t outer, int64_t n, int64_t inner, DType dt, DType out_dt);

  virtual void gemm(const GemmArgs& args);
  // Independent products (each batch 1; a mixture of experts' per-expert rows): here gemm for each in
  // turn; CUDA may take them as one launch of cuBLAS's grouped GEMM (LMTUNE_CUDA_GROUPED_GEMM=1).
  virtual void gemm_grouped(const std::vector<GemmArgs>& problems);

  // out (N, D) = weight (V, D)[ids (N)]; ids are checked by the caller to lie in [0, V).
  virtual void embedding(const void* weight, const int32_t* ids, void* out, int64_t N, int64_t D, DType dt);
  // dweight f32 (V, D) += dout (N, D) scattered by ids.
  virtual void embedding_backward(const void* dout, const int32_t* ids, float* dweight, int64_t N, int64_t D, DType dt);

  // out (rows, dim) = x * rsqrt(mean(x^2) + eps) * w; rstd f32 (rows) saved for backward.
  virtual void rms_norm(const void* x, const void* w, void* out, float* rstd, int64_t rows, int64_t dim, float eps,
                        DType dt);
  // dx (rows, dim) in dt; dw f32 (dim) overwritten with the sum over rows.
  virtual void rms_norm_backward(const void* x, const void* w, const float* rstd, const void* dy, void* dx, float* dw,
                                 int64_t rows, int64_t dim, DType dt);

  // x, out (B, T, H, D): rotate-half RoPE at positions pos_offset + t with angles
  // (pos * inv_freq[i]) for i < D/2, times mscale on cos and sin; inverse rotates by -angle.
  // pos_at, when not null, is an i32 in device memory added to pos_offset at run time.
  virtual void rope(const void* x, void* out, const float* inv_freq, int64_t B, int64_t T, int64_t H, int64_t D,
                    int64_t pos_offset, const int32_t* pos_at, float mscale, bool inverse, DType dt);
  // rope at per-token positions: the rotation of token (b, t) uses positions[b * T + t] (i32 (B, T)
  // in device memory), as packed rows restart their positions at each example.
  virtual void rope_at(const void* x, void* out, const float* inv_freq, const int32_t* positions, int64_t B, int64_t T,
                       int64_t H, int64_t D, float mscale, bool inverse, DType dt);
  // dst rows [*row_at, *row_at + n) = src (n rows of row_bytes), the row read from device
  // memory at run time (a KV-cache append inside a CUDA graph).
  virtual void copy_rows_at(void* dst, const void* src, int64_t row_bytes, int64_t n, const int32_t* row_at);

  // LoraLinearArgs' forward and backward; false (nothing written) where the backend has no such kernel, and the
  // caller composes the separate products instead. takes_lora_linear says beforehand whether lora_linear would run
  // for that many rows, so that a caller allocates its outputs only where it will.
  virtual bool takes_lora_linear(int64_t /*rows*/) const { return false; }
  virtual bool lora_linear(const LoraLinearArgs&) { return false; }
  virtual bool lora_linear_backward(const LoraLinearArgs&) { return false; }

  // Graph capture (CUDA graphs): the work this backend enqueues between graph_begin and
  // graph_end is recorded, not run, and graph_launch replays it with the same pointers and
  // sizes. Nothing in between may synchronize or copy from the host. Not every backend has it.
  virtual bool has_graphs() const { return false; }
  virtual void graph_begin();
  virtual void* graph_end();  // the replayable graph; graph_free releases it
  virtual void graph_launch(void* graph);
  virtual void graph_free(void* graph);

  // Fused inference paths for decoding (a few rows, no autograd). Each returns false where this
  // backend has no such kernel or the arguments are not covered; ops/ then runs the plain ops,
  // which give the same values.
  // ys[i] (M, ns[i]) = x (M, K) ws[i] (ns[i], K)^T for up to 3 weights sharing x (q, k, v).
  virtual bool gemv_group(const void* x, const void* const* ws, void* const* ys, const int64_t* ns, int count,
                          int64_t M, int64_t K, DType dt) {
    return false;
  }
  // out (M, N) = swiglu(x w_gate^T, x w_up^T), each product rounded to dt first.
  virtual bool gemv_swiglu(const void* x, const void* w_gate, const void* w_up, void* out, int64_t M, int64_t N,
                           int64_t K, DType dt) {
    return false;
  }
  // Batch 1: q_out (T, H, D) = rope(q); k_cache, v_cache rows [p, p + T) (KV, D each) = rope(k), v,
  // with p = pos_offset (+ *pos_at) both the row and the rotary position (mscale 1).
  virtual bool rope_append(const void* q, const void* k, const void* v, void* q_out, void* k_cache, void* v_cache,
                           const float* inv_freq, int64_t T, int64_t H, int64_t KV, int64_t D, int64_t pos_offset,
                           const int32_t* pos_at, DType dt) {
    return false;
  }
  // Whether rope_append_rows and attention_rows exist here (a packed batch's decoding rows in two
  // launches): callers skip gathering the rows where they do not.
  virtual bool has_decode_rows() const { return false; }
  // A packed batch's decoding rows, each its own sequence with its own dense cache (batch 1): row
  // i is query row row[i] of q (N, H, D) at position pos[i]; the layer's cache planes of its
  // sequence, (capacity, KV, D) each, start at k[i], v[i]. Passed by value to the kernels.
  struct DecodeRows {
    static constexpr int kMax = 64;
    int n = 0;
    int32_t row[kMax] = {}, pos[kMax] = {};
    void* k[kMax] = {};
    void* v[kMax] = {};
  };
  // For each listed row: q_out's row = rope(q's row) at pos; the cache row pos of k and v = rope(k's
  // row), v's row (q, q_out (N, H, D); k, v (N, KV, D)), the arithmetic of rope_append.
  virtual bool rope_append_rows(const void* q, const void* k, const void* v, void* q_out, const float* inv_freq,
                                int64_t H, int64_t KV, int64_t D, const DecodeRows& rows, DType dt) {
    return false;
  }
  // For each listed row: out's row (N, H * D) = causal attention of q's row (N, H, D) over its
  // cache's keys [0, pos] (those within `window` of pos when window > 0).
  virtual bool attention_rows(const void* q, void* out, const DecodeRows& rows, int64_t H, int64_t KV, int64_t D,
                              float scale, int64_t window, DType dt) {
    return false;
  }
  // A recorded step whose decoding rows change between replays (runtime/batch_graph.h). Called
  // right after graph_begin, graph_track_rows makes the capture remember each rope_append_rows
  // and attention_rows launch in order; graph_rows says how many a recorded graph holds, and
  // graph_set_rows(graph, i, rows) gives the i-th of them new rows (positions and cache planes,
  // the same n) for the replays that follow. False when the recorded launch cannot take them
  // (its work split was sized for other positions): record again.
  virtual void graph_track_rows();
  virtual size_t graph_rows(void* graph) const { return 0; }
  virtual bool graph_set_rows(void* graph, size_t i, const DecodeRows& rows);
  // sum (rows, dim) = x + y (rounded to dt); out = rms_norm(sum) * w, as add then rms_norm.
  virtual bool add_rms_norm(const void* x, const void* y, const void* w, void* sum, void* out, int64_t rows,
                            int64_t dim, float eps, DType dt) {
    return false;
  }

  // MLX's affine dequantization (quant/quant.h): out (rows, in) in dt, element i of row r =
  // round_dt(round_dt(scale * q) + bias), where q is the bits-wide code at bit offset i * bits of
  // row r's little-endian bit stream (wq: in * bits / 32 u32 words a row) and scale, bias (in dt)
  // are row r's entries for group i / group_size of (rows, in / group_size). Rounding after each
  // op as MLX's dequantize does in dt (identity for f32).
  virtual void dequantize_affine(const uint32_t* wq, const void* scales, const void* biases, void* out, int64_t rows,
                                 int64_t in, int bits, int group_size, DType dt);
  // MLX's affine quantization, bit for bit quant::quantize (mx.quantize): w (rows, in) in dt ->
  // wq u32 (rows, in * bits / 32), scales and biases (rows, in / group_size) in dt; per group the
  // range, scale, bias and codes are computed in f32 as quant/affine.cpp documents. (The KV cache's
  // --kv-bits: each new key and value row is quantized on the device.)
  virtual void quantize_affine(const void* w, uint32_t* wq, void* scales, void* biases, int64_t rows, int64_t in,
                               int bits, int group_size, DType dt);
  // y (M, N) = x (M, K) @ dequant(W)^T for MLX's affine layout (see dequantize_affine); x, y, scales,
  // biases in dt. False where this backend has no kernel for these sizes (callers then dequantize
  // and use gemm). M small (decoding: 1..8).
  virtual bool quantized_gemv(const void* x, const uint32_t* wq, const void* scales, const void* biases, void* y,
                              int64_t M, int64_t N, int64_t K, int bits, int group_size, DType dt);
  // The same for a few more rows of x (a batched step's, 9-64) on a kernel that reads the packed words
  // once; false where this backend has none for these sizes (callers then dequantize and use gemm).
  virtual bool quantized_gemm_rows(const void* x, const uint32_t* wq, const void* scales, const void* biases, void* y,
                                   int64_t M, int64_t N, int64_t K, int bits, int group_size, DType dt) {
    return false;
  }
  // The same for up to three weights that share x, bits and group size (decoding's q, k and v;
  // gate and up) in one launch: ys[i] (M, ns[i]). False where this backend cannot (callers then
  // run quantized_gemv per weight).
  virtual bool quantized_gemv_group(const void* x, const uint32_t* const* wqs, const void* const* scales,
                                    const void* const* biases, void* const* ys, const int64_t* ns, int count, int64_t M,
                                    int64_t K, int bits, int group_size, DType dt);
  // Decoding's fused quantized steps (affine; false where this backend has no kernel for them, and
  // ops/ composes the plain ops, which give the same values). y (M, N) = residual (M, N, not
  // aliasing y) + x W^T, the product rounded to dt first:
  virtual bool quantized_gemv_add(const void* x, const uint32_t* wq, const void* scales, const void* biases,
                                  const void* residual, void* y, int64_t M, int64_t N, int64_t K, int bits,
                                  int group_size, DType dt) {
    return false;
  }
  // out (M, N) = swiglu(x W_0^T, x W_1^T) for gate (index 0) and up (1), both (N, K), each product
  // rounded to dt first.
  virtual bool quantized_gemv_swiglu(const void* x, const uint32_t* const* wqs, const void* const* scales,
                                     const void* const* biases, void* out, int64_t M, int64_t N, int64_t K, int bits,
                                     int group_size, DType dt) {
    return false;
  }
  // Decoding's rope and KV-cache append in the q/k/v products' epilogue (quantized_gemv_normed's rope): the products'
  // results rounded to dt, then q's rows rotated into ys[0] and k's rotated and v's as they are into the cache planes
  // (capacity, n_kv_head, head_dim) at row pos (+ *pos_at, an i32 on the device, where not null), with rope_append's
  // arithmetic, so the values it writes are rope_append's.
  struct RopeAppendArgs {
    const float* inv_freq;  // (head_dim / 2)
    void* k_cache;
    void* v_cache;
    int64_t pos;
    const int32_t* pos_at;
    int64_t head_dim;
  };
  // Decoding's rms_norm fused into the products after it: one row x (K), and the products take rms_norm(x) * norm_w
  // (norm_w (K) in dt, eps; rounded to dt, the values rms_norm writes) in place of x; norm_w null: x itself. Either up
  // to three products as quantized_gemv_group (ys[i] (ns[i])), or with swiglu gate and up (count 2, ns[0] == ns[1])
  // into ys[0] as quantized_gemv_swiglu; or with rope, q, k and v (count 3) as RopeAppendArgs says. False where this
  // backend has no such kernel (ops/ then runs rms_norm, the plain products and rope_append, which give the same
  // values).
  virtual bool quantized_gemv_normed(const void* x, const void* norm_w, float eps, const uint32_t* const* wqs,
                                     const void* const* scales, const void* const* biases, void* const* ys,
                                     const int64_t* ns, int count, bool swiglu, int64_t K, int bits, int group_size,
                                     DType dt, const RopeAppendArgs* rope = nullptr) {
    return false;
  }
  // Decoding's attention output through o, then the MLP, in one launch: x1 = x + a W_o^T; out = x1 + down(swiglu(n
  // W_gate^T, n W_up^T)), n = rms_norm(x1) * norm_w; act the swiglu. One row each, affine weights of dt; each value as
  // quantized_gemv_add and quantized_gemv_normed write it where they take variant 9's kernel (rows up to 12288; longer
  // rows, which they give to variant 7, take variant 9's arithmetic here: the same function, summed in another order).
  // x1 and act are written too; x1, act and out must be buffers of their own (other blocks read a, x1 and act while
  // the launch writes), out may be x. False where this backend has no such kernel (nothing written), and the caller
  // runs those launches; takes_decode_chain says so beforehand from everything but the three outputs.
  struct QuantizedDecodeChain {
    const void* a;  // (n_attn) attention output
    const void* x;  // (n_embd) the stream before attention
    void* x1;       // (n_embd)
    void* act;      // (n_ff)
    void* out;      // (n_embd)
    const void* norm_w;
    float eps;
    const uint32_t* wq[4];  // o (n_embd, n_attn), gate and up (n_ff, n_embd), down (n_embd, n_ff)
    const void* scales[4];
    const void* biases[4];
    int64_t n_embd, n_attn, n_ff;
    int bits, group_size;
    DType dt;
    // Optional (next_wq[0] null: none), a fourth phase: the next layer's q, k and v of out, rms-normed with
    // next_norm_w, as quantized_gemv_normed with next_rope writes them (q rotated into next_q, k rotated and v into
    // the cache planes), the same format as the rest. next_q must be a buffer of its own.
    const uint32_t* next_wq[3];
    const void* next_scales[3];
    const void* next_biases[3];
    int64_t next_n[3];
    const void* next_norm_w;
    float next_eps;
    void* next_q;
    RopeAppendArgs next_rope;
  };
  virtual bool takes_decode_chain(const QuantizedDecodeChain&) const { return false; }
  virtual bool quantized_decode_chain(const QuantizedDecodeChain&) { return false; }
  // MLX's fp modes (mode mxfp4, nvfp4 or mxfp8; core/quant_format.h): out (rows, in) in dt, element
  // i of row r = round_dt(round_dt(v) * round_dt(s)), v the value of the code at bit offset i * bits
  // of row r's stream (E2M1 for the fp4 modes, E4M3 for mxfp8; core/fp_formats.h) and s the value of
  // row r's u8 scale for group i / group_size (E8M0 = 2^(s - 127), or E4M3 for nvfp4), as
  // mx.dequantize(..., dtype=dt) computes it.
  virtual void dequantize_fp(const uint32_t* wq, const uint8_t* scales, void* out, int64_t rows, int64_t in,
                             QuantMode mode, DType dt);
  // y (M, N) = x (M, K) @ dequant(W)^T for those modes; false where this backend has no kernel for
  // these sizes (callers then dequantize and use gemm). M small (decoding: 1..8).
  virtual bool quantized_gemv_fp(const void* x, const uint32_t* wq, const uint8_t* scales, void* y, int64_t M,
                                 int64_t N, int64_t K, QuantMode mode, DType dt);
  virtual void attention(const AttentionArgs& a);
  virtual void attention_backward(const AttentionBackwardArgs& a);

  // y (rows, n) = softmax(x) along the last axis; backward dx = y * (dy - sum(dy * y)).
  virtual void softmax(const void* x, void* y, int64_t rows, int64_t n, DType dt);
  virtual void softmax_backward(const void* y, const void* dy, void* dx, int64_t rows, int64_t n, DType dt);

  // out (n) = silu(gate) * up; backward writes dgate and dup.
  virtual void swiglu(const void* gate, const void* up, void* out, int64_t n, DType dt);
  virtual void swiglu_backward(const void* gate, const void* up, const void* dout, void* dgate, void* dup, int64_t n,
                               DType dt);

  // logits (N, V); targets i32 (N), a target < 0 is ignored. loss f32 (N) = lse - logit[target]
  // (0 where ignored); lse f32 (N). Backward: dlogits (N, V) = (softmax - onehot) * dloss[row],
  // rows with ignored targets get zeros. Probabilities are recomputed, never stored.
  virtual void cross_entropy(const void* logits, const int32_t* targets, float* loss, float* lse, int64_t N, int64_t V,
                             DType dt);
  virtual void cross_entropy_backward(const void* logits, const int32_t* targets, const float* lse, const float* dloss,
                                      void* dlogits, int64_t N, int64_t V, DType dt);

  // AdamW on f32 (n): m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
  // p -= lr * (m / bc1 / (sqrt(v / bc2) + eps) + wd * p). bc1 = bc2 = 1 disables bias correction.
  virtual void adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float b1, float b2, float eps,
                     float wd, float bc1, float bc2);

 protected:
  [[noreturn]] void missing(const char* op) const;
};

Backend& backend(Device d);
Backend& cpu_backend();
Backend& cuda_backend();         // defined by cuda/ or no_cuda/
bool cuda_available();           // a CUDA device is present and the backend is built
std::string cuda_device_name();  // "" where none
// Launches of the bulk-tensor-copy quantized GEMV so far (qgemv_tma.cu; 0 without CUDA): lets a
// test tell that kernel ran rather than its fallback.
int64_t cuda_qgemv_tma_launches();
int64_t cuda_qgemv_ring_launches();
int64_t cuda_qgemv_simt_ring_launches();
int64_t cuda_qgemv_normed_launches();         // Backend::quantized_gemv_normed calls that ran
int64_t cuda_qgemv_rope_launches();           // those of them with RopeAppendArgs
int64_t cuda_qgemv_simt_early_launches();     // variant 9's launches with RuntimeConfig::cuda_qgemv_simt_early
int64_t cuda_qgemv_simt_wide_launches();      // and those with one-row tasks under cuda_qgemv_simt_wide
int64_t cuda_qgemv_stream_launches();         // variant 9's single products through qgemv_stream.cu
int64_t cuda_qgemv_stream_normed_launches();  // and its normed launches there
int64_t cuda_decode_chain_launches();         // Backend::quantized_decode_chain calls that ran
int64_t cuda_decode_chain_qkv_launches();     // those of them with the next layer's q, k and v

}  // namespace lmtune
