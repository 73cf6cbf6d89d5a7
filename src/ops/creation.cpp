// Tensor creation, device moves, casts and host-side random fills.
#include <cmath>
#include <cstring>
#include <random>

#include "core/error.h"
#include "ops/ops.h"

namespace lmtune::ops {

Tensor empty(const Shape& shape, DType dt, Device d) {
  backend(d);  // the CUDA backend registers its memory on first use
  return Tensor::empty(shape, dt, d);
}

Tensor zeros(const Shape& shape, DType dt, Device d) { return full(shape, 0.f, dt, d); }

Tensor full(const Shape& shape, float value, DType dt, Device d) {
  Tensor t = empty(shape, dt, d);
  if (t.numel() > 0) {
    if (value == 0.f && d == Device::cpu) {
      std::memset(t.raw(), 0, t.nbytes());
    } else {
      backend(d).fill(t.raw(), dt, t.numel(), value);
    }
  }
  return t;
}

void copy_into(Tensor& dst, const Tensor& src) {
  LMT_CHECK(dst.shape() == src.shape() && dst.dtype() == src.dtype(), "[copy_into] ", src.describe(), " into ",
            dst.describe());
  size_t n = src.nbytes();
  if (n == 0) return;
  if (src.device() == Device::cpu && dst.device() == Device::cpu) {
    std::memmove(dst.raw(), src.raw(), n);
  } else if (src.device() == Device::cpu) {
    backend(dst.device()).copy_h2d(dst.raw(), src.raw(), n);
  } else if (dst.device() == Device::cpu) {
    backend(src.device()).copy_d2h(dst.raw(), src.raw(), n);
  } else {
    backend(src.device()).copy_d2d(dst.raw(), src.raw(), n);
  }
}

void copy_rows_into(Tensor& dst, int64_t dst_row, const Tensor& src) {
  LMT_CHECK(dst.ndim() >= 1 && src.ndim() == dst.ndim() && dst.dtype() == src.dtype() && dst.device() == src.device(),
            "[copy_rows_into] ", src.describe(), " into ", dst.describe());
  for (int i = 1; i < dst.ndim(); ++i)
    LMT_CHECK(dst.dim(i) == src.dim(i), "[copy_rows_into] row shape of ", src.describe(), " differs from ",
              dst.describe());
  LMT_CHECK(dst_row >= 0 && dst_row + src.dim(0) <= dst.dim(0), "[copy_rows_into] rows [", dst_row, ", ",
            dst_row + src.dim(0), ") out of range for ", dst.describe());
  if (src.numel() == 0) return;
  Tensor region = dst.slice_rows(dst_row, dst_row + src.dim(0));
  backend(dst.device()).copy_d2d(region.raw(), src.raw(), src.nbytes());
}

Tensor slice_last(const Tensor& x, int64_t begin, int64_t n) {
  LMT_CHECK(x.ndim() >= 1 && begin >= 0 && n >= 0 && begin + n <= x.dim(x.ndim() - 1), "[slice_last] columns [", begin,
            ", ", begin + n, ") of ", x.describe());
  const int64_t cols = x.dim(x.ndim() - 1), rows = cols ? x.numel() / cols : 0;
  Shape shape = x.shape();
  shape.back() = n;
  Tensor out = empty(shape, x.dtype(), x.device());
  const size_t es = dtype_size(x.dtype());
  backend(x.device())
      .copy_d2d_2d(out.raw(), size_t(n) * es, static_cast<const char*>(x.raw()) + size_t(begin) * es, size_t(cols) * es,
                   size_t(n) * es, size_t(rows));
  return out;
}

Tensor place_last(const Tensor& x, int64_t cols, int64_t begin) {
  LMT_CHECK(x.ndim() >= 1 && begin >= 0 && begin + x.dim(x.ndim() - 1) <= cols, "[place_last] ", x.describe(),
            " at column ", begin, " of ", cols);
  const int64_t n = x.dim(x.ndim() - 1), rows = n ? x.numel() / n : 0;
  Shape shape = x.shape();
  shape.back() = cols;
  Tensor out = zeros(shape, x.dtype(), x.device());
  const size_t es = dtype_size(x.dtype());
  backend(x.device())
      .copy_d2d_2d(static_cast<char*>(out.raw()) + size_t(begin) * es, size_t(cols) * es, x.raw(), size_t(n) * es,
                   size_t(n) * es, size_t(rows));
  return out;
}

Tensor to(const Tensor& x, Device d) {
  if (x.device() == d) return x;
  Tensor out = empty(x.shape(), x.dtype(), d);
  copy_into(out, x);
  return out;
}

Tensor clone(const Tensor& x) {
  Tensor out = empty(x.shape(), x.dtype(), x.device());
  copy_into(out, x);
  return out;
}

Tensor cast(const Tensor& x, DType dt) {
  if (x.dtype() == dt) return x;
  Tensor out = empty(x.shape(), dt, x.device());
  if (x.numel() > 0) backend(x.device()).cast(x.raw(), x.dtype(), out.raw(), dt, x.numel());
  return out;
}

Tensor to(const Tensor& x, Device d, DType dt) {
  // Cast where it is cheaper: on the CPU before an upload, on the device before a download.
  return d == Device::cpu ? to(cast(x, dt), d) : cast(to(x, d), dt);
}

namespace {
Tensor host_values(const Shape& shape, const std::vector<float>& v, DType dt, Device d) {
  return to(Tensor::from_f32(v, shape), d, dt);
}
}  // namespace

Tensor randn(const Shape& shape, uint64_t seed, float std, DType dt, Device d) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.f, std);
  std::vector<float> v(static_cast<size_t>(numel_of(shape)));
  for (float& x : v) x = dist(rng);
  return host_values(shape, v, dt, d);
}

Tensor uniform(const Shape& shape, uint64_t seed, float lo, float hi, DType dt, Device d) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(numel_of(shape)));
  for (float& x : v) x = dist(rng);
  return host_values(shape, v, dt, d);
}

float item(const Tensor& x) {
  LMT_CHECK(x.numel() == 1, "[item] tensor ", x.describe(), " has ", x.numel(), " elements");
  return to(x, Device::cpu, DType::f32).data<float>()[0];
}

}  // namespace lmtune::ops
