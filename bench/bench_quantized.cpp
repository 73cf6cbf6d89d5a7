// Decoding's weight products on quantized weights (MLX's affine layout, default 4 bits, group 64,
// bf16 scales and biases) at Mistral-7B's shapes: the fused kernel (Backend::quantized_gemv,
// qgemv.cu) against today's path, ops::dequantize into a scratch matrix then ops::linear
// (gemv.cu for 1-4 rows, cuBLASLt above). Time per call from CUDA graphs of many calls (so that
// launch gaps stay out, as in the decode graph), several copies of each weight cycled so that L2
// holds none between calls; GB/s counts the packed bytes read once (wq + scales + biases), beside
// the device-to-device copy bandwidth (read + write) measured in the same run.
// q, k, v and gate, up also run as one launch each (quantized_gemv_group), as decoding runs them.
// Rows past 8 (a batched step's) take the rows kernel (Backend::quantized_gemm_rows, qgemm_rows.cu).
//   bench_quantized [--bits B] [--group G] [--rows 1,8] [--once (one eager call each, for ncu)]
//   [--warm (one copy of each weight, so that the products that fit in L2 read it from there: what a product costs
//   with its weights already in L2)]
// With one row, a second table: the launches a fused decode step makes (the input norm inside q/k/v's launch with the
// rope and cache append in its epilogue, o with the residual add, the norm inside gate/up's launch with swiglu, down
// with the residual add, lm_head), each alone and a layer's four in sequence, under the runtime config in force
// (LMTUNE_CUDA_QGEMV_* and the fusion switches reach them as they reach lmtune). --configs "SPEC ...": instead, that
// table under each SPEC (comma-separated NAME=VALUE settings over the environment, "-" for none) in turn, the specs
// alternated twice: an A/B of the switches in one process, with no model to write.
// --fp: instead, one row through MLX's fp modes (mxfp4, nvfp4, mxfp8) at the same shapes: the fused product
// (Backend::quantized_gemv_fp, qgemv_fp.cu) against ops::dequantize + ops::linear.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"
#include "core/runtime_config.h"
#include "ops/ops.h"

namespace {

using namespace lmtune;
using Clock = std::chrono::steady_clock;

double secs(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Device-to-device copy of 1 GiB, bytes read + written over time (as bench_generate measures it).
double copy_bandwidth_gbps() {
  Tensor src = ops::uniform({int64_t(1) << 29}, 3, -1.f, 1.f, DType::bf16, Device::cuda);
  Tensor dst = ops::empty(src.shape(), DType::bf16, Device::cuda);
  Backend& be = backend(Device::cuda);
  for (int i = 0; i < 3; ++i) ops::copy_into(dst, src);
  be.synchronize();
  std::vector<double> t;
  for (int r = 0; r < 5; ++r) {
    auto t0 = Clock::now();
    for (int i = 0; i < 10; ++i) ops::copy_into(dst, src);
    be.synchronize();
    t.push_back(secs(t0) / 10);
  }
  return 2.0 * double(src.nbytes()) / median(t) / 1e9;
}

// Microseconds a call: `calls` calls of body(i) recorded into one CUDA graph, the graph replayed
// 7 times, the median replay over calls. Eager warm-up first (plans, allocator blocks).
template <typename F>
double time_graph(F&& body, int calls) {
  Backend& be = backend(Device::cuda);
  for (int i = 0; i < 3; ++i) body(i);
  be.synchronize();
  be.graph_begin();
  for (int i = 0; i < calls; ++i) body(i);
  void* graph = be.graph_end();
  be.graph_launch(graph);
  be.synchronize();
  std::vector<double> t;
  for (int r = 0; r < 7; ++r) {
    auto t0 = Clock::now();
    be.graph_launch(graph);
    be.synchronize();
    t.push_back(secs(t0) / calls * 1e6);
  }
  be.graph_free(graph);
  return median(t);
}

// One launch: a single product, or a group of products sharing x (quantized_gemv_group: decoding's
// q, k, v and gate, up). per_token: launches a token (a launch of every row that is not `grouped`
// for the single-product token; of every row but those `split` for the grouped one).
struct Product {
  const char* name;
  std::vector<int64_t> Ns;
  int64_t K;
  int per_token_single, per_token_grouped;
};

// Host random words: xorshift64 from seed, 32 bits of each draw.
struct Draws {
  uint64_t r;
  explicit Draws(uint64_t seed) : r(0x9E3779B97F4A7C15ull * seed) {}
  uint32_t next() {
    r ^= r << 13, r ^= r >> 7, r ^= r << 17;
    return uint32_t(r >> 16);
  }
};

// A matrix's packed words, scales and biases in `copies` copies: one host draw of the words (from word_seed), uploaded
// into every copy (distinct addresses are what keeps L2 from serving a call); copy c's scales (of either sign) and
// biases (around -7.5 scales) drawn from scale_seed + c and bias_seed + c.
struct Packed {
  std::vector<Tensor> wq, sc, bi;
};
Packed make_packed(int64_t N, int64_t K, int bits, int group, int copies, uint64_t word_seed, uint64_t scale_seed,
                   uint64_t bias_seed) {
  Backend& be = backend(Device::cuda);
  const int64_t words = K * bits / 32, groups = K / group;
  std::vector<uint32_t> host(size_t(N * words));
  Draws draws(word_seed);
  for (uint32_t& w : host) w = draws.next();
  Packed p;
  for (int c = 0; c < copies; ++c) {
    Tensor w = ops::empty({N, words}, DType::u32, Device::cuda);
    be.copy_h2d(w.raw(), host.data(), host.size() * 4);
    p.wq.push_back(w);
    p.sc.push_back(ops::uniform({N, groups}, scale_seed + uint64_t(c), 0.005f, 0.05f, DType::bf16, Device::cuda));
    p.bi.push_back(ops::uniform({N, groups}, bias_seed + uint64_t(c), -0.4f, -0.04f, DType::bf16, Device::cuda));
  }
  return p;
}
double packed_bytes(int64_t N, int64_t K, int bits, int group) {
  return double(N * K * bits / 8) + 2.0 * 2.0 * double(N * (K / group));
}

// The launches of a fused decode step at Mistral-7B's shapes (one row, bf16): each timed alone and the layer's four in
// sequence, as the main table times the plain products, under the runtime config in force when time() runs.
class DecodeLaunches {
 public:
  static constexpr int64_t E = 4096, F = 14336, H = 32, KV = 8, D = 128, V = 32000, cap = 64;
  struct Row {
    const char* name;
    double bytes, us;
  };

  DecodeLaunches(int bits, int group, bool warm) : bits_(bits), group_(group) {
    b_qkv_ = packed_bytes(H * D + 2 * KV * D, E, bits, group), b_o_ = packed_bytes(E, E, bits, group);
    b_gu_ = 2 * packed_bytes(F, E, bits, group), b_down_ = packed_bytes(E, F, bits, group);
    b_head_ = packed_bytes(V, E, bits, group), b_layer_ = b_qkv_ + b_o_ + b_gu_ + b_down_;
    copies_ = warm ? 1 : int(std::max(1.0, std::ceil(256e6 / b_layer_)));
    head_copies_ = warm ? 1 : int(std::max(1.0, std::ceil(256e6 / b_head_)));
    auto make = [&](int64_t N, int64_t K, int copies, uint64_t seed) {
      return make_packed(N, K, bits, group, copies, seed + 1, seed * 7, seed * 7 + 3);
    };
    q_ = make(H * D, E, copies_, 1), k_ = make(KV * D, E, copies_, 2), v_ = make(KV * D, E, copies_, 3);
    o_ = make(E, E, copies_, 4), g_ = make(F, E, copies_, 5), u_ = make(F, E, copies_, 6);
    dn_ = make(E, F, copies_, 7), head_ = make(V, E, head_copies_, 8);
    x_ = ops::uniform({1, E}, 9, -1.f, 1.f, DType::bf16, Device::cuda);
    norm_w_ = ops::uniform({E}, 10, 0.8f, 1.2f, DType::bf16, Device::cuda);
    attn_ = ops::uniform({1, E}, 11, -1.f, 1.f, DType::bf16, Device::cuda);
    act_ = ops::uniform({1, F}, 12, -1.f, 1.f, DType::bf16, Device::cuda);
    std::vector<float> fr(size_t(D / 2));
    for (size_t i = 0; i < fr.size(); ++i) fr[i] = std::pow(1e6f, -2.f * float(i) / float(D));
    inv_freq_ = ops::to(Tensor::from_f32(fr, {D / 2}), Device::cuda);
    k_cache_ = ops::zeros({cap, KV * D}, DType::bf16, Device::cuda);
    v_cache_ = ops::zeros({cap, KV * D}, DType::bf16, Device::cuda);
    yq_ = ops::empty({1, H * D}, DType::bf16, Device::cuda), x1_ = ops::empty({1, E}, DType::bf16, Device::cuda);
    h_ = ops::empty({1, F}, DType::bf16, Device::cuda), x2_ = ops::empty({1, E}, DType::bf16, Device::cuda);
    logits_ = ops::empty({1, V}, DType::bf16, Device::cuda);
  }

  // The rows: q/k/v, o, gate/up, down, the layer's four in sequence, lm_head; empty where a launch was declined
  // (variants 0-8 have no normed launch, nor 5-10 without fused epilogues).
  std::vector<Row> time() {
    ok_ = true;
    const int calls = copies_ * std::max(1, 40 / copies_), head_calls = head_copies_ * std::max(1, 40 / head_copies_);
    auto layer = [&](int call) { qkv(call), oproj(call), gate_up(call), down(call); };
    std::vector<Row> rows = {
        {"q/k/v, input norm inside, rope + cache append after", b_qkv_, time_graph([&](int c) { qkv(c); }, calls)},
        {"o, residual add after", b_o_, time_graph([&](int c) { oproj(c); }, calls)},
        {"gate/up, input norm inside, swiglu after", b_gu_, time_graph([&](int c) { gate_up(c); }, calls)},
        {"down, residual add after", b_down_, time_graph([&](int c) { down(c); }, calls)},
        {"the layer's four in sequence", b_layer_, time_graph(layer, calls)},
        {"lm_head", b_head_, time_graph([&](int c) { lm_head(c); }, head_calls)}};
    if (!ok_) rows.clear();
    // The chain (LMTUNE_CUDA_DECODE_CHAIN=1): o, gate/up and down as one launch; -1 where it declines.
    const bool chains = ok_ && chain(0);
    auto chained = [&](int c) { chain(c); };
    auto layer_chained = [&](int c) { qkv(c), chain(c); };
    if (!rows.empty()) {
      rows.push_back({"o, gate/up, down as one launch (the decode chain)", b_o_ + b_gu_ + b_down_,
                      chains ? time_graph(chained, calls) : -1.0});
      rows.push_back({"q/k/v, then the chain", b_layer_, chains ? time_graph(layer_chained, calls) : -1.0});
      // With the next layer's q/k/v as a fourth phase (LMTUNE_CUDA_DECODE_CHAIN_QKV=1): a layer's products in one.
      const bool with_qkv = chains && chain(0, true);
      rows.push_back({"o, gate/up, down, the next q/k/v as one launch", b_layer_,
                      with_qkv ? time_graph([&](int c) { chain(c, true); }, calls) : -1.0});
    }
    return rows;
  }
  static double step_us(const std::vector<Row>& r) { return 32 * r[4].us + r[5].us; }
  // A step with the chain: 32 of its layers + lm_head; -1 where it declined.
  static double chained_step_us(const std::vector<Row>& r) { return r[7].us < 0 ? -1.0 : 32 * r[7].us + r[5].us; }
  // And with q/k/v in the chain: the first layer's q/k/v, 32 four-phase chains, lm_head; -1 where it declined.
  static double chained_qkv_step_us(const std::vector<Row>& r) {
    return r[8].us < 0 ? -1.0 : r[0].us + 32 * r[8].us + r[5].us;
  }
  double step_bytes() const { return 32 * b_layer_ + b_head_; }

 private:
  static const uint32_t* u32(const Tensor& t) { return static_cast<const uint32_t*>(t.raw()); }
  void qkv(int call) {
    const size_t c = size_t(call % copies_);
    const uint32_t* wqs[3] = {u32(q_.wq[c]), u32(k_.wq[c]), u32(v_.wq[c])};
    const void* sc[3] = {q_.sc[c].raw(), k_.sc[c].raw(), v_.sc[c].raw()};
    const void* bi[3] = {q_.bi[c].raw(), k_.bi[c].raw(), v_.bi[c].raw()};
    void* ys[3] = {yq_.raw(), k_cache_.raw(), v_cache_.raw()};
    const int64_t ns[3] = {H * D, KV * D, KV * D};
    const Backend::RopeAppendArgs rope{
        static_cast<const float*>(inv_freq_.raw()), k_cache_.raw(), v_cache_.raw(), 5, nullptr, D};
    ok_ = ok_ && be().quantized_gemv_normed(x_.raw(), norm_w_.raw(), 1e-5f, wqs, sc, bi, ys, ns, 3, false, E, bits_,
                                            group_, DType::bf16, &rope);
  }
  void oproj(int call) {
    const size_t c = size_t(call % copies_);
    ok_ = ok_ && be().quantized_gemv_add(attn_.raw(), u32(o_.wq[c]), o_.sc[c].raw(), o_.bi[c].raw(), x_.raw(),
                                         x1_.raw(), 1, E, E, bits_, group_, DType::bf16);
  }
  void gate_up(int call) {
    const size_t c = size_t(call % copies_);
    const uint32_t* wqs[2] = {u32(g_.wq[c]), u32(u_.wq[c])};
    const void* sc[2] = {g_.sc[c].raw(), u_.sc[c].raw()};
    const void* bi[2] = {g_.bi[c].raw(), u_.bi[c].raw()};
    void* ys[2] = {h_.raw(), h_.raw()};
    const int64_t ns[2] = {F, F};
    ok_ = ok_ && be().quantized_gemv_normed(x1_.raw(), norm_w_.raw(), 1e-5f, wqs, sc, bi, ys, ns, 2, true, E, bits_,
                                            group_, DType::bf16);
  }
  void down(int call) {
    const size_t c = size_t(call % copies_);
    ok_ = ok_ && be().quantized_gemv_add(act_.raw(), u32(dn_.wq[c]), dn_.sc[c].raw(), dn_.bi[c].raw(), x1_.raw(),
                                         x2_.raw(), 1, E, F, bits_, group_, DType::bf16);
  }
  bool chain(int call, bool next_qkv = false) {
    const size_t c = size_t(call % copies_);
    Backend::QuantizedDecodeChain a{};
    a.a = attn_.raw(), a.x = x_.raw(), a.x1 = x1_.raw(), a.act = h_.raw(), a.out = x2_.raw();
    a.norm_w = norm_w_.raw(), a.eps = 1e-5f;
    const Packed* ws[4] = {&o_, &g_, &u_, &dn_};
    for (int i = 0; i < 4; ++i)
      a.wq[i] = u32(ws[i]->wq[c]), a.scales[i] = ws[i]->sc[c].raw(), a.biases[i] = ws[i]->bi[c].raw();
    a.n_embd = E, a.n_attn = E, a.n_ff = F;
    a.bits = bits_, a.group_size = group_, a.dt = DType::bf16;
    if (next_qkv) {  // this layer's q, k and v stand in for the next layer's (another copy's words on the next call)
      const Packed* qkv[3] = {&q_, &k_, &v_};
      for (int i = 0; i < 3; ++i)
        a.next_wq[i] = u32(qkv[i]->wq[c]), a.next_scales[i] = qkv[i]->sc[c].raw(),
        a.next_biases[i] = qkv[i]->bi[c].raw();
      a.next_n[0] = H * D, a.next_n[1] = a.next_n[2] = KV * D;
      a.next_norm_w = norm_w_.raw(), a.next_eps = 1e-5f, a.next_q = yq_.raw();
      a.next_rope = {static_cast<const float*>(inv_freq_.raw()), k_cache_.raw(), v_cache_.raw(), 5, nullptr, D};
    }
    return be().quantized_decode_chain(a);
  }
  void lm_head(int call) {
    const size_t c = size_t(call % head_copies_);
    ok_ = ok_ && be().quantized_gemv(x2_.raw(), u32(head_.wq[c]), head_.sc[c].raw(), head_.bi[c].raw(), logits_.raw(),
                                     1, V, E, bits_, group_, DType::bf16);
  }
  static Backend& be() { return backend(Device::cuda); }

  int bits_, group_;
  bool ok_ = true;
  double b_qkv_, b_o_, b_gu_, b_down_, b_head_, b_layer_;
  int copies_, head_copies_;
  Packed q_, k_, v_, o_, g_, u_, dn_, head_;
  Tensor x_, norm_w_, attn_, act_, inv_freq_, k_cache_, v_cache_, yq_, x1_, h_, x2_, logits_;
};

void print_decode_launches(DecodeLaunches& dl, bool warm, double bw) {
  std::printf("\nA fused decode step's launches (one row, bf16, Mistral-7B shape%s):\n", warm ? ", weights in L2" : "");
  const std::vector<DecodeLaunches::Row> rows = dl.time();
  if (rows.empty()) {
    std::printf("(a fused decode launch was declined under the runtime config in force: no figures)\n");
    return;
  }
  std::printf("| launch | packed MB | us | GB/s | %% of copy |\n| --- | --- | --- | --- | --- |\n");
  for (const DecodeLaunches::Row& r : rows)
    if (r.us < 0)
      std::printf("| %s | %.2f | declined | | |\n", r.name, r.bytes / 1e6);
    else
      std::printf("| %s | %.2f | %.2f | %.0f | %.0f%% |\n", r.name, r.bytes / 1e6, r.us, r.bytes / r.us / 1e3,
                  100.0 * r.bytes / r.us / 1e3 / bw);
  const double us = DecodeLaunches::step_us(rows), bytes = dl.step_bytes();
  std::printf(
      "a step's products in these launches (32 layers in sequence + lm_head, %.3f GB): %.3f ms (%.0f GB/s); "
      "the launches one by one %.3f ms; bound at the copy bandwidth %.3f ms\n",
      bytes / 1e9, us / 1e3, bytes / us / 1e3,
      (32 * (rows[0].us + rows[1].us + rows[2].us + rows[3].us) + rows[5].us) / 1e3, bytes / (bw * 1e9) * 1e3);
  if (const double chained = DecodeLaunches::chained_step_us(rows); chained > 0)
    std::printf("with the decode chain: %.3f ms (%.0f GB/s)\n", chained / 1e3, bytes / chained / 1e3);
  if (const double chained = DecodeLaunches::chained_qkv_step_us(rows); chained > 0)
    std::printf("with the decode chain and q/k/v in it: %.3f ms (%.0f GB/s)\n", chained / 1e3, bytes / chained / 1e3);
}

// --configs: the same launches under each spec in turn (comma-separated NAME=VALUE settings over the environment, "-"
// for none), the specs alternated `rounds` times: a row per launch, a column per spec and round, us a launch.
void sweep_decode_launches(DecodeLaunches& dl, const std::vector<std::string>& specs, int rounds) {
  std::vector<RuntimeConfig> configs;  // each spec's settings over the environment, read (and checked) once
  for (const std::string& spec : specs) {
    std::vector<std::pair<std::string, std::string>> set;
    if (spec != "-")
      for (size_t at = 0; at < spec.size();) {
        size_t comma = spec.find(',', at);
        if (comma == std::string::npos) comma = spec.size();
        const std::string kv = spec.substr(at, comma - at);
        const size_t eq = kv.find('=');
        LMT_CHECK(eq != std::string::npos && eq > 0, "[bench_quantized] --configs: '", kv, "' is not NAME=VALUE");
        set.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
        at = comma + 1;
      }
    configs.push_back(runtime_config_from_env([&](const char* name) -> const char* {
      for (const auto& [k, v] : set)
        if (k == name) return v.c_str();
      return std::getenv(name);
    }));
  }
  std::vector<std::vector<std::vector<DecodeLaunches::Row>>> got(specs.size());
  for (int r = 0; r < rounds; ++r)
    for (size_t i = 0; i < specs.size(); ++i) {
      ScopedRuntimeConfig scoped(configs[i]);
      got[i].push_back(dl.time());
    }
  std::printf(
      "\nA fused decode step's launches under each --configs spec, us a launch (rounds alternated):\n| launch |");
  for (const std::string& s : specs) std::printf(" %s |", s.c_str());
  std::printf("\n| --- |");
  for (size_t i = 0; i < specs.size(); ++i) std::printf(" --- |");
  std::printf("\n");
  const char* names[] = {"q/k/v + norm + rope",
                         "o + residual",
                         "gate/up + norm + swiglu",
                         "down + residual",
                         "the layer's four in sequence",
                         "lm_head",
                         "o, gate/up, down chained",
                         "q/k/v, then the chain",
                         "o, gate/up, down, next q/k/v chained",
                         "a step (32 layers + lm_head), ms",
                         "a step with the chain, ms",
                         "a step with the chain + q/k/v, ms"};
  for (int row = 0; row < 12; ++row) {
    std::printf("| %s |", names[row]);
    for (size_t i = 0; i < specs.size(); ++i) {
      std::string cell;
      for (const auto& rows : got[i]) {
        char buf[32];
        const double v = rows.empty() ? -1.0
                         : row < 9    ? rows[size_t(row)].us
                         : row == 9   ? DecodeLaunches::step_us(rows) / 1e3
                         : row == 10  ? DecodeLaunches::chained_step_us(rows) / 1e3
                                      : DecodeLaunches::chained_qkv_step_us(rows) / 1e3;
        if (v < 0)
          std::snprintf(buf, sizeof buf, "declined");
        else
          std::snprintf(buf, sizeof buf, "%.2f", v);
        cell += (cell.empty() ? "" : " / ") + std::string(buf);
      }
      std::printf(" %s |", cell.c_str());
    }
    std::printf("\n");
  }
}

// --fp: one row through each fp mode's fused product against dequantize + linear, at Mistral-7B's shapes. The words
// are random (mxfp8's codes with bit 6 clear: no NaN), the scales near 1 (E8M0 120-127; nvfp4's E4M3 0x30-0x3f).
void print_fp_products(double bw) {
  Backend& be = backend(Device::cuda);
  struct Shape {
    const char* name;
    int64_t N, K;
  };
  const Shape shapes[] = {{"q_proj, o_proj", 4096, 4096},
                          {"k_proj, v_proj", 1024, 4096},
                          {"gate_proj, up_proj", 14336, 4096},
                          {"down_proj", 4096, 14336}};
  const QuantMode modes[] = {QuantMode::mxfp4, QuantMode::nvfp4, QuantMode::mxfp8};
  std::printf("\nx (1, K) @ dequant(W)^T in MLX's fp modes, bf16 x:\n");
  std::printf(
      "| mode | product | N x K | packed MB | fused us | GB/s | %% of copy | dequantize + linear us | speedup | max "
      "rel "
      "diff |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (QuantMode mode : modes) {
    const QuantFormat f = default_quant_format(mode);
    for (const Shape& sh : shapes) {
      const int64_t words = sh.K * f.bits / 32, groups = sh.K / f.group_size;
      const double bytes = double(sh.N * words * 4 + sh.N * groups);
      const int copies = int(std::max(1.0, std::ceil(256e6 / bytes)));
      std::vector<uint32_t> hw(size_t(sh.N * words));
      std::vector<uint8_t> hs(size_t(sh.N * groups));
      Draws draws(uint64_t(sh.N + sh.K + int(mode)));
      for (uint32_t& w : hw) w = draws.next() & (mode == QuantMode::mxfp8 ? 0xbfbfbfbfu : 0xffffffffu);
      for (uint8_t& v : hs) v = uint8_t(mode == QuantMode::nvfp4 ? 0x30 + draws.next() % 16 : 120 + draws.next() % 8);
      std::vector<Tensor> wq, sc;
      for (int c = 0; c < copies; ++c) {
        wq.push_back(ops::empty({sh.N, words}, DType::u32, Device::cuda));
        sc.push_back(ops::empty({sh.N, groups}, DType::u8, Device::cuda));
        be.copy_h2d(wq.back().raw(), hw.data(), hw.size() * 4);
        be.copy_h2d(sc.back().raw(), hs.data(), hs.size());
      }
      const Tensor x = ops::uniform({1, sh.K}, 9, -1.f, 1.f, DType::bf16, Device::cuda);
      Tensor y = ops::empty({1, sh.N}, DType::bf16, Device::cuda);
      bool ok = true;
      auto fused = [&](int call) {
        const size_t c = size_t(call % copies);
        ok = ok &&
             be.quantized_gemv_fp(x.raw(), static_cast<const uint32_t*>(wq[c].raw()),
                                  static_cast<const uint8_t*>(sc[c].raw()), y.raw(), 1, sh.N, sh.K, mode, DType::bf16);
      };
      auto baseline = [&](int call) {
        const size_t c = size_t(call % copies);
        (void)ops::linear(x, ops::dequantize(wq[c], sc[c], {}, f, DType::bf16));
      };
      fused(0);
      const std::vector<float> a = ops::to(y, Device::cpu, DType::f32).to_f32_vector();
      const std::vector<float> b =
          ops::to(ops::linear(x, ops::dequantize(wq[0], sc[0], {}, f, DType::bf16)), Device::cpu, DType::f32)
              .to_f32_vector();
      double num = 0, den = 0;
      for (size_t j = 0; j < a.size(); ++j) {
        num = std::max(num, std::fabs(double(a[j]) - b[j]));
        den = std::max(den, std::fabs(double(b[j])));
      }
      const int calls = copies * std::max(1, 40 / copies);
      const double us_f = ok ? time_graph(fused, calls) : NAN, us_b = time_graph(baseline, calls);
      std::printf("| %s | %s | %lld x %lld | %.2f | %.2f | %.0f | %.0f%% | %.2f | %.2fx | %.1e |\n",
                  quant_mode_name(mode), sh.name, (long long)sh.N, (long long)sh.K, bytes / 1e6, us_f,
                  bytes / us_f / 1e3, 100.0 * bytes / us_f / 1e3 / bw, us_b, us_b / us_f, den > 0 ? num / den : num);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  int bits = 4, group = 64;
  bool once = false;                 // --once: one eager call of each fused product, no timing (for ncu)
  bool warm = false;                 // --warm: one copy of each weight (L2 serves those that fit)
  bool fp = false;                   // --fp: the fp modes' fused product instead
  std::vector<std::string> configs;  // --configs "SPEC ...": the decode launches under each
  std::vector<int64_t> rows_list = {1, 8};
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--bits") == 0 && i + 1 < argc) {
      bits = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--group") == 0 && i + 1 < argc) {
      group = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--rows") == 0 && i + 1 < argc) {
      rows_list.clear();
      for (const char* s = argv[++i]; *s;) {
        rows_list.push_back(std::strtoll(s, const_cast<char**>(&s), 10));
        if (*s == ',') ++s;
      }
    } else if (std::strcmp(argv[i], "--once") == 0) {
      once = true;
    } else if (std::strcmp(argv[i], "--warm") == 0) {
      warm = true;
    } else if (std::strcmp(argv[i], "--fp") == 0) {
      fp = true;
    } else if (std::strcmp(argv[i], "--configs") == 0 && i + 1 < argc) {
      configs.clear();
      for (const char* s = argv[++i]; *s;) {
        while (*s == ' ') ++s;
        const char* e = s;
        while (*e && *e != ' ') ++e;
        if (e > s) configs.emplace_back(s, e);
        s = e;
      }
    } else {
      std::fprintf(
          stderr,
          "usage: bench_quantized [--bits B] [--group G] [--rows 1,8] [--once] [--warm] [--configs \"SPEC ...\"] "
          "[--fp]\n");
      return 2;
    }
  }
  try {
    LMT_CHECK(cuda_available(), "[bench_quantized] no CUDA device");
    const Product products[] = {{"q_proj, o_proj", {4096}, 4096, 64, 32},
                                {"k_proj, v_proj", {1024}, 4096, 64, 0},
                                {"gate_proj, up_proj", {14336}, 4096, 64, 0},
                                {"down_proj", {4096}, 14336, 32, 32},
                                {"lm_head", {32000}, 4096, 1, 1},
                                {"q, k, v (one launch)", {4096, 1024, 1024}, 4096, 0, 32},
                                {"gate, up (one launch)", {14336, 14336}, 4096, 0, 32}};
    Backend& be = backend(Device::cuda);
    const double bw = copy_bandwidth_gbps();
    std::printf(
        "bench_quantized: %s, %d-bit, group %d, bf16 scales/biases; copy bandwidth (d2d, read + write) %.0f GB/s\n",
        cuda_device_name().c_str(), bits, group, bw);
    if (fp) {
      print_fp_products(bw);
      return 0;
    }
    for (int64_t M : rows_list) {
      LMT_CHECK(M >= 1, "[bench_quantized] rows must be >= 1");
      std::printf("\nx (%lld, K) @ dequant(W)^T, bf16:\n", (long long)M);
      std::printf(
          "| product | N x K | packed MB | fused us | GB/s | %% of copy | dequantize + linear us | GB/s | speedup | "
          "max "
          "rel diff |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
      double tok_fused = 0, tok_base = 0, tok_bytes = 0, tok_grouped = 0, tok_grouped_bytes = 0;
      for (const Product& pr : products) {
        const int64_t K = pr.K, count = int64_t(pr.Ns.size());
        double bytes = 0;
        for (int64_t N : pr.Ns) bytes += packed_bytes(N, K, bits, group);
        const int copies = warm ? 1 : int(std::max(1.0, std::ceil(256e6 / bytes)));
        std::vector<Packed> w;
        std::vector<Tensor> y;
        for (int64_t i = 0; i < count; ++i) {
          const int64_t N = pr.Ns[size_t(i)];
          w.push_back(make_packed(N, K, bits, group, copies, uint64_t(N + K + i), uint64_t(11 + 100 * i),
                                  uint64_t(51 + 100 * i)));
          y.push_back(ops::empty({M, N}, DType::bf16, Device::cuda));
        }
        Tensor x = ops::uniform({M, K}, 9, -1.f, 1.f, DType::bf16, Device::cuda);
        const QuantFormat fmt{QuantMode::affine, bits, group};
        const int calls = copies * std::max(1, 40 / copies);
        bool fused_ok = true;
        auto fused = [&](int call) {
          const size_t c = size_t(call % copies);
          if (M > 8) {  // a batched step's rows: qgemm_rows.cu, one launch a matrix
            for (int64_t i = 0; i < count; ++i)
              fused_ok = fused_ok &&
                         be.quantized_gemm_rows(x.raw(), static_cast<const uint32_t*>(w[size_t(i)].wq[c].raw()),
                                                w[size_t(i)].sc[c].raw(), w[size_t(i)].bi[c].raw(), y[size_t(i)].raw(),
                                                M, pr.Ns[size_t(i)], K, bits, group, DType::bf16);
            return;
          }
          if (count == 1) {
            fused_ok =
                fused_ok && be.quantized_gemv(x.raw(), static_cast<const uint32_t*>(w[0].wq[c].raw()), w[0].sc[c].raw(),
                                              w[0].bi[c].raw(), y[0].raw(), M, pr.Ns[0], K, bits, group, DType::bf16);
            return;
          }
          const uint32_t* wp[3];
          const void *sp[3], *bp[3];
          void* yp[3];
          for (int64_t i = 0; i < count; ++i) {
            wp[i] = static_cast<const uint32_t*>(w[size_t(i)].wq[c].raw());
            sp[i] = w[size_t(i)].sc[c].raw(), bp[i] = w[size_t(i)].bi[c].raw(), yp[i] = y[size_t(i)].raw();
          }
          fused_ok = fused_ok && be.quantized_gemv_group(x.raw(), wp, sp, bp, yp, pr.Ns.data(), int(count), M, K, bits,
                                                         group, DType::bf16);
        };
        auto baseline = [&](int call) {
          const size_t c = size_t(call % copies);
          for (int64_t i = 0; i < count; ++i)
            (void)ops::linear(
                x, ops::dequantize(w[size_t(i)].wq[c], w[size_t(i)].sc[c], w[size_t(i)].bi[c], fmt, DType::bf16));
        };
        // The two paths on copy 0: the same function up to the dense path's rounding of each w.
        fused(0);
        double num = 0, den = 0;
        for (int64_t i = 0; i < count; ++i) {
          const std::vector<float> a = ops::to(y[size_t(i)], Device::cpu, DType::f32).to_f32_vector();
          const std::vector<float> b = ops::to(ops::linear(x, ops::dequantize(w[size_t(i)].wq[0], w[size_t(i)].sc[0],
                                                                              w[size_t(i)].bi[0], fmt, DType::bf16)),
                                               Device::cpu, DType::f32)
                                           .to_f32_vector();
          for (size_t j = 0; j < a.size(); ++j) {
            num = std::max(num, std::fabs(double(a[j]) - b[j]));
            den = std::max(den, std::fabs(double(b[j])));
          }
        }
        std::string shape;
        for (int64_t N : pr.Ns) shape += (shape.empty() ? "" : " + ") + std::to_string(N);
        if (once) {  // one eager call each, for a profiler
          be.synchronize();
          std::printf("| %s | (%s) x %lld | %.2f | profiled once |\n", pr.name, shape.c_str(), (long long)K,
                      bytes / 1e6);
          continue;
        }
        double us_f = NAN;
        if (fused_ok) us_f = time_graph(fused, calls);
        const double us_b = time_graph(baseline, calls);
        std::printf("| %s | (%s) x %lld | %.2f | %.2f | %.0f | %.0f%% | %.2f | %.0f | %.2fx | %.1e |\n", pr.name,
                    shape.c_str(), (long long)K, bytes / 1e6, us_f, bytes / us_f / 1e3, 100.0 * bytes / us_f / 1e3 / bw,
                    us_b, bytes / us_b / 1e3, us_b / us_f, den > 0 ? num / den : num);
        if (!fused_ok) std::printf("  (quantized_gemv declined these sizes: no fused time)\n");
        tok_fused += us_f * double(pr.per_token_single);
        tok_base += us_b * double(pr.per_token_single);
        tok_bytes += bytes * double(pr.per_token_single);
        tok_grouped += us_f * double(pr.per_token_grouped);
        tok_grouped_bytes += bytes * double(pr.per_token_grouped);
      }
      if (once) continue;
      std::printf(
          "one token's products (32 layers + lm_head, %.3f GB packed): fused %.3f ms (%.0f GB/s), dequantize + "
          "linear %.3f ms; bound at the copy bandwidth %.3f ms\n",
          tok_bytes / 1e9, tok_fused / 1e3, tok_bytes / tok_fused / 1e3, tok_base / 1e3, tok_bytes / (bw * 1e9) * 1e3);
      std::printf("one token's products with q/k/v and gate/up grouped (%.3f GB): fused %.3f ms (%.0f GB/s)\n",
                  tok_grouped_bytes / 1e9, tok_grouped / 1e3, tok_grouped_bytes / tok_grouped / 1e3);
    }
    if (!once && std::find(rows_list.begin(), rows_list.end(), int64_t(1)) != rows_list.end()) {
      DecodeLaunches dl(bits, group, warm);
      if (configs.empty())
        print_decode_launches(dl, warm, bw);
      else
        sweep_decode_launches(dl, configs, 2);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_quantized: %s\n", e.what());
    return 1;
  }
  return 0;
}
