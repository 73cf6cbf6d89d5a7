// The CUDA backend against the CPU backend, method by method, through raw Backend calls on the
// same random inputs (odd sizes; f32 and bf16). bf16 cases feed the CPU the bf16-rounded inputs
// in f32 (the CPU computes in f32 only). Skips every test where no CUDA device is present.
#include "cuda_vs_cpu_common.h"

namespace lmtune {
namespace {

TEST_F(CudaVsCpuOnce, CopiesAndSynchronize) {
  Vec x = uniform(257, 1);
  Tensor a = on_gpu(x, DType::f32), b = gpu_empty(257, DType::f32);
  gpu().copy_d2d(b.raw(), a.raw(), 257 * 4);
  gpu().synchronize();
  EXPECT_EQ(read(b), x);
  EXPECT_FALSE(cuda_device_name().empty());
}

TEST_F(CudaVsCpuOnce, ColumnBlocksOfEveryDtype) {  // Backend::copy_d2d_2d (ops::slice_last / place_last)
  const size_t rows = 21, cols = 40;
  for (DType dt : {DType::f32, DType::bf16}) {
    const size_t es = dtype_size(dt);
    Vec x = uniform(rows * cols, 9);
    Tensor g = on_gpu(x, dt);
    std::vector<uint8_t> host = encode(x, dt);
    for (auto [begin, n] : {std::pair<size_t, size_t>{0, 24}, {24, 8}, {32, 8}, {5, 33}}) {
      Tensor out = gpu_empty(int64_t(rows * n), dt);
      gpu().copy_d2d_2d(out.raw(), n * es, static_cast<const char*>(g.raw()) + begin * es, cols * es, n * es, rows);
      std::vector<uint8_t> ref(rows * n * es);
      cpu().copy_d2d_2d(ref.data(), n * es, host.data() + begin * es, cols * es, n * es, rows);
      EXPECT_EQ(read(out), decode(ref, dt)) << "columns " << begin << "+" << n;
      // And back into the middle of a wider destination (place_last).
      Tensor wide = on_gpu(Vec(rows * cols, 0.f), dt);
      gpu().copy_d2d_2d(static_cast<char*>(wide.raw()) + begin * es, cols * es, out.raw(), n * es, n * es, rows);
      std::vector<uint8_t> wref(rows * cols * es, 0);
      cpu().copy_d2d_2d(wref.data() + begin * es, cols * es, ref.data(), n * es, n * es, rows);
      EXPECT_EQ(read(wide), decode(wref, dt)) << "placed " << begin << "+" << n;
    }
  }
}

TEST_F(CudaVsCpuOnce, FillEveryDtype) {
  for (DType dt : {DType::f32, DType::bf16, DType::f16, DType::i32}) {
    for (int64_t n : {1, 31, 257, 1031}) {
      Tensor t = gpu_empty(n, dt);
      gpu().fill(t.raw(), dt, n, -3.25f);
      check_close(read(t), Vec(size_t(n), dt == DType::i32 ? -3.f : -3.25f), {0.f, 0.f},
                  std::string("fill ") + dtype_name(dt));
    }
  }
}

TEST_F(CudaVsCpuOnce, CastEveryPair) {
  Vec x = uniform(1029, 2, -300.f, 300.f);
  std::vector<DType> from = {DType::f32, DType::bf16, DType::f16, DType::i32};
  for (DType s : from) {
    for (DType d : {DType::f32, DType::bf16, DType::f16}) {
      Vec src = s == DType::i32 ? rounded(x, DType::i32) : rounded(x, s);
      Tensor a = on_gpu(src, s), b = gpu_empty(int64_t(x.size()), d);
      gpu().cast(a.raw(), s, b.raw(), d, int64_t(x.size()));
      // The CPU cast of the same source is the reference (exactly rounded on both sides).
      std::vector<uint8_t> hs = encode(src, s), hd(x.size() * dtype_size(d));
      cpu().cast(hs.data(), s, hd.data(), d, int64_t(x.size()));
      check_close(read(b), decode(hd, d), {0.f, 0.f}, std::string("cast ") + dtype_name(s) + "->" + dtype_name(d));
    }
  }
}

TEST_P(CudaVsCpu, Binary) {
  const int64_t n = 33 * 31;
  for (BinaryOp op : {BinaryOp::add, BinaryOp::sub, BinaryOp::mul, BinaryOp::div}) {
    for (int64_t nb : {n, int64_t(33), int64_t(1), int64_t(31 * 3)}) {
      Vec a = rounded(uniform(size_t(n), 3), dt), b = rounded(uniform(size_t(nb), 4, 0.5f, 2.f), dt);
      Vec ref(a.size());
      cpu().binary(op, a.data(), b.data(), ref.data(), n, nb, DType::f32);
      Tensor ga = on_gpu(a, dt), gb = on_gpu(b, dt), go = gpu_empty(n, dt);
      gpu().binary(op, ga.raw(), gb.raw(), go.raw(), n, nb, dt);
      check_close(read(go), ref, tol_elem(dt), "binary op " + std::to_string(int(op)) + " nb " + std::to_string(nb));
      gpu().binary(op, ga.raw(), gb.raw(), ga.raw(), n, nb, dt);  // out aliases a
      check_close(read(ga), ref, tol_elem(dt), "binary in place");
    }
  }
}

TEST_P(CudaVsCpu, Axpby) {
  const int64_t n = 1027;
  Vec a = rounded(uniform(n, 5), dt), b = rounded(uniform(n, 6), dt), ref(n);
  cpu().axpby(a.data(), b.data(), ref.data(), n, 0.75f, -1.5f, DType::f32);
  Tensor ga = on_gpu(a, dt), gb = on_gpu(b, dt), go = gpu_empty(n, dt);
  gpu().axpby(ga.raw(), gb.raw(), go.raw(), n, 0.75f, -1.5f, dt);
  check_close(read(go), ref, tol_elem(dt), "axpby");
}

TEST_P(CudaVsCpu, UnaryAndBackward) {
  const int64_t n = 1031;
  for (UnaryOp op : {UnaryOp::silu, UnaryOp::gelu_tanh, UnaryOp::tanh, UnaryOp::exp, UnaryOp::neg, UnaryOp::square,
                     UnaryOp::sqrt, UnaryOp::rsqrt, UnaryOp::scale, UnaryOp::add_scalar}) {
    bool positive = op == UnaryOp::sqrt || op == UnaryOp::rsqrt;
    Vec x = rounded(uniform(n, 7, positive ? 0.1f : -4.f, 4.f), dt), ref(n);
    cpu().unary(op, x.data(), ref.data(), n, 0.3f, DType::f32);
    Tensor gx = on_gpu(x, dt), go = gpu_empty(n, dt);
    gpu().unary(op, gx.raw(), go.raw(), n, 0.3f, dt);
    check_close(read(go), ref, tol_elem(dt), "unary op " + std::to_string(int(op)));
  }
  for (UnaryOp op : {UnaryOp::silu, UnaryOp::gelu_tanh, UnaryOp::tanh}) {
    Vec x = rounded(uniform(n, 8, -4.f, 4.f), dt), dy = rounded(uniform(n, 9), dt), ref(n);
    cpu().unary_backward(op, x.data(), dy.data(), ref.data(), n, DType::f32);
    Tensor gx = on_gpu(x, dt), gdy = on_gpu(dy, dt), gdx = gpu_empty(n, dt);
    gpu().unary_backward(op, gx.raw(), gdy.raw(), gdx.raw(), n, dt);
    check_close(read(gdx), ref, tol_elem(dt), "unary_backward op " + std::to_string(int(op)));
  }
}

TEST_P(CudaVsCpu, ReduceSum) {
  struct Case {
    int64_t outer, n, inner;
  };
  for (Case c : {Case{3, 257, 1}, Case{2, 33, 31}, Case{1, 4099, 7}, Case{5, 1, 3}, Case{1, 20000, 33},
                 Case{1, 1 << 20, 1}, Case{3, 300007, 1}, Case{1, 8191, 1}}) {
    Vec x = rounded(uniform(size_t(c.outer * c.n * c.inner), 10), dt), ref(size_t(c.outer * c.inner));
    cpu().reduce_sum(x.data(), ref.data(), c.outer, c.n, c.inner, DType::f32, DType::f32);
    Tensor gx = on_gpu(x, dt);
    for (DType out_dt : {DType::f32, dt}) {
      Tensor go = gpu_empty(c.outer * c.inner, out_dt);
      gpu().reduce_sum(gx.raw(), go.raw(), c.outer, c.n, c.inner, dt, out_dt);
      check_close(read(go), ref, tol_reduce(out_dt),
                  "reduce_sum (" + std::to_string(c.outer) + ", " + std::to_string(c.n) + ", " +
                      std::to_string(c.inner) + ") -> " + dtype_name(out_dt));
    }
  }
}

TEST_P(CudaVsCpu, Gemm) {
  const int64_t M = 31, N = 33, K = 257;
  for (int ta = 0; ta < 2; ++ta) {
    for (int tb = 0; tb < 2; ++tb) {
      for (int bcast = 0; bcast < 3; ++bcast) {  // 0: all batched, 1: A broadcast, 2: B broadcast
        GemmArgs g;
        g.M = M, g.N = N, g.K = K, g.trans_a = ta, g.trans_b = tb, g.batch = 3, g.alpha = 0.5f, g.beta = 0.25f;
        int64_t a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
        g.lda = a_cols + 3, g.ldb = b_cols + 1, g.ldc = N + 2;  // padded rows
        g.stride_a = bcast == 1 ? 0 : a_rows * g.lda;
        g.stride_b = bcast == 2 ? 0 : b_rows * g.ldb;
        g.stride_c = M * g.ldc;
        Vec a = rounded(uniform(size_t(a_rows * g.lda * (bcast == 1 ? 1 : 3)), 11), dt);
        Vec b = rounded(uniform(size_t(b_rows * g.ldb * (bcast == 2 ? 1 : 3)), 12), dt);
        Vec c = rounded(uniform(size_t(M * g.ldc * 3), 13), dt);
        Vec ref = c;
        GemmArgs gc = g;
        gc.a = a.data(), gc.b = b.data(), gc.c = ref.data(), gc.dtype = DType::f32;
        cpu().gemm(gc);
        Tensor ga = on_gpu(a, dt), gb = on_gpu(b, dt), gcu = on_gpu(c, dt);
        g.a = ga.raw(), g.b = gb.raw(), g.c = gcu.raw(), g.dtype = dt;
        gpu().gemm(g);
        check_close(read(gcu), ref, tol_gemm(dt),
                    "gemm ta " + std::to_string(ta) + " tb " + std::to_string(tb) + " bcast " + std::to_string(bcast));
      }
    }
  }
}

// Decoding's products, x (M <= 4, K) W (N, K)^T: bf16/f16 take gemv.cu where K % 8 == 0, the
// rest (and f32) cuBLASLt; odd N, K past the unrolled loop, alpha != 1, rows split over 1-8 warps.
TEST_P(CudaVsCpu, GemvShapes) {
  for (int64_t M : {1, 2, 3, 4})
    for (int64_t N : {1, 37, 300, 5000})
      for (int64_t K : {8, 264, 1000, 4104, 16384}) {
        GemmArgs g;
        g.M = M, g.N = N, g.K = K, g.trans_b = true, g.lda = K, g.ldb = K, g.ldc = N, g.alpha = 0.75f;
        Vec a = rounded(uniform(size_t(M * K), 14), dt), b = rounded(uniform(size_t(N * K), 15), dt);
        Vec ref(size_t(M * N));
        GemmArgs gc = g;
        gc.a = a.data(), gc.b = b.data(), gc.c = ref.data(), gc.dtype = DType::f32;
        cpu().gemm(gc);
        Tensor ga = on_gpu(a, dt), gb = on_gpu(b, dt), gcu = gpu_empty(M * N, dt);
        g.a = ga.raw(), g.b = gb.raw(), g.c = gcu.raw(), g.dtype = dt;
        gpu().gemm(g);
        check_close(read(gcu), ref, tol_gemm(dt),
                    "gemv M " + std::to_string(M) + " N " + std::to_string(N) + " K " + std::to_string(K));
      }
}

// Decoding's fused kernels: q, k, v products sharing x in one launch, gate and up with swiglu,
// the residual add with the rms_norm after it; each against the CPU composing the plain ops
// with the same roundings to dt.
TEST_P(CudaVsCpu, FusedDecodeKernels) {
  const bool half = dt != DType::f32;
  for (int64_t M : {1, 3}) {
    const int64_t K = 264, ns[3] = {96, 40, 40};
    Vec x = rounded(uniform(size_t(M * K), 30), dt);
    std::vector<Vec> w, ref;
    std::vector<Tensor> gw, gy;
    for (int i = 0; i < 3; ++i) {
      w.push_back(rounded(uniform(size_t(ns[i] * K), uint64_t(31 + i)), dt));
      Vec r(size_t(M * ns[i]));
      GemmArgs g;
      g.M = M, g.N = ns[i], g.K = K, g.trans_b = true, g.lda = K, g.ldb = K, g.ldc = ns[i];
      g.a = x.data(), g.b = w[size_t(i)].data(), g.c = r.data(), g.dtype = DType::f32;
      cpu().gemm(g);
      ref.push_back(rounded(r, dt));
      gw.push_back(on_gpu(w[size_t(i)], dt));
      gy.push_back(gpu_empty(M * ns[i], dt));
    }
    Tensor gx = on_gpu(x, dt);
    const void* wp[3] = {gw[0].raw(), gw[1].raw(), gw[2].raw()};
    void* yp[3] = {gy[0].raw(), gy[1].raw(), gy[2].raw()};
    ASSERT_EQ(gpu().gemv_group(gx.raw(), wp, yp, ns, 3, M, K, dt), half);
    if (half)
      for (int i = 0; i < 3; ++i)
        check_close(read(gy[size_t(i)]), ref[size_t(i)], tol_gemm(dt), "gemv_group " + std::to_string(i));
    // gate = w[1], up = w[2] (both 40 x K)
    Vec want(size_t(M * ns[1]));
    for (size_t j = 0; j < want.size(); ++j) {
      float g = ref[1][j], u = ref[2][j];
      want[j] = g / (1.f + std::exp(-g)) * u;
    }
    Tensor gout = gpu_empty(M * ns[1], dt);
    ASSERT_EQ(gpu().gemv_swiglu(gx.raw(), gw[1].raw(), gw[2].raw(), gout.raw(), M, ns[1], K, dt), half);
    if (half) check_close(read(gout), rounded(want, dt), tol_gemm(dt), "gemv_swiglu");
  }
  {  // rope of q and k with the KV append: T 2, H 4, KV 2, D 34, rows 50 + 7 (7 from the device)
    const int64_t T = 2, H = 4, KV = 2, D = 34, cap = 64, pos = 57;
    Vec q = rounded(uniform(size_t(T * H * D), 50), dt), k = rounded(uniform(size_t(T * KV * D), 51), dt);
    Vec v = rounded(uniform(size_t(T * KV * D), 52), dt), inv(D / 2);
    for (int64_t i = 0; i < D / 2; ++i) inv[size_t(i)] = std::pow(10000.f, -2.f * float(i) / float(D));
    Vec qr(q.size()), kr(k.size());
    cpu().rope(q.data(), qr.data(), inv.data(), 1, T, H, D, pos, nullptr, 1.f, false, DType::f32);
    cpu().rope(k.data(), kr.data(), inv.data(), 1, T, KV, D, pos, nullptr, 1.f, false, DType::f32);
    Vec kc = rounded(uniform(size_t(cap * KV * D), 53), dt), vc = rounded(uniform(size_t(cap * KV * D), 54), dt);
    Vec kwant = kc, vwant = vc;
    std::copy(kr.begin(), kr.end(), kwant.begin() + pos * KV * D);
    std::copy(v.begin(), v.end(), vwant.begin() + pos * KV * D);
    Tensor gq = on_gpu(q, dt), gk = on_gpu(k, dt), gv = on_gpu(v, dt), gkc = on_gpu(kc, dt), gvc = on_gpu(vc, dt);
    Tensor ginv = on_gpu(inv, DType::f32), gqo = gpu_empty(T * H * D, dt), gpos = on_gpu_i32({7});
    ASSERT_TRUE(gpu().rope_append(gq.raw(), gk.raw(), gv.raw(), gqo.raw(), gkc.raw(), gvc.raw(),
                                  static_cast<const float*>(ginv.raw()), T, H, KV, D, pos - 7,
                                  static_cast<const int32_t*>(gpos.raw()), dt));
    const Tol tol{dt == DType::f32 ? 1e-5f : 1e-2f, dt == DType::f32 ? 1e-5f : 4e-3f};
    check_close(read(gqo), qr, tol, "rope_append q");
    check_close(read(gkc), rounded(kwant, dt), tol, "rope_append k cache");
    EXPECT_EQ(read(gvc), vwant) << "rope_append v cache";
  }
  for (int64_t dim : {int64_t(256), int64_t(257)}) {
    const int64_t rows = 3;
    Vec x = rounded(uniform(size_t(rows * dim), 40, -2.f, 2.f), dt), y = rounded(uniform(size_t(rows * dim), 41), dt);
    Vec w = rounded(uniform(size_t(dim), 42), dt), sum(x.size()), out(x.size()), rstd(static_cast<size_t>(rows));
    for (size_t i = 0; i < x.size(); ++i) sum[i] = x[i] + y[i];
    sum = rounded(sum, dt);
    cpu().rms_norm(sum.data(), w.data(), out.data(), rstd.data(), rows, dim, 1e-5f, DType::f32);
    Tensor gx = on_gpu(x, dt), gy = on_gpu(y, dt), gw = on_gpu(w, dt), gs = gpu_empty(rows * dim, dt),
           go = gpu_empty(rows * dim, dt);
    ASSERT_TRUE(gpu().add_rms_norm(gx.raw(), gy.raw(), gw.raw(), gs.raw(), go.raw(), rows, dim, 1e-5f, dt));
    check_close(read(gs), sum, tol_elem(dt), "add_rms_norm sum dim " + std::to_string(dim));
    check_close(read(go), out, tol_elem(dt), "add_rms_norm out dim " + std::to_string(dim));
  }
}

TEST_P(CudaVsCpu, GemmEmptyK) {  // C = beta * C, through BLAS semantics on the CPU
  for (float beta : {0.f, 0.5f}) {
    GemmArgs g;
    g.M = 5, g.N = 7, g.K = 0, g.lda = 1, g.ldb = 7, g.ldc = 9, g.batch = 2, g.stride_c = 5 * 9, g.beta = beta;
    Vec a(1, 0.f), b(7, 0.f), c = rounded(uniform(size_t(2 * 5 * 9), 60), dt), ref = c;
    GemmArgs gc = g;
    gc.a = a.data(), gc.b = b.data(), gc.c = ref.data(), gc.dtype = DType::f32;
    cpu().gemm(gc);
    Tensor ga = on_gpu(a, dt), gb = on_gpu(b, dt), gcu = on_gpu(c, dt);
    g.a = ga.raw(), g.b = gb.raw(), g.c = gcu.raw(), g.dtype = dt;
    gpu().gemm(g);
    Vec got = read(gcu);
    for (int64_t i = 0; i < 2; ++i)  // padding columns of C are the CPU's business, compare the matrix
      for (int64_t r = 0; r < 5; ++r)
        for (int64_t j = 7; j < 9; ++j) got[size_t(i * 45 + r * 9 + j)] = ref[size_t(i * 45 + r * 9 + j)];
    check_close(got, ref, tol_elem(dt), "gemm K=0 beta " + std::to_string(beta));
  }
}

TEST_P(CudaVsCpu, Embedding) {
  const int64_t V = 37, N = 33;
  for (int64_t D : {int64_t(31), int64_t(64)}) {
    Vec w = rounded(uniform(size_t(V * D), 14), dt);
    std::vector<int32_t> ids(N);
    for (int64_t i = 0; i < N; ++i) ids[size_t(i)] = int32_t((i * 7 + 3) % V);  // repeats ids
    std::vector<uint8_t> hw = encode(w, dt), hout(size_t(N * D) * dtype_size(dt));
    cpu().embedding(hw.data(), ids.data(), hout.data(), N, D, dt);
    Tensor gw = on_gpu(w, dt), gids = on_gpu_i32(ids), gout = gpu_empty(N * D, dt);
    gpu().embedding(gw.raw(), static_cast<const int32_t*>(gids.raw()), gout.raw(), N, D, dt);
    check_close(read(gout), decode(hout, dt), {0.f, 0.f}, "embedding");

    Vec dout = rounded(uniform(size_t(N * D), 15), dt), dw_init = uniform(size_t(V * D), 16), ref = dw_init;
    std::vector<uint8_t> hd = encode(dout, dt);
    cpu().embedding_backward(hd.data(), ids.data(), ref.data(), N, D, dt);
    Tensor gdout = on_gpu(dout, dt), gdw = on_gpu(dw_init, DType::f32);
    gpu().embedding_backward(gdout.raw(), static_cast<const int32_t*>(gids.raw()), static_cast<float*>(gdw.raw()), N, D,
                             dt);
    check_close(read(gdw), ref, tol_reduce(DType::f32), "embedding_backward");
  }
}

TEST_P(CudaVsCpu, RmsNorm) {
  for (int64_t dim : {int64_t(257), int64_t(256)}) {
    const int64_t rows = 33;
    Vec x = rounded(uniform(size_t(rows * dim), 17, -2.f, 2.f), dt), w = rounded(uniform(size_t(dim), 18), dt);
    Vec out(x.size()), rstd(static_cast<size_t>(rows));
    cpu().rms_norm(x.data(), w.data(), out.data(), rstd.data(), rows, dim, 1e-5f, DType::f32);
    Tensor gx = on_gpu(x, dt), gw = on_gpu(w, dt), gout = gpu_empty(rows * dim, dt),
           grstd = gpu_empty(rows, DType::f32);
    gpu().rms_norm(gx.raw(), gw.raw(), gout.raw(), static_cast<float*>(grstd.raw()), rows, dim, 1e-5f, dt);
    check_close(read(gout), out, tol_elem(dt), "rms_norm out dim " + std::to_string(dim));
    check_close(read(grstd), rstd, tol_reduce(DType::f32), "rms_norm rstd");

    Vec dy = rounded(uniform(x.size(), 19), dt), dx(x.size()), dw(static_cast<size_t>(dim));
    cpu().rms_norm_backward(x.data(), w.data(), rstd.data(), dy.data(), dx.data(), dw.data(), rows, dim, DType::f32);
    Tensor gdy = on_gpu(dy, dt), gdx = gpu_empty(rows * dim, dt), gdw = on_gpu(uniform(size_t(dim), 20), DType::f32);
    gpu().rms_norm_backward(gx.raw(), gw.raw(), static_cast<const float*>(grstd.raw()), gdy.raw(), gdx.raw(),
                            static_cast<float*>(gdw.raw()), rows, dim, dt);
    check_close(read(gdx), dx, tol_reduce(dt), "rms_norm_backward dx");
    check_close(read(gdw), dw, tol_reduce(DType::f32), "rms_norm_backward dw");
  }
}

TEST_P(CudaVsCpu, Rope) {
  const int64_t B = 2, T = 7, H = 3, D = 34;
  Vec x = rounded(uniform(size_t(B * T * H * D), 21), dt), inv_freq(D / 2);
  for (int64_t i = 0; i < D / 2; ++i) inv_freq[size_t(i)] = std::pow(10000.f, -2.f * float(i) / float(D));
  Tensor gx = on_gpu(x, dt), gf = on_gpu(inv_freq, DType::f32), gout = gpu_empty(B * T * H * D, dt);
  for (bool inverse : {false, true}) {
    for (float mscale : {1.f, 1.3f}) {
      Vec ref(x.size());
      cpu().rope(x.data(), ref.data(), inv_freq.data(), B, T, H, D, 1000, nullptr, mscale, inverse, DType::f32);
      gpu().rope(gx.raw(), gout.raw(), static_cast<const float*>(gf.raw()), B, T, H, D, 1000, nullptr, mscale, inverse,
                 dt);
      // Angles up to ~1000 rad: both sides use f32 sin/cos of the same f32 angle.
      const Tol tol{dt == DType::f32 ? 1e-5f : 1e-2f, dt == DType::f32 ? 1e-5f : 4e-3f};
      check_close(read(gout), ref, tol, std::string("rope inverse ") + (inverse ? "1" : "0"));
      // The same positions with 100 of the offset read from device memory at run time.
      Tensor pos = on_gpu_i32({100});
      gpu().rope(gx.raw(), gout.raw(), static_cast<const float*>(gf.raw()), B, T, H, D, 900,
                 static_cast<const int32_t*>(pos.raw()), mscale, inverse, dt);
      check_close(read(gout), ref, tol, std::string("rope at run-time position, inverse ") + (inverse ? "1" : "0"));
    }
  }
}

TEST_P(CudaVsCpu, SoftmaxAndBackward) {
  const int64_t rows = 33;
  for (int64_t n : {int64_t(257), int64_t(33), int64_t(4096)}) {
    Vec x = rounded(uniform(size_t(rows * n), 22, -5.f, 5.f), dt), y(x.size());
    cpu().softmax(x.data(), y.data(), rows, n, DType::f32);
    Tensor gx = on_gpu(x, dt), gy = gpu_empty(rows * n, dt);
    gpu().softmax(gx.raw(), gy.raw(), rows, n, dt);
    check_close(read(gy), y, tol_elem(dt), "softmax n " + std::to_string(n));

    Vec yr = rounded(y, dt), dy = rounded(uniform(x.size(), 23), dt), dx(x.size());
    cpu().softmax_backward(yr.data(), dy.data(), dx.data(), rows, n, DType::f32);
    Tensor gyr = on_gpu(yr, dt), gdy = on_gpu(dy, dt), gdx = gpu_empty(rows * n, dt);
    gpu().softmax_backward(gyr.raw(), gdy.raw(), gdx.raw(), rows, n, dt);
    check_close(read(gdx), dx, tol_reduce(dt), "softmax_backward n " + std::to_string(n));
  }
}

TEST_P(CudaVsCpu, Swiglu) {
  const int64_t n = 1029;
  Vec g = rounded(uniform(n, 24, -4.f, 4.f), dt), u = rounded(uniform(n, 25), dt), out(n);
  cpu().swiglu(g.data(), u.data(), out.data(), n, DType::f32);
  Tensor gg = on_gpu(g, dt), gu = on_gpu(u, dt), gout = gpu_empty(n, dt);
  gpu().swiglu(gg.raw(), gu.raw(), gout.raw(), n, dt);
  check_close(read(gout), out, tol_elem(dt), "swiglu");

  Vec d = rounded(uniform(n, 26), dt), dg(n), du(n);
  cpu().swiglu_backward(g.data(), u.data(), d.data(), dg.data(), du.data(), n, DType::f32);
  Tensor gd = on_gpu(d, dt), gdg = gpu_empty(n, dt), gdu = gpu_empty(n, dt);
  gpu().swiglu_backward(gg.raw(), gu.raw(), gd.raw(), gdg.raw(), gdu.raw(), n, dt);
  check_close(read(gdg), dg, tol_elem(dt), "swiglu_backward dgate");
  check_close(read(gdu), du, tol_elem(dt), "swiglu_backward dup");
}

TEST_P(CudaVsCpu, CrossEntropy) {
  const int64_t N = 33;
  for (int64_t V : {int64_t(257), int64_t(1024)}) {
    Vec logits = rounded(uniform(size_t(N * V), 27, -6.f, 6.f), dt);
    std::vector<int32_t> targets(N);
    for (int64_t i = 0; i < N; ++i) targets[size_t(i)] = i % 5 == 2 ? -1 : int32_t((i * 31 + 7) % V);
    Vec loss(N), lse(N);
    cpu().cross_entropy(logits.data(), targets.data(), loss.data(), lse.data(), N, V, DType::f32);
    Tensor gl = on_gpu(logits, dt), gt = on_gpu_i32(targets), gloss = gpu_empty(N, DType::f32),
           glse = gpu_empty(N, DType::f32);
    const int32_t* tp = static_cast<const int32_t*>(gt.raw());
    gpu().cross_entropy(gl.raw(), tp, static_cast<float*>(gloss.raw()), static_cast<float*>(glse.raw()), N, V, dt);
    // Inputs are the same rounded values and both compute in f32 (or better): f32 tolerance.
    check_close(read(gloss), loss, tol_reduce(DType::f32), "cross_entropy loss V " + std::to_string(V));
    check_close(read(glse), lse, tol_reduce(DType::f32), "cross_entropy lse");

    Vec dloss = uniform(N, 28), dl(size_t(N * V));
    cpu().cross_entropy_backward(logits.data(), targets.data(), lse.data(), dloss.data(), dl.data(), N, V, DType::f32);
    Tensor gdloss = on_gpu(dloss, DType::f32), gdl = gpu_empty(N * V, dt);
    gpu().cross_entropy_backward(gl.raw(), tp, static_cast<const float*>(glse.raw()),
                                 static_cast<const float*>(gdloss.raw()), gdl.raw(), N, V, dt);
    check_close(read(gdl), dl, tol_elem(dt), "cross_entropy_backward");
  }
}

TEST_F(CudaVsCpuOnce, AdamW) {
  const int64_t n = 1027;
  Vec p = uniform(n, 29), m = uniform(n, 30, -0.1f, 0.1f), v = uniform(n, 31, 0.f, 0.01f);
  Tensor gp = on_gpu(p, DType::f32), gm = on_gpu(m, DType::f32), gv = on_gpu(v, DType::f32);
  for (int step = 1; step <= 3; ++step) {
    Vec g = uniform(n, 40 + step);
    Tensor gg = on_gpu(g, DType::f32);
    float bc1 = 1.f - std::pow(0.9f, float(step)), bc2 = 1.f - std::pow(0.999f, float(step));
    cpu().adamw(F(p), g.data(), F(m), F(v), n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, bc1, bc2);
    gpu().adamw(static_cast<float*>(gp.raw()), static_cast<const float*>(gg.raw()), static_cast<float*>(gm.raw()),
                static_cast<float*>(gv.raw()), n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, bc1, bc2);
  }
  check_close(read(gp), p, {1e-5f, 1e-6f}, "adamw p");
  check_close(read(gm), m, {1e-5f, 1e-6f}, "adamw m");
  check_close(read(gv), v, {1e-5f, 1e-6f}, "adamw v");
}

struct AttnCase {
  int64_t B, T, S, n_head, n_kv_head, head_dim, q_offset, window;
  bool causal;
  int64_t chunk_rows;   // RuntimeConfig::attn_chunk_rows for the gemm path (set: the fused kernel is off), or 0
  float softcap = 0.f;  // gemma2's score soft-cap, or 0
};

// seg: packed rows' segment ids (B * T) for AttentionArgs::segment, or empty.
void run_attention_case(DType dt, const AttnCase& c, const std::vector<int32_t>& seg = {}) {
  std::string name = std::string(seg.empty() ? "" : "packed ") + "attention B" + std::to_string(c.B) + " T" +
                     std::to_string(c.T) + " S" + std::to_string(c.S) + " H" + std::to_string(c.n_head) + "/" +
                     std::to_string(c.n_kv_head) + " D" + std::to_string(c.head_dim) + " off" +
                     std::to_string(c.q_offset) + " win" + std::to_string(c.window) + (c.causal ? " causal" : "") +
                     (c.chunk_rows ? " chunked" : "") + (c.softcap > 0.f ? " softcap" : "");
  SCOPED_TRACE(name);
  size_t nq = size_t(c.B * c.T * c.n_head * c.head_dim), nk = size_t(c.B * c.S * c.n_kv_head * c.head_dim);
  size_t nl = size_t(c.B * c.n_head * c.T);
  Vec q = rounded(uniform(nq, 50, -2.f, 2.f), dt), k = rounded(uniform(nk, 51, -2.f, 2.f), dt);
  Vec v = rounded(uniform(nk, 52), dt), dout = rounded(uniform(nq, 53), dt);
  AttentionArgs a;
  a.B = c.B, a.T = c.T, a.S = c.S, a.n_head = c.n_head, a.n_kv_head = c.n_kv_head, a.head_dim = c.head_dim;
  a.q_offset = c.q_offset, a.window = c.window, a.causal = c.causal;
  a.scale = 1.f / std::sqrt(float(c.head_dim));
  a.softcap = c.softcap;

  Vec out(nq), lse(nl), dq(nq), dk(nk), dv(nk);
  AttentionArgs ac = a;
  ac.q = q.data(), ac.k = k.data(), ac.v = v.data(), ac.out = out.data(), ac.lse = lse.data(), ac.dtype = DType::f32;
  ac.segment = seg.empty() ? nullptr : seg.data();
  cpu().attention(ac);
  // The CPU backward runs on the CUDA forward's output rounded the same way, so that it
  // checks the backward alone.
  Tensor gq = on_gpu(q, dt), gk = on_gpu(k, dt), gv = on_gpu(v, dt), gout = gpu_empty(int64_t(nq), dt);
  Tensor glse = gpu_empty(int64_t(nl), DType::f32);
  std::optional<ScopedRuntimeConfig> chunked;
  if (c.chunk_rows) {
    RuntimeConfig rc = runtime_config();
    rc.attn_chunk_rows = c.chunk_rows;
    rc.cuda_flash = false;
    chunked.emplace(rc);
  }
  AttentionArgs ag = a;
  ag.q = gq.raw(), ag.k = gk.raw(), ag.v = gv.raw(), ag.out = gout.raw(), ag.lse = static_cast<float*>(glse.raw());
  ag.dtype = dt;
  Tensor gseg = seg.empty() ? Tensor() : on_gpu_i32(seg);
  ag.segment = seg.empty() ? nullptr : static_cast<const int32_t*>(gseg.raw());
  gpu().attention(ag);
  check_close(read(gout), out, tol_attn(dt), name + " out");
  check_close(read(glse), lse, tol_reduce(DType::f32), name + " lse");

  Vec out_g = read(gout);
  ac.out = out_g.data();
  AttentionBackwardArgs bc{ac, dout.data(), dq.data(), dk.data(), dv.data()};
  cpu().attention_backward(bc);
  Tensor gdout = on_gpu(dout, dt), gdq = gpu_empty(int64_t(nq), dt), gdk = gpu_empty(int64_t(nk), dt),
         gdv = gpu_empty(int64_t(nk), dt);
  AttentionBackwardArgs bg{ag, gdout.raw(), gdq.raw(), gdk.raw(), gdv.raw()};
  gpu().attention_backward(bg);
  chunked.reset();
  check_close(read(gdq), dq, tol_attn(dt), name + " dq");
  check_close(read(gdk), dk, tol_attn(dt), name + " dk");
  check_close(read(gdv), dv, tol_attn(dt), name + " dv");
}

TEST_P(CudaVsCpu, Attention) {
  const AttnCase cases[] = {
      {2, 33, 33, 4, 2, 16, 0, 0, true, 0},     // GQA, causal
      {2, 33, 33, 4, 2, 16, 0, 0, true, 7},     // the same in chunks of 7 query rows
      {1, 31, 31, 3, 3, 64, 0, 0, false, 0},    // MHA, not causal
      {1, 5, 37, 4, 1, 64, 32, 0, true, 0},     // MQA, decoding-like offset
      {2, 33, 33, 4, 2, 32, 0, 8, true, 5},     // sliding window, chunked
      {1, 5, 3, 2, 1, 16, 10, 4, true, 0},      // every row fully masked: lse -inf, out 0
      {1, 257, 257, 2, 1, 128, 0, 0, true, 0},  // head_dim 128, longer
      // head_dim 64 and 128 in bf16/f16 take the fused kernel: tiles of 64 rows and keys.
      {2, 70, 70, 4, 2, 128, 0, 0, true, 0},    // partial row and key tiles
      {2, 70, 70, 4, 2, 128, 0, 0, true, 16},   // the same through the gemm path
      {1, 150, 150, 2, 2, 64, 0, 40, true, 0},  // window crossing tiles
      {1, 3, 200, 4, 2, 128, 197, 0, true, 0},  // decoding: few rows, many key tiles
      {1, 130, 129, 2, 1, 64, 0, 0, false, 0},  // not causal, S not a multiple of 64
      {1, 4, 3, 2, 1, 64, 10, 4, true, 0},      // fused kernel, every row fully masked
      // gemma2's soft-cap: the gemm path in every dtype (the fused kernels do not cap).
      {2, 33, 33, 4, 2, 16, 0, 0, true, 0, 5.f},
      {2, 33, 33, 4, 2, 32, 0, 8, true, 5, 3.f},    // sliding window, chunked
      {2, 70, 70, 4, 2, 128, 0, 0, true, 0, 20.f},  // a shape the fused kernel would take
      {1, 5, 37, 4, 1, 64, 32, 0, true, 0, 4.f},    // decoding-like offset
  };
  for (const AttnCase& c : cases) run_attention_case(dt, c);
}

// Packed rows (lmtune lora --pack): segment ids per token keep attention within each example. The
// segments start and end inside and on the fused kernels' 64-row tiles, one-token segments included,
// with a window, in chunks of the gemm path, and at head_dim 64 and 128 (bf16/f16: flash kernels).
TEST_P(CudaVsCpu, AttentionPackedRows) {
  struct Case {
    AttnCase c;
    std::vector<std::vector<int64_t>> lengths;  // per batch row, summing to T
  };
  const Case cases[] = {
      {{2, 200, 200, 4, 2, 128, 0, 0, true, 0}, {{37, 64, 1, 90, 8}, {200}}},
      {{2, 200, 200, 4, 2, 128, 0, 0, true, 16}, {{37, 64, 1, 90, 8}, {5, 5, 190}}},
      {{1, 150, 150, 2, 2, 64, 0, 0, true, 0}, {{64, 64, 22}}},  // boundaries on the tiles
      {{1, 150, 150, 2, 1, 64, 0, 40, true, 0}, {{3, 100, 7, 40}}},
      {{2, 70, 70, 4, 4, 64, 0, 0, true, 0}, {{1, 1, 1, 67}, {30, 31, 9}}},
      {{1, 33, 33, 4, 2, 16, 0, 0, true, 0}, {{10, 23}}},                  // head_dim 16: the gemm path in every dtype
      {{1, 150, 150, 2, 1, 64, 0, 40, true, 0, 10.f}, {{3, 100, 7, 40}}},  // soft-capped (gemma2)
  };
  for (const Case& k : cases) {
    std::vector<int32_t> seg;
    for (const auto& row : k.lengths) {
      int32_t id = 0;
      for (int64_t n : row) seg.insert(seg.end(), size_t(n), id++);
    }
    ASSERT_EQ(int64_t(seg.size()), k.c.B * k.c.T);
    run_attention_case(dt, k.c, seg);
  }
}

TEST_P(CudaVsCpu, RopeAtPositions) {
  const int64_t B = 2, T = 9, H = 3, D = 34;
  Vec x = rounded(uniform(size_t(B * T * H * D), 23), dt), inv_freq(D / 2);
  for (int64_t i = 0; i < D / 2; ++i) inv_freq[size_t(i)] = std::pow(10000.f, -2.f * float(i) / float(D));
  const std::vector<int32_t> pos = {0, 1, 2, 0, 1, 0, 1, 2, 3, 500, 501, 502, 503, 0, 1, 2, 3, 4};
  Tensor gx = on_gpu(x, dt), gf = on_gpu(inv_freq, DType::f32), gp = on_gpu_i32(pos),
         gout = gpu_empty(B * T * H * D, dt);
  for (bool inverse : {false, true}) {
    Vec ref(x.size());
    cpu().rope_at(x.data(), ref.data(), inv_freq.data(), pos.data(), B, T, H, D, 1.f, inverse, DType::f32);
    gpu().rope_at(gx.raw(), gout.raw(), static_cast<const float*>(gf.raw()), static_cast<const int32_t*>(gp.raw()), B,
                  T, H, D, 1.f, inverse, dt);
    const Tol tol{dt == DType::f32 ? 1e-5f : 1e-2f, dt == DType::f32 ? 1e-5f : 4e-3f};
    check_close(read(gout), ref, tol, std::string("rope_at inverse ") + (inverse ? "1" : "0"));
  }
}

// A decode step recorded for replay: the query offset lives in device memory and k, v span the
// whole cache, whose rows past the last query hold NaN here: the kernels must not read them.
TEST_P(CudaVsCpu, AttentionAtRunTimeOffset) {
  struct Case {
    int64_t T, cap, H, KV, D, pos, window;
    float softcap = 0.f;  // gemma2's score soft-cap: decode_attention.cu in every dtype
  };
  const Case cases[] = {
      {1, 256, 8, 2, 128, 150, 0},  // bf16/f16: the fused kernel; f32: decode_attention.cu
      {1, 256, 8, 2, 128, 0, 0},    // the first token
      {1, 256, 4, 4, 64, 255, 0},   // the last row of the capacity
      {1, 200, 4, 1, 64, 120, 40},  // sliding window
      {1, 100, 6, 3, 96, 70, 0},    // head_dim 96: decode_attention.cu in every dtype
      {3, 128, 4, 2, 128, 60, 0},   // a few rows at once
      {1, 64, 4, 2, 16, 30, 0},     // head_dim 16 and 48: lanes past head_dim idle
      {1, 64, 2, 1, 48, 50, 8},
      {1, 4096, 32, 8, 128, 3000, 0},  // Mistral's heads over a long cache: many
                                       // splits
      {2, 2048, 8, 2, 64, 1500, 300},  // two rows, a window across split boundaries
      {4, 512, 4, 4, 128, 40, 0},      // fewer keys than one split takes
      {1, 256, 8, 2, 128, 150, 0, 30.f},
      {3, 128, 4, 2, 128, 60, 0, 10.f},
      {1, 64, 2, 1, 48, 50, 8, 10.f},
      {2, 512, 16, 2, 64, 400, 0},    // 8 heads a kv head: two blocks of 4 a kv head
      {1, 300, 6, 2, 128, 250, 0},    // 3 heads a kv head: a block a head
      {1, 1024, 12, 2, 128, 900, 0},  // 6 heads a kv head: blocks of 2
  };
  // decode_split.cu (bf16/f16, head_dim 64 and 128, T <= 4) with blocks of the query heads that share
  // a kv head and with a block a head, and, with it off, the flash kernel.
  for (int mode : {0, 1, 2})
    for (const Case& c : cases) {
      const bool split = mode < 2;
      RuntimeConfig rc = runtime_config();
      rc.cuda_decode_split = split;
      rc.cuda_decode_gqa = mode == 0;
      ScopedRuntimeConfig scoped(rc);
      std::string name = std::string(mode == 0   ? "split gqa "
                                     : mode == 1 ? "split "
                                                 : "") +
                         "attention at run-time offset T" + std::to_string(c.T) + " cap" + std::to_string(c.cap) +
                         " H" + std::to_string(c.H) + "/" + std::to_string(c.KV) + " D" + std::to_string(c.D) + " pos" +
                         std::to_string(c.pos) + " win" + std::to_string(c.window) +
                         (c.softcap > 0.f ? " softcap" : "");
      SCOPED_TRACE(name);
      const int64_t S = c.pos + c.T, row = c.KV * c.D;
      size_t nq = size_t(c.T * c.H * c.D), nl = size_t(c.H * c.T);
      Vec q = rounded(uniform(nq, 60, -2.f, 2.f), dt), k = rounded(uniform(size_t(c.cap * row), 61, -2.f, 2.f), dt);
      Vec v = rounded(uniform(size_t(c.cap * row), 62), dt);
      AttentionArgs a;
      a.B = 1, a.T = c.T, a.S = S, a.n_head = c.H, a.n_kv_head = c.KV, a.head_dim = c.D;
      a.q_offset = c.pos, a.window = c.window, a.causal = true, a.scale = 1.f / std::sqrt(float(c.D));
      a.softcap = c.softcap;
      Vec out(nq), lse(nl);
      AttentionArgs ac = a;
      ac.q = q.data(), ac.k = k.data(), ac.v = v.data(), ac.out = out.data(), ac.lse = lse.data(),
      ac.dtype = DType::f32;
      cpu().attention(ac);
      for (size_t i = size_t(S * row); i < k.size(); ++i) k[i] = v[i] = std::numeric_limits<float>::quiet_NaN();
      Tensor gq = on_gpu(q, dt), gk = on_gpu(k, dt), gv = on_gpu(v, dt), gout = gpu_empty(int64_t(nq), dt);
      Tensor glse = gpu_empty(int64_t(nl), DType::f32), pos = on_gpu_i32({int32_t(c.pos - 7)});
      AttentionArgs ag = a;
      ag.S = c.cap, ag.q_offset = 7, ag.q_offset_at = static_cast<const int32_t*>(pos.raw());
      ag.q = gq.raw(), ag.k = gk.raw(), ag.v = gv.raw(), ag.out = gout.raw(), ag.lse = static_cast<float*>(glse.raw());
      ag.dtype = dt;
      gpu().attention(ag);
      check_close(read(gout), out, tol_attn(dt), name + " out");
      check_close(read(glse), lse, tol_reduce(DType::f32), name + " lse");
    }
}

TEST_F(CudaVsCpuOnce, CopyRowsAtRunTimeRow) {
  for (int64_t row_bytes : {48, 20}) {  // 16-byte units and bytes
    Vec src = uniform(size_t(3 * row_bytes / 4), 70), dst = uniform(size_t(10 * row_bytes / 4), 71);
    Tensor gsrc = on_gpu(src, DType::f32), gdst = on_gpu(dst, DType::f32);
    Tensor row = on_gpu_i32({5});
    gpu().copy_rows_at(gdst.raw(), gsrc.raw(), row_bytes, 3, static_cast<const int32_t*>(row.raw()));
    Vec want = dst;
    std::copy(src.begin(), src.end(), want.begin() + 5 * row_bytes / 4);
    EXPECT_EQ(read(gdst), want) << "row_bytes " << row_bytes;
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaVsCpu, ::testing::Values(DType::f32, DType::bf16, DType::f16), dt_name);

}  // namespace
}  // namespace lmtune
