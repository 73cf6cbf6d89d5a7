// The CUDA backend against the CPU backend for MLX affine quantized weights: dequantization and the
// quantized GEMV (alone and grouped), on the same packed words (split from test_cuda_vs_cpu.cpp).
#include "cuda_vs_cpu_common.h"

namespace lmtune {
namespace {

// Affine dequantization (MLX's layout) on both devices from the same packed words, scales and
// biases: identical arithmetic (a rounding to dt after the product and after the sum), so the
// outputs must be equal bit for bit, for every bits x group size.
TEST_P(CudaVsCpu, DequantizeAffine) {
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    for (int group : {32, 64, 128}) {
      const int64_t rows = 5, in = 256, words = in * bits / 32, groups = in / group;
      std::vector<uint32_t> wq(size_t(rows * words));
      uint32_t x = 0x9E3779B9u * uint32_t(bits * 131 + group);
      for (uint32_t& w : wq) w = (x = x * 1664525u + 1013904223u);
      Vec sc = rounded(uniform(size_t(rows * groups), 11, -0.2f, 0.2f), dt);
      Vec bi = rounded(uniform(size_t(rows * groups), 12, -2.f, 2.f), dt);
      std::vector<uint8_t> hs = encode(sc, dt), hb = encode(bi, dt);
      std::vector<uint8_t> cpu_out(size_t(rows * in) * dtype_size(dt));
      cpu().dequantize_affine(wq.data(), hs.data(), hb.data(), cpu_out.data(), rows, in, bits, group, dt);
      Tensor gw = Tensor::empty({rows * words}, DType::u32, Device::cuda);
      gpu().copy_h2d(gw.raw(), wq.data(), wq.size() * 4);
      Tensor gs = on_gpu(sc, dt), gb = on_gpu(bi, dt), go = gpu_empty(rows * in, dt);
      gpu().dequantize_affine(static_cast<const uint32_t*>(gw.raw()), gs.raw(), gb.raw(), go.raw(), rows, in, bits,
                              group, dt);
      check_close(read(go), decode(cpu_out, dt), {0.f, 0.f},
                  "dequantize_affine bits " + std::to_string(bits) + " group " + std::to_string(group));
      // An output one element past a 16-byte boundary: the element-at-a-time fallback.
      Tensor gu = gpu_empty(rows * in + 1, dt);
      Tensor gu_view = gu.slice_rows(1, rows * in + 1);
      gpu().dequantize_affine(static_cast<const uint32_t*>(gw.raw()), gs.raw(), gb.raw(), gu_view.raw(), rows, in, bits,
                              group, dt);
      check_close(read(gu_view), decode(cpu_out, dt), {0.f, 0.f},
                  "dequantize_affine unaligned bits " + std::to_string(bits) + " group " + std::to_string(group));
    }
  }
}

// The fused quantized product (qgemv.cu) y (M, N) = x (M, K) dequant(W)^T on MLX's affine layout,
// every output poisoned with NaN first, against two CPU references in double from the same
// packed words, scales, biases and x (all exactly representable in dt):
//  1. MLX's qmv arithmetic, which the kernel follows: sum over groups of scale * sum(q x) +
//     bias * sum(x), q from cpu().dequantize_affine with scale 1 and bias 0 (exact). The kernel
//     differs by its f32 accumulation (16-bit products are exact in f32; bf16's tensor-core path
//     carries an offset of 128 (2176 for 8 bits) in each code and takes 128 * sum(x) back per
//     group, so its sums are about 17x larger than the signal: ~1e-5 of max |y| at K = 14336)
//     and the final rounding to dt (2^-8 relative for bf16, 2^-11 f16): rtol 1e-2 (1e-5 f32),
//     atol 1e-3 (1e-5) of max |y|.
//  2. cpu().dequantize_affine in dt (each w rounded to dt twice, after scale * q and after + bias,
//     as mx.dequantize) and a dot product: each w then differs from the kernel's exact one by up
//     to u (|scale q| + |w|) (u = 2^-8 bf16, 2^-11 f16), random in sign, so y by about 0.47 u
//     max |y| (one sigma; these weights are centred like real ones), up to ~2 u at 4 sigma over
//     30k outputs: atol 5u of max |y|, rtol 2.5u (plus the output rounding u).
// Cases: every bits (2, 3, 4, 5, 6, 8) x group (32, 64, 128) x M (1..8) at N 37, K 256; the
// decode shapes N 4096 x K 4096 and K 14336; K split over warps into uneven pieces (37 groups);
// N of 1, 17 and 61 (a partial 16-row tile); x or wq not 16-byte aligned (the generic path).
void quantized_case(DType dt, uint32_t& seed, int bits, int group, int64_t M, int64_t N, int64_t K, int x_off,
                    int w_off, bool rows = false) {
  const double u = dt == DType::bf16 ? 1.0 / 256 : dt == DType::f16 ? 1.0 / 2048 : 0.0;
  const Tol tol_mlx = dt == DType::f32 ? Tol{1e-5f, 1e-5f} : Tol{1e-2f, 1e-3f};
  const Tol tol_deq = dt == DType::f32 ? Tol{1e-5f, 1e-5f} : Tol{float(3.5 * u), float(5 * u)};
  ++seed;
  const int64_t words = K * bits / 32, groups = K / group;
  std::vector<uint32_t> wq(size_t(N * words) + size_t(w_off));
  uint32_t r = 0x9E3779B9u * seed;
  for (uint32_t& w : wq) {
    r = r * 1664525u + 1013904223u;
    w = r ^ (r >> 16);
  }
  // Scales of either sign, biases near -scale * (2^bits - 1) / 2: centred weights, as quantize makes.
  Vec sc = uniform(size_t(N * groups), seed + 1, 0.01f, 0.1f), bi(sc.size());
  Vec jit = uniform(sc.size(), seed + 2, 0.8f, 1.2f);
  for (size_t i = 0; i < sc.size(); ++i) {
    if (i % 3 == 1) sc[i] = -sc[i];
    bi[i] = -sc[i] * float((1 << bits) - 1) / 2 * jit[i];
  }
  sc = rounded(sc, dt), bi = rounded(bi, dt);
  Vec x = rounded(uniform(size_t(M * K), seed + 3), dt);
  // q as floats (scale 1, bias 0 in f32 is exact) and the weights as mx.dequantize gives them in dt.
  const uint32_t* wq_host = wq.data() + w_off;
  Vec q(size_t(N * K)), ones(sc.size(), 1.f), zeros(sc.size(), 0.f);
  cpu().dequantize_affine(wq_host, ones.data(), zeros.data(), q.data(), N, K, bits, group, DType::f32);
  std::vector<uint8_t> hs = encode(sc, dt), hb = encode(bi, dt), hw(size_t(N * K) * dtype_size(dt));
  cpu().dequantize_affine(wq_host, hs.data(), hb.data(), hw.data(), N, K, bits, group, dt);
  const Vec w = decode(hw, dt);
  Vec ref_mlx(size_t(M * N)), ref_deq(size_t(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double y = 0, yd = 0;
      for (int64_t G = 0; G < groups; ++G) {
        double qx = 0, sx = 0;
        for (int64_t k = G * group; k < (G + 1) * group; ++k) {
          const double xv = x[size_t(m * K + k)];
          qx += double(q[size_t(n * K + k)]) * xv;
          sx += xv;
          yd += double(w[size_t(n * K + k)]) * xv;
        }
        y += double(sc[size_t(n * groups + G)]) * qx + double(bi[size_t(n * groups + G)]) * sx;
      }
      ref_mlx[size_t(m * N + n)] = float(y);
      ref_deq[size_t(m * N + n)] = float(yd);
    }
  Vec xpad(size_t(x_off), 0.5f);
  xpad.insert(xpad.end(), x.begin(), x.end());
  Tensor gx = on_gpu(xpad, dt), gs = on_gpu(sc, dt), gb = on_gpu(bi, dt), gy = gpu_empty(M * N, dt);
  Tensor gw = Tensor::empty({int64_t(wq.size())}, DType::u32, Device::cuda);
  gpu().copy_h2d(gw.raw(), wq.data(), wq.size() * 4);
  gpu().fill(gy.raw(), dt, M * N, std::numeric_limits<float>::quiet_NaN());
  const void* xp = static_cast<const char*>(gx.raw()) + size_t(x_off) * dtype_size(dt);
  const uint32_t* wp = static_cast<const uint32_t*>(gw.raw()) + w_off;
  const std::string what =
      std::string(rows ? "quantized_gemm_rows" : "quantized_gemv") + " bits " + std::to_string(bits) + " group " +
      std::to_string(group) + " M " + std::to_string(M) + " N " + std::to_string(N) + " K " + std::to_string(K) +
      (x_off || w_off ? " unaligned" : "") + " variant " + std::to_string(runtime_config().cuda_qgemv_variant);
  if (rows)
    ASSERT_TRUE(gpu().quantized_gemm_rows(xp, wp, gs.raw(), gb.raw(), gy.raw(), M, N, K, bits, group, dt)) << what;
  else
    ASSERT_TRUE(gpu().quantized_gemv(xp, wp, gs.raw(), gb.raw(), gy.raw(), M, N, K, bits, group, dt)) << what;
  const Vec got = read(gy);
  int64_t unwritten = 0;
  for (float v : got) unwritten += std::isnan(v) ? 1 : 0;
  ASSERT_EQ(unwritten, 0) << what << ": outputs left unwritten (NaN poison)";
  // The rows kernel rounds each w to dt (as dequantize + gemm): MLX's exact arithmetic is then as far
  // as the dequantized reference is.
  check_close(got, ref_mlx, rows ? tol_deq : tol_mlx, what + " vs MLX's qmv arithmetic");
  check_close(got, ref_deq, tol_deq, what + " vs dequantize + dot");
}

TEST_P(CudaVsCpu, QuantizedGemv) {
  uint32_t seed = 100;
  auto run = [&](int bits, int group, int64_t M, int64_t N, int64_t K, int x_off, int w_off) {
    quantized_case(dt, seed, bits, group, M, N, K, x_off, w_off);
  };
  // The tensor-core kernel's variants (LMTUNE_CUDA_QGEMV_VARIANT; the default is what the runs
  // below use, and 0 where it does not apply).
  for (int variant : {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}) {
    RuntimeConfig rc = runtime_config();
    rc.cuda_qgemv_variant = variant;
    rc.cuda_qgemv_stream = rc.cuda_qgemv_stream_normed = 0;  // the variant's own kernels
    ScopedRuntimeConfig scoped(rc);
    for (int bits : {2, 4, 8})
      for (int group : {32, 64, 128})
        for (int64_t M : {1, 3, 8}) run(bits, group, M, 37, 128 * 7, 0, 0);
    run(4, 64, 1, 4096, 4096, 0, 0);
    run(4, 64, 1, 4096, 14336, 0, 0);
    run(4, 32, 8, 1000, 4096, 0, 0);
    run(4, 64, 3, 37, 64 * 37, 0, 0);
    if (variant >= 5) run(4, 64, 1, 32000, 4096, 0, 0);  // lm_head: more blocks than the card holds
  }
  {  // variant 9 with its codes spread in place and x pre-scaled (LMTUNE_CUDA_QGEMV_SIMT_SPREAD=1)
    RuntimeConfig rc = runtime_config();
    rc.cuda_qgemv_variant = 9;
    rc.cuda_qgemv_stream = rc.cuda_qgemv_stream_normed = 0;  // the variant's own kernels
    rc.cuda_qgemv_simt_spread = true;
    ScopedRuntimeConfig scoped(rc);
    for (int group : {32, 64, 128}) run(4, group, 1, 37, 128 * 7, 0, 0);
    run(4, 64, 1, 4096, 4096, 0, 0);
    run(4, 32, 1, 1000, 4096, 0, 0);
    run(4, 64, 1, 37, 64 * 37, 0, 0);
    run(4, 64, 1, 32000, 4096, 0, 0);
    run(4, 128, 1, 300, 12288, 0, 0);  // the longest rows it takes
  }
  for (int bits : {2, 3, 4, 5, 6, 8})
    for (int group : {32, 64, 128})
      for (int64_t M = 1; M <= 8; ++M) run(bits, group, M, 37, 256, 0, 0);
  // Decoding's shapes (Mistral 7B: q/o 4096 x 4096, down 4096 x 14336) and long rows.
  run(4, 64, 1, 4096, 4096, 0, 0);
  run(4, 64, 8, 4096, 4096, 0, 0);
  run(4, 32, 3, 4096, 4096, 0, 0);
  run(8, 64, 2, 4096, 4096, 0, 0);
  run(2, 128, 5, 4096, 4096, 0, 0);
  run(4, 64, 1, 4096, 14336, 0, 0);
  run(4, 128, 8, 37, 14336, 0, 0);
  run(8, 32, 4, 37, 14336, 0, 0);
  run(3, 64, 1, 37, 14336, 0, 0);
  run(6, 64, 7, 37, 14336, 0, 0);
  run(2, 64, 1, 37, 14336, 0, 0);
  // K in 37 groups: split over 8 warps, the last piece 2 groups (a partial batch); odd tiles.
  run(4, 64, 3, 37, 64 * 37, 0, 0);
  run(8, 128, 5, 61, 128 * 19, 0, 0);
  run(2, 64, 2, 45, 64 * 13, 0, 0);
  run(4, 64, 3, 1, 256, 0, 0);
  run(4, 32, 8, 17, 512, 0, 0);
  // Operands off 16-byte alignment take the generic kernel.
  run(4, 64, 2, 37, 256, 1, 0);
  run(8, 32, 5, 37, 256, 0, 1);
  // Not covered: the caller dequantizes instead.
  Tensor gx = on_gpu(Vec(9 * 64, 1.f), dt), gw = Tensor::empty({64 * 7}, DType::u32, Device::cuda);
  Tensor gs = on_gpu(Vec(2, 1.f), dt), gy = gpu_empty(9 * 2, dt);
  const uint32_t* wp = static_cast<const uint32_t*>(gw.raw());
  EXPECT_FALSE(gpu().quantized_gemv(gx.raw(), wp, gs.raw(), gs.raw(), gy.raw(), 9, 2, 64, 4, 64, dt)) << "M 9";
  EXPECT_FALSE(gpu().quantized_gemv(gx.raw(), wp, gs.raw(), gs.raw(), gy.raw(), 1, 2, 64, 7, 64, dt)) << "bits 7";
  EXPECT_FALSE(gpu().quantized_gemv(gx.raw(), wp, gs.raw(), gs.raw(), gy.raw(), 1, 2, 64, 4, 48, dt)) << "group 48";
}

// A batched step's quantized products, 9-64 rows (qgemm_rows.cu: 4 bits, K a multiple of 128), against the
// references above: every count of 8-row tiles of x, each group size, a last tile of W rows cut short,
// K split over warps, the decode shapes.
TEST_P(CudaVsCpu, QuantizedGemmRows) {
  Tensor gx = on_gpu(Vec(64 * 256, 1.f), dt), gw = Tensor::empty({64 * 256}, DType::u32, Device::cuda);
  Tensor gs = on_gpu(Vec(64 * 8, 1.f), dt), gy = gpu_empty(64 * 64, dt);
  const uint32_t* wp = static_cast<const uint32_t*>(gw.raw());
  auto covered = [&](int64_t M, int64_t N, int64_t K, int bits, int group) {
    return gpu().quantized_gemm_rows(gx.raw(), wp, gs.raw(), gs.raw(), gy.raw(), M, N, K, bits, group, dt);
  };
  if (dt == DType::f32) {  // f32 models dequantize
    EXPECT_FALSE(covered(16, 8, 256, 4, 64));
    return;
  }
  uint32_t seed = 300;
  for (int group : {32, 64, 128})
    for (int64_t M : {9, 16, 17, 32, 33, 64}) quantized_case(dt, seed, 4, group, M, 37, 128 * 5, 0, 0, true);
  quantized_case(dt, seed, 4, 64, 32, 4096, 4096, 0, 0, true);
  quantized_case(dt, seed, 4, 64, 64, 300, 14336, 0, 0, true);
  quantized_case(dt, seed, 4, 32, 24, 1, 256, 0, 0, true);
  EXPECT_FALSE(covered(16, 8, 256, 8, 64)) << "8 bits";
  EXPECT_FALSE(covered(16, 8, 192, 4, 64)) << "K not a multiple of 128";
  EXPECT_FALSE(covered(8, 8, 256, 4, 64)) << "8 rows (qgemv.cu's)";
  EXPECT_FALSE(covered(65, 8, 256, 4, 64)) << "65 rows";
}

// quantized_gemv_group (decoding's q/k/v and gate/up in one launch) against quantized_gemv on each
// weight alone (checked above against the CPU): the same kernel, so equal up to the f32 order of
// the K-split (which depends on the launch's total tiles) and the final rounding to dt.
TEST_P(CudaVsCpu, QuantizedGemvGroup) {
  const Tol tol = dt == DType::f32 ? Tol{1e-5f, 1e-5f} : Tol{1e-2f, 1e-3f};
  uint32_t seed = 500;
  auto run = [&](int bits, int group, int64_t M, int64_t K, std::vector<int64_t> ns) {
    const int count = int(ns.size());
    Vec x = rounded(uniform(size_t(M * K), ++seed), dt);
    Tensor gx = on_gpu(x, dt);
    std::vector<Tensor> gw, gs, gb, gy;
    std::vector<const uint32_t*> wp;
    std::vector<const void*> sp, bp;
    std::vector<void*> yp;
    for (int i = 0; i < count; ++i) {
      const int64_t N = ns[size_t(i)], words = K * bits / 32, groups = K / group;
      std::vector<uint32_t> wq(size_t(N * words));
      uint32_t r = 0x9E3779B9u * ++seed;
      for (uint32_t& w : wq) {
        r = r * 1664525u + 1013904223u;
        w = r ^ (r >> 16);
      }
      Vec sc = rounded(uniform(size_t(N * groups), ++seed, 0.01f, 0.1f), dt), bi(sc.size());
      for (size_t j = 0; j < sc.size(); ++j) bi[j] = -sc[j] * float((1 << bits) - 1) / 2;
      bi = rounded(bi, dt);
      gw.push_back(Tensor::empty({int64_t(wq.size())}, DType::u32, Device::cuda));
      gpu().copy_h2d(gw.back().raw(), wq.data(), wq.size() * 4);
      gs.push_back(on_gpu(sc, dt));
      gb.push_back(on_gpu(bi, dt));
      gy.push_back(gpu_empty(M * N, dt));
      gpu().fill(gy.back().raw(), dt, M * N, std::numeric_limits<float>::quiet_NaN());
      wp.push_back(static_cast<const uint32_t*>(gw.back().raw()));
      sp.push_back(gs.back().raw());
      bp.push_back(gb.back().raw());
      yp.push_back(gy.back().raw());
    }
    const std::string what = "quantized_gemv_group bits " + std::to_string(bits) + " group " + std::to_string(group) +
                             " M " + std::to_string(M) + " K " + std::to_string(K) + " count " + std::to_string(count);
    const bool ok = gpu().quantized_gemv_group(gx.raw(), wp.data(), sp.data(), bp.data(), yp.data(), ns.data(), count,
                                               M, K, bits, group, dt);
    if (dt == DType::f32) {  // the tensor-core path only: f32 runs the products one by one
      EXPECT_FALSE(ok) << what;
      return;
    }
    ASSERT_TRUE(ok) << what;
    for (int i = 0; i < count; ++i) {
      const int64_t N = ns[size_t(i)];
      const Vec got = read(gy[size_t(i)]);
      int64_t unwritten = 0;
      for (float v : got) unwritten += std::isnan(v) ? 1 : 0;
      ASSERT_EQ(unwritten, 0) << what << " weight " << i << ": outputs left unwritten (NaN poison)";
      Tensor alone = gpu_empty(M * N, dt);
      ASSERT_TRUE(gpu().quantized_gemv(gx.raw(), wp[size_t(i)], sp[size_t(i)], bp[size_t(i)], alone.raw(), M, N, K,
                                       bits, group, dt));
      check_close(got, read(alone), tol, what + " weight " + std::to_string(i) + " vs alone");
    }
  };
  // The register kernel (big matrices split into launches of their own), the lean ones, the CUDA-core one.
  for (int variant : {0, 5, 6, 7, 8, 9, 10}) {
    RuntimeConfig rc = runtime_config();
    rc.cuda_qgemv_variant = variant;
    rc.cuda_qgemv_stream = rc.cuda_qgemv_stream_normed = 0;  // the variant's own kernels
    ScopedRuntimeConfig scoped(rc);
    run(4, 64, 1, 4096, {4096, 1024, 1024});  // Mistral 7B's q, k, v
    run(4, 64, 1, 4096, {14336, 14336});      // gate, up
    run(4, 64, 8, 256, {37, 16, 61});         // partial tiles at each boundary
    run(8, 32, 3, 512, {17, 33});
    run(2, 128, 2, 1024, {45});
    run(4, 128, 5, 128 * 37, {61, 1, 20});  // K split into uneven pieces
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaVsCpu, ::testing::Values(DType::f32, DType::bf16, DType::f16), dt_name);

}  // namespace
}  // namespace lmtune
