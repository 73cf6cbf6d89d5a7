// Fused products for decoding in MLX's fp quantization modes: y (M, N) = x (M, K) @ dequant(W)^T,
// M = 1..8, W packed as mxfp4 (E2M1 codes, E8M0 scales, groups of 32), nvfp4 (E2M1, E4M3 scales,
// groups of 16) or mxfp8 (E4M3 codes, E8M0 scales, groups of 32). The packed weight is read once;
// nothing dense is written (the dequantize + GEMV path wrote and read a dense copy every token).
//
// A warp takes two rows (kRows) and a lane the groups g = lane, lane + 32, ... of both, a step at a time: the lane's
// next group of each row (two of each for nvfp4's 8-byte groups). With one row of x the words and scale bytes of a step
// are loaded a step ahead, so that they are in flight while the lane computes the step before; with more rows of x a
// step is long enough for the other warps to hide its loads. Each x value is loaded and converted once for both rows.
// The lane adds s * sum(v * x) over each group to its f32 sums, as the CPU's kernel does, and the warp sums them at the
// end. Every code value and every scale is exact in f32, and so are their products in bf16 (E2M1 x E8M0 and E4M3 x
// E8M0 are powers of two times a short mantissa; E2M1 x E4M3 has at most 5 significant bits), so the sums differ from
// dequantize-then-GEMV's only in their order.
//   A code becomes f32 without compares: its bits placed into an IEEE half make the half the code's value times a
// fixed power of two (2^-14 for E2M1, 2^-8 for E4M3: e2m1_word, e4m3_word), two codes a 32-bit word made by a few
// shifts, LOP3s and byte permutes, and the half -> f32 conversion is exact (half subnormals included: it flushes none).
// A group's sum of v 2^-14 x (v 2^-8 x) is multiplied back by 2^14 (2^8) before its scale. That is a power of two, so
// this is the sum of the v x themselves, rounded the same way, as long as the products v 2^-14 x are f32 normals:
// |x| >= 2^-109, far below any activation (the compare chain's unscaled products were normal down to 2^-117).
#include <type_traits>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/fp_codes.cuh"
#include "backend/cuda/qgemv_mma.cuh"
#include "core/runtime_config.h"

namespace lmtune {

namespace {

using qgemv::kQWarps;
using qgemv::load_words;

constexpr int kRows = 2;  // rows a warp

// The two halves of h (low 16 bits first) as f32, exactly.
__device__ __forceinline__ void halves_f32(uint32_t h, float& lo, float& hi) {
  lo = __half2float(__ushort_as_half(uint16_t(h & 0xffffu)));
  hi = __half2float(__ushort_as_half(uint16_t(h >> 16)));
}

// Eight consecutive x values as f32 (16 bytes of bf16 / f16, 32 of f32; p 16-byte aligned).
template <typename T>
__device__ __forceinline__ void load_x8(const T* p, float (&v)[8]) {
  if constexpr (std::is_same_v<T, float>) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p)), b = __ldg(reinterpret_cast<const float4*>(p) + 1);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if constexpr (std::is_same_v<T, bf16>) {  // a bf16 is the high half of its f32: one instruction a value
        v[2 * i] = __uint_as_float(w[i] << 16), v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
      } else {
        halves_f32(w[i], v[2 * i], v[2 * i + 1]);
      }
    }
  }
}

// a's bits where mask has ones, b's elsewhere: one LOP3 (written out, as the compiler turns (a & mask) | (b & ~mask)
// of the shifted masked words below back into two masks, two LOP3s).
__device__ __forceinline__ uint32_t select_bits(uint32_t mask, uint32_t a, uint32_t b) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xE4;" : "=r"(d) : "r"(a), "r"(b), "r"(mask));
  return d;
}

// The eight E2M1 codes of word w (code j in bits 4j..4j+3: magnitude e1 e0 m, then the sign) as f32, v[j] = code j's
// value times 2^-14. The half with bits (e1 e0 m) << 9 | sign << 15 has exponent field e = e1 e0 and mantissa bit 9 =
// m: for e > 0 it is (1 + m / 2) 2^(e - 15), E2M1's (1 + m / 2) 2^(e - 1) times 2^-14; for e = 0 it is the subnormal
// (m / 2) 2^-14, E2M1's m / 2 times 2^-14:
//   code        0     1       2       3       4       5       6       7       8 .. 15
//   half bits   0     0x0200  0x0400  0x0600  0x0800  0x0A00  0x0C00  0x0E00  the same | 0x8000
//   half 2^14   0     0.5     1       1.5     2       3       4       6       -0, -0.5, -1, ..., -6
// A half's high byte is the sign, three zeros, e1 e0 m and a zero (its low byte is zero), and four of them are made at
// once: in ev the even codes', byte i for code 2i, with the magnitude from w << 1 under the mask (bits 1..3 of each
// byte) and the sign from sg << 4 (sg: the codes' sign bits) at bit 7; in od the odd codes', from w >> 3 and from sg
// itself. The other codes' signs in sg << 4 and in sg fall under the mask, where the magnitudes are taken. A byte
// permute then puts two of these bytes into the high bytes of a word's two halves and zeros into the low ones: 10
// integer instructions for 8 codes.
__device__ __forceinline__ void e2m1_word(uint32_t w, float (&v)[8]) {
  uint32_t sg = w & 0x88888888u;
  asm("" : "+r"(sg));  // opaque: the compiler would make sg << 4 of w << 4 with another mask, one LOP3 more
  const uint32_t ev = select_bits(0x0E0E0E0Eu, w << 1, sg << 4), od = select_bits(0x0E0E0E0Eu, w >> 3, sg);
  // Selector nibbles, byte 0 first: 4 (a zero byte of the second operand), byte i of ev / od, 4, byte i + 1.
  halves_f32(__byte_perm(ev, 0, 0x1404), v[0], v[2]);
  halves_f32(__byte_perm(ev, 0, 0x3424), v[4], v[6]);
  halves_f32(__byte_perm(od, 0, 0x1404), v[1], v[3]);
  halves_f32(__byte_perm(od, 0, 0x3424), v[5], v[7]);
}

// The four E4M3 codes of word w (code j in bits 8j..8j+7: magnitude e3 e2 e1 e0 m2 m1 m0, then the sign) as f32, v[j]
// = code j's value times 2^-8. The half with bits magnitude << 7 | sign << 15 has exponent field e (bit 14 zero) and
// mantissa m << 7: for e > 0 it is (1 + m / 8) 2^(e - 15), E4M3's (1 + m / 8) 2^(e - 7) times 2^-8; for e = 0 the
// subnormal (m / 8) 2^-14, E4M3's (m / 8) 2^-6 times 2^-8. E4M3's NaN magnitude 0x7f would be the finite half 0x3F80,
// so bit 14 is set for it (u: bit 7 of magnitude + 1 in each byte, no carry leaving a byte), making the half 0x7F80:
// exponent field 31, mantissa 0x380, a NaN, as e4m3_value gives. Halves of codes 0 and 2: u << 7 under the mask, the
// signs at bits 15 and 31 of sg << 8 (its other sign lands under the mask); of codes 1 and 3: u >> 1 and sg itself.
// 9 integer instructions for 4 codes.
__device__ __forceinline__ void e4m3_word(uint32_t w, float* v) {
  const uint32_t mag = w & 0x7f7f7f7fu;
  uint32_t sg = w & 0x80808080u;
  asm("" : "+r"(sg));  // opaque, as in e2m1_word
  const uint32_t u = qgemv::and_or(mag + 0x01010101u, 0x80808080u, mag);
  halves_f32(select_bits(0x7F807F80u, u << 7, sg << 8), v[0], v[2]);
  halves_f32(select_bits(0x7F807F80u, u >> 1, sg), v[1], v[3]);
}

// A lane's step: for each row, its kU groups' words and scale bytes.
template <int KU, int KW>
struct Step {
  uint32_t w[kRows][KU][KW];
  uint32_t s[kRows][KU];
};

// The step whose first group is g (then g + 32, ...), the groups that exist: row r's words and scale byte at w[r]
// and sc[r].
template <int KU, int KW>
__device__ __forceinline__ void load_step(const uint32_t* const (&w)[kRows], const uint8_t* const (&sc)[kRows],
                                          int64_t g, int64_t groups, Step<KU, KW>& st) {
#pragma unroll
  for (int u = 0; u < KU; ++u) {
    if (g + 32 * u < groups) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        load_words<KW>(w[r] + 32 * u * KW, st.w[r][u]);
        st.s[r][u] = __ldg(sc[r] + 32 * u);
      }
    }
  }
}

// Group u of step st, both rows, added into acc: s * sum(v x) for each row of x (m < M; MM: M's bound), xg the
// group's x in row 0.
template <typename T, int BITS, int GROUP, bool E4M3_SCALE, int MM, int KU, int KW>
__device__ __forceinline__ void group_dot(const T* xg, int M, int64_t K, const Step<KU, KW>& st, int u,
                                          float (&acc)[kRows][MM]) {
  constexpr float kUnscale = BITS == 4 ? 16384.f : 256.f;  // 2^14, 2^8: undoes the halves' factor
  float part[kRows][MM];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int m = 0; m < MM; ++m) part[r][m] = 0.f;
#pragma unroll
  for (int c = 0; c < GROUP / 8; ++c) {  // 8 codes: one word of E2M1, two of E4M3
    float v[kRows][8];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if constexpr (BITS == 4) {
        e2m1_word(st.w[r][u][c], v[r]);
      } else {
        e4m3_word(st.w[r][u][2 * c], v[r]);
        e4m3_word(st.w[r][u][2 * c + 1], v[r] + 4);
      }
    }
#pragma unroll
    for (int m = 0; m < MM; ++m) {
      if (MM == 1 || m < M) {  // M is the same for the whole grid
        float xv[8];
        load_x8(xg + m * K + 8 * c, xv);
#pragma unroll
        for (int l = 0; l < 8; ++l)
#pragma unroll
          for (int r = 0; r < kRows; ++r) part[r][m] = fmaf(v[r][l], xv[l], part[r][m]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const uint32_t s8 = st.s[r][u];
    const float s = E4M3_SCALE ? e4m3_value(s8) : e8m0_value(s8);
#pragma unroll
    for (int m = 0; m < MM; ++m)
      if (MM == 1 || m < M) acc[r][m] = fmaf(s, part[r][m] * kUnscale, acc[r][m]);
  }
}

// MM: the rows of x the kernel is built for, 1 (M = 1) or 8 (M = 2..8), so that a row of x holds no registers for
// seven others. Blocks a multiprocessor: the most at which -Xptxas -v shows no spills. For M = 1 4 (64 registers), 3
// for mxfp8 (80: twice the words in flight); for M = 2..8 2 (128).
template <int BITS, int MM>
constexpr int kMinBlocks = MM == 1 ? (BITS == 4 ? 4 : 3) : 2;

template <typename T, int BITS, int GROUP, bool E4M3_SCALE, int MM>
__global__ void __launch_bounds__(kQWarps * 32, kMinBlocks<BITS, MM>)
    qgemv_fp_kernel(const T* __restrict__ x, const uint32_t* __restrict__ wq, const uint8_t* __restrict__ scales,
                    T* __restrict__ y, int M, int64_t N, int64_t K) {
  constexpr int kWords = GROUP * BITS / 32;         // words a group (4, 2, 8)
  constexpr int kU = kWords >= 4 ? 1 : 4 / kWords;  // groups of a row a step: at least 16 bytes (1, 2, 1)
  static_assert(GROUP % 8 == 0 && (kWords == 2 || kWords % 4 == 0), "a group is whole 16-byte x loads");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n0 = (int64_t(blockIdx.x) * kQWarps + warp) * kRows;
  const int64_t groups = K / GROUP;
  // Each row's words and scale byte, and x, at the lane's first group. A last warp of one row reads it twice and
  // stores it once.
  const uint32_t* w[kRows];
  const uint8_t* sc[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = min(n0 + r, N - 1);
    w[r] = wq + (row * groups + lane) * kWords;
    sc[r] = scales + row * groups + lane;
    // Opaque to the compiler, which otherwise works both out again from n0 at every step (~35 instructions a step).
    asm("" : "+l"(w[r]), "+l"(sc[r]));
  }
  const T* xg = x + lane * GROUP;
  // The first step's loads go out before the wait on the previous kernel: they read only the weight (constant data,
  // cuda_common.cuh's pdl_enter), and their DRAM latency then runs under that wait.
  pdl_trigger();
  Step<kU, kWords> cur;
  if (n0 < N) load_step(w, sc, lane, groups, cur);
  pdl_wait();
  if (n0 >= N) return;  // whole warps
  float acc[kRows][MM];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int m = 0; m < MM; ++m) acc[r][m] = 0.f;
  // The step at g0 (loaded; its x at xs) added into acc.
  const auto use = [&](const Step<kU, kWords>& st, int64_t g0, const T* xs) {
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      if (g0 + 32 * u >= groups) break;
      group_dot<T, BITS, GROUP, E4M3_SCALE, MM>(xs + 32 * u * GROUP, M, K, st, u, acc);
    }
  };
  constexpr int kStep = 32 * kU;  // groups a warp covers a step
  const auto advance = [&] {
#pragma unroll
    for (int r = 0; r < kRows; ++r) w[r] += kStep * kWords, sc[r] += kStep;
  };
  if constexpr (MM == 1) {
    // Two steps an iteration, two buffers taking turns (no copies from one to the other): each step's loads go out
    // before the step loaded last is used.
    Step<kU, kWords> next;
    for (int64_t g0 = lane; g0 < groups; g0 += 2 * kStep) {
      advance();
      load_step(w, sc, g0 + kStep, groups, next);
      use(cur, g0, xg);
      if (g0 + kStep >= groups) break;
      advance();
      load_step(w, sc, g0 + 2 * kStep, groups, cur);
      use(next, g0 + kStep, xg + kStep * GROUP);
      xg += 2 * kStep * GROUP;
    }
  } else {
    // With more rows of x a step is long enough for other warps to hide the next one's latency, and the rows' sums
    // take the registers of the second buffer (which would spill here): one step at a time.
    for (int64_t g0 = lane; g0 < groups; g0 += kStep) {
      use(cur, g0, xg);
      advance();
      load_step(w, sc, g0 + kStep, groups, cur);
      xg += kStep * GROUP;
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int m = 0; m < MM; ++m) {
      if (MM == 1 || m < M) {
        const float v = warp_sum(acc[r][m]);
        if (lane == 0 && n0 + r < N) y[m * N + n0 + r] = from_f32<T>(v);
      }
    }
  }
}

template <typename T, int BITS, int GROUP, bool E4M3_SCALE>
void launch_fp(const T* x, const uint32_t* wq, const uint8_t* scales, T* y, int M, int64_t N, int64_t K) {
  const dim3 grid(unsigned((N + kQWarps * kRows - 1) / (kQWarps * kRows)));
  if (M == 1)
    launch("quantized_gemv_fp", qgemv_fp_kernel<T, BITS, GROUP, E4M3_SCALE, 1>, grid, kQWarps * 32, 0, x, wq, scales, y,
           M, N, K);
  else
    launch("quantized_gemv_fp", qgemv_fp_kernel<T, BITS, GROUP, E4M3_SCALE, 8>, grid, kQWarps * 32, 0, x, wq, scales, y,
           M, N, K);
}

}  // namespace

// LMTUNE_CUDA_GEMV=0 turns this off as it does the affine products (callers then dequantize and use
// gemm); so do unaligned x or wq (views at odd offsets), which the 16-byte loads cannot read.
bool CudaBackend::quantized_gemv_fp(const void* x, const uint32_t* wq, const uint8_t* scales, void* y, int64_t M,
                                    int64_t N, int64_t K, QuantMode mode, DType dt) {
  const int group = mode == QuantMode::nvfp4 ? 16 : 32;
  if (mode == QuantMode::affine || M < 1 || M > 8 || K < 1 || N < 0 || K % group != 0 || !runtime_config().cuda_gemv ||
      !aligned16(x) || reinterpret_cast<uintptr_t>(wq) % (mode == QuantMode::nvfp4 ? 8 : 16))
    return false;
  if (dt != DType::f32 && dt != DType::bf16 && dt != DType::f16) return false;
  if (N == 0) return true;
  dispatch_float(dt, "quantized_gemv_fp", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xt = static_cast<const T*>(x);
    T* yt = static_cast<T*>(y);
    const int m = int(M);
    switch (mode) {
      case QuantMode::mxfp4: launch_fp<T, 4, 32, false>(xt, wq, scales, yt, m, N, K); return;
      case QuantMode::nvfp4: launch_fp<T, 4, 16, true>(xt, wq, scales, yt, m, N, K); return;
      case QuantMode::mxfp8: launch_fp<T, 8, 32, false>(xt, wq, scales, yt, m, N, K); return;
      case QuantMode::affine: break;
    }
  });
  return true;
}

}  // namespace lmtune
