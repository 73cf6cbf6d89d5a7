// Elementwise ops and reductions.
#include "core/error.h"
#include "ops/ops.h"

namespace lmtune::ops {

namespace {
void same_device(const Tensor& a, const Tensor& b, const char* op) {
  LMT_CHECK(a.device() == b.device(), "[", op, "] tensors on different devices: ", a.describe(), " and ", b.describe());
  LMT_CHECK(a.dtype() == b.dtype(), "[", op, "] dtype mismatch: ", a.describe(), " and ", b.describe());
}

bool trailing_of(const Shape& big, const Shape& small) {
  if (small.size() > big.size()) return false;
  for (size_t i = 0; i < small.size(); ++i)
    if (small[small.size() - 1 - i] != big[big.size() - 1 - i]) return false;
  return true;
}
}  // namespace

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  same_device(a, b, "binary");
  // Drop leading 1s of b so that (1, 1, C) broadcasts like (C).
  Shape bs = b.shape();
  while (bs.size() > 1 && bs.front() == 1) bs.erase(bs.begin());
  LMT_CHECK(trailing_of(a.shape(), bs) || b.numel() == 1, "[binary] shape ", shape_str(b.shape()),
            " does not broadcast to ", shape_str(a.shape()));
  Tensor out = empty(a.shape(), a.dtype(), a.device());
  if (a.numel() > 0) backend(a.device()).binary(op, a.raw(), b.raw(), out.raw(), a.numel(), b.numel(), a.dtype());
  return out;
}

Tensor add(const Tensor& a, const Tensor& b) { return binary(BinaryOp::add, a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary(BinaryOp::sub, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary(BinaryOp::mul, a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return binary(BinaryOp::div, a, b); }

void add_(Tensor& a, const Tensor& b) {
  same_device(a, b, "add_");
  LMT_CHECK(a.shape() == b.shape(), "[add_] shape mismatch ", shape_str(a.shape()), " += ", shape_str(b.shape()));
  if (a.numel() > 0) backend(a.device()).axpby(a.raw(), b.raw(), a.raw(), a.numel(), 1.f, 1.f, a.dtype());
}

Tensor axpby(const Tensor& a, const Tensor& b, float alpha, float beta) {
  same_device(a, b, "axpby");
  LMT_CHECK(a.shape() == b.shape(), "[axpby] shape mismatch ", shape_str(a.shape()), " and ", shape_str(b.shape()));
  Tensor out = empty(a.shape(), a.dtype(), a.device());
  if (a.numel() > 0) backend(a.device()).axpby(a.raw(), b.raw(), out.raw(), a.numel(), alpha, beta, a.dtype());
  return out;
}

Tensor unary(UnaryOp op, const Tensor& x, float param) {
  Tensor out = empty(x.shape(), x.dtype(), x.device());
  if (x.numel() > 0) backend(x.device()).unary(op, x.raw(), out.raw(), x.numel(), param, x.dtype());
  return out;
}

Tensor scale(const Tensor& x, float s) { return unary(UnaryOp::scale, x, s); }

Tensor unary_backward(UnaryOp op, const Tensor& x, const Tensor& dy) {
  same_device(x, dy, "unary_backward");
  LMT_CHECK(x.shape() == dy.shape(), "[unary_backward] shape mismatch");
  Tensor dx = empty(x.shape(), x.dtype(), x.device());
  if (x.numel() > 0) backend(x.device()).unary_backward(op, x.raw(), dy.raw(), dx.raw(), x.numel(), x.dtype());
  return dx;
}

Tensor sum_axis(const Tensor& x, int axis, DType out_dt) {
  int n = x.ndim();
  int ax = axis < 0 ? axis + n : axis;
  LMT_CHECK(ax >= 0 && ax < n, "[sum_axis] axis ", axis, " out of range for ", shape_str(x.shape()));
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < ax; ++i) outer *= x.shape()[i];
  for (int i = ax + 1; i < n; ++i) inner *= x.shape()[i];
  Shape os = x.shape();
  os.erase(os.begin() + ax);
  Tensor out = empty(os, out_dt, x.device());
  if (out.numel() > 0) {
    if (x.shape()[ax] == 0) return zeros(os, out_dt, x.device());
    backend(x.device()).reduce_sum(x.raw(), out.raw(), outer, x.shape()[ax], inner, x.dtype(), out_dt);
  }
  return out;
}

Tensor sum_to_shape(const Tensor& x, const Shape& trailing) {
  if (x.shape() == trailing) return x;
  int64_t inner = numel_of(trailing);
  LMT_CHECK(inner > 0 && x.numel() % inner == 0, "[sum_to_shape] ", shape_str(x.shape()), " to ", shape_str(trailing));
  Tensor flat = x.reshape({x.numel() / inner, inner});
  return sum_axis(flat, 0, x.dtype()).reshape(trailing);
}

Tensor sum_all(const Tensor& x) {
  return sum_axis(x.reshape({x.numel()}), 0, DType::f32);  // shape {}
}

}  // namespace lmtune::ops
