// The bulk-tensor-copy pieces the quantized GEMVs share (qgemv_tma.cu, variant 7; qgemv_ring.cu,
// variant 8): the copies' descriptors, the mbarrier operations and the 2-D tile copy.
#pragma once
#include <cuda.h>
#include <cudaTypedefs.h>

#include <cstdint>

#include "backend/cuda/qgemv_mma.cuh"

namespace lmtune::qgemv {

// The bulk tensor copies' descriptors: per matrix (up to three), codes, scales and biases.
struct TmaMaps {
  CUtensorMap codes[3], scales[3], biases[3];
};

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// Box at coordinates (x, y) of map into shared memory at dst; completes on bar.
__device__ __forceinline__ void tma_2d(uint32_t dst, const CUtensorMap* map, int x, int y, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
      "[%4];" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(bar)
      : "memory");
}

__device__ __forceinline__ int box_row(int g) { return g < 4 ? 2 * g : 2 * g - 7; }
// A consumer's arrival on bar (an mbarrier counting arrivals, no bytes).
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}

// A (rows, inner) row-major matrix of 1-byte (kind 0: codes, 128-byte swizzle) or 2-byte
// elements (kind 1: scales or biases, no swizzle), boxes of (box_rows, box_inner). False when the
// driver refuses it. Descriptors are made once per (address, shape, box) and kept.
bool make_map(CUtensorMap* out, const void* ptr, uint64_t inner, uint64_t rows, uint32_t box_inner, uint32_t box_rows,
              int kind);

// The descriptors of a launch's matrices (codes: 128-byte boxes; scales and biases: boxes of
// scale_box groups), boxes of 8 rows for swiglu's two matrices and 16 otherwise. False when a row of
// codes or scales does not start on 16 bytes (the copies' global strides), a pointer is off 16
// bytes or the driver refuses a map: the caller then takes another kernel.
template <typename T>
bool make_maps(const QgemvParams<T>& p, int bits, int group_size, uint32_t scale_box, TmaMaps* maps) {
  const int64_t groups = p.K / group_size;
  if ((groups * int64_t(sizeof(T))) % 16 != 0 || (p.K * bits / 8) % 16 != 0) return false;
  const uint32_t box_rows = p.swiglu ? 8 : 16;
  *maps = TmaMaps{};
  const int count = p.swiglu ? 2 : p.count;
  for (int i = 0; i < count; ++i) {
    const uint32_t* wq = i == 0 ? p.wq : p.wqs[i];
    const T* sc = i == 0 ? p.scales : p.scaless[i];
    const T* bi = i == 0 ? p.biases : p.biasess[i];
    const int64_t N = p.swiglu || i == 0 ? p.N : p.Ns[i];
    if (reinterpret_cast<uintptr_t>(sc) % 16 != 0 || reinterpret_cast<uintptr_t>(bi) % 16 != 0 ||
        reinterpret_cast<uintptr_t>(wq) % 16 != 0)
      return false;
    if (!make_map(&maps->codes[i], wq, uint64_t(p.K * bits / 8), uint64_t(N), 128, box_rows, 0) ||
        !make_map(&maps->scales[i], sc, uint64_t(groups), uint64_t(N), scale_box, box_rows, 1) ||
        !make_map(&maps->biases[i], bi, uint64_t(groups), uint64_t(N), scale_box, box_rows, 1))
      return false;
  }
  return true;
}

}  // namespace lmtune::qgemv
