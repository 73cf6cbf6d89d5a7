// Byte equality of two tensors (either device), for tests that hold lmtune to a reference bit
// for bit; on failure: how many elements differ and the first one's row, column and both values.
#pragma once
#include <gtest/gtest.h>

#include <cstring>
#include <sstream>
#include <string>

#include "core/fp_formats.h"
#include "core/tensor.h"
#include "ops/ops.h"

inline ::testing::AssertionResult same_bits(const lmtune::Tensor& got, const lmtune::Tensor& want,
                                            const std::string& what = "", const std::string& ref_name = "want") {
  using namespace lmtune;
  const std::string pre = what.empty() ? "" : what + ": ";
  if (got.dtype() != want.dtype() || got.shape() != want.shape())
    return ::testing::AssertionFailure() << pre << "got " << got.describe() << ", " << ref_name << " "
                                         << want.describe();
  const Tensor ga = got.device() == Device::cpu ? got : ops::to(got, Device::cpu);
  const Tensor wa = want.device() == Device::cpu ? want : ops::to(want, Device::cpu);
  const size_t es = dtype_size(ga.dtype());
  const auto* a = static_cast<const unsigned char*>(ga.raw());
  const auto* b = static_cast<const unsigned char*>(wa.raw());
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < ga.numel(); ++i)
    if (std::memcmp(a + i * es, b + i * es, es) != 0) {
      if (first < 0) first = i;
      ++bad;
    }
  if (bad == 0) return ::testing::AssertionSuccess();
  auto show = [&](const unsigned char* p) {
    uint32_t v = 0;
    std::memcpy(&v, p + first * es, es);
    std::ostringstream os;
    os << "0x" << std::hex << v;
    if (is_float(ga.dtype())) {
      const float f = ga.dtype() == DType::f32    ? *reinterpret_cast<const float*>(p + first * es)
                      : ga.dtype() == DType::bf16 ? bf16_to_f32(uint16_t(v))
                                                  : f16_to_f32(uint16_t(v));
      os << " (" << f << ")";
    }
    return os.str();
  };
  const int64_t cols = ga.ndim() > 0 ? ga.dim(-1) : 1;
  return ::testing::AssertionFailure() << pre << bad << " of " << ga.numel() << " elements differ; first at row "
                                       << first / cols << " col " << first % cols << ": got " << show(a) << ", "
                                       << ref_name << " " << show(b);
}
