// The quant front end: mode names and parameters, the shape/dtype checks of a quantized weight,
// and quantize / dequantize dispatching to the mode's kernels (affine.cpp, fp.cpp).
#include "quant/quant.h"

#include <algorithm>
#include <thread>
#include <vector>

#include "core/error.h"
#include "quant/quant_impl.h"

namespace lmtune::quant {

namespace {

// "(7, 32)" for a shape with its last dimension replaced.
Shape with_last(Shape s, int64_t last) {
  s.back() = last;
  return s;
}

}  // namespace

void validate(const QuantizedWeight& q, int64_t in_features, const std::string& name) {
  const QuantParams& p = q.params;
  check_params(p, in_features, name);
  LMT_CHECK(in_features > 0, "[", name, "] the input dimension must be positive, got ", in_features);
  const std::string mode = mode_name(p.mode);
  const std::string wname = name + ".weight", sname = name + ".scales", bname = name + ".biases";

  LMT_CHECK(q.wq.defined(), "[quant] ", wname, " is missing");
  LMT_CHECK(q.wq.dtype() == DType::u32, "[quant] ", wname, " must be u32 (packed ", mode, " codes), got ",
            q.wq.describe());
  LMT_CHECK(q.wq.ndim() >= 2, "[quant] ", wname, " must have at least 2 dimensions, got ", q.wq.describe());
  const int64_t words = in_features * p.bits / 32;
  LMT_CHECK(q.wq.dim(-1) == words, "[quant] ", wname, " is ", shape_str(q.wq.shape()), " but ", in_features,
            " inputs at ", p.bits, " bits pack into ", words, " u32 words a row: expected ",
            shape_str(with_last(q.wq.shape(), words)));

  const Shape sshape = with_last(q.wq.shape(), in_features / p.group_size);
  LMT_CHECK(q.scales.defined(), "[quant] ", sname, " is missing");
  LMT_CHECK(q.scales.shape() == sshape, "[quant] ", sname, " is ", shape_str(q.scales.shape()), " but expected ",
            shape_str(sshape), " (one per group of ", p.group_size, " of the ", in_features, " inputs of each row of ",
            wname, " ", shape_str(q.wq.shape()), ")");
  if (p.mode == Mode::affine) {
    const DType st = q.scales.dtype();
    LMT_CHECK(st == DType::f32 || st == DType::bf16 || st == DType::f16, "[quant] ", sname,
              " must be f32, bf16 or f16 for affine, got ", q.scales.describe());
    LMT_CHECK(q.biases.defined(), "[quant] ", bname, " is missing (affine quantization has biases)");
    LMT_CHECK(q.biases.shape() == sshape && q.biases.dtype() == st, "[quant] ", bname, " is ", q.biases.describe(),
              " but must match ", sname, " ", q.scales.describe());
  } else {
    LMT_CHECK(q.scales.dtype() == DType::u8, "[quant] ", sname, " must be u8 for ", mode, ", got ",
              q.scales.describe());
    LMT_CHECK(!q.biases.defined(), "[quant] ", bname, " is present but ", mode, " quantization has no biases");
  }
}

QuantizedWeight quantize(const Tensor& w, const QuantParams& p) {
  LMT_CHECK(w.defined(), "[quantize] the weight is undefined");
  LMT_CHECK(!w.is_cuda(), "[quantize] runs on the CPU, got ", w.describe());
  LMT_CHECK(is_float(w.dtype()), "[quantize] needs a float weight (f32, bf16, f16), got ", w.describe());
  LMT_CHECK(w.ndim() >= 2, "[quantize] needs a weight with at least 2 dimensions, got ", w.describe());
  const int64_t in = w.dim(-1);
  check_params(p, in, "quantize");
  LMT_CHECK(in > 0, "[quantize] the input dimension must be positive, got ", w.describe());

  QuantizedWeight q;
  q.params = p;
  q.wq = Tensor::empty(with_last(w.shape(), in * p.bits / 32), DType::u32);
  const Shape sshape = with_last(w.shape(), in / p.group_size);
  if (p.mode == Mode::affine) {
    q.scales = Tensor::empty(sshape, w.dtype());
    q.biases = Tensor::empty(sshape, w.dtype());
    detail::affine_quantize(w, p, q);
  } else {
    q.scales = Tensor::empty(sshape, DType::u8);
    detail::fp_quantize(w, p, q);
  }
  return q;
}

Tensor dequantize(const QuantizedWeight& q, DType out) {
  const QuantParams& p = q.params;
  check_params(p, 0, "dequantize");
  LMT_CHECK(q.wq.defined() && q.wq.ndim() >= 2, "[dequantize] the packed weight must have at least 2 dimensions");
  LMT_CHECK(q.wq.dim(-1) * 32 % p.bits == 0, "[dequantize] ", shape_str(q.wq.shape()),
            " u32 words a row do not hold whole ", p.bits, "-bit codes");
  validate(q, q.in_features(), "dequantize");
  LMT_CHECK(!q.wq.is_cuda() && !q.scales.is_cuda() && !(q.biases.defined() && q.biases.is_cuda()),
            "[dequantize] runs on the CPU, got ", q.wq.describe());
  LMT_CHECK(out == DType::f32 || out == DType::bf16 || out == DType::f16,
            "[dequantize] the output dtype must be f32, bf16 or f16, got ", dtype_name(out));
  Tensor w = Tensor::empty(with_last(q.wq.shape(), q.in_features()), out);
  if (p.mode == Mode::affine)
    detail::affine_dequantize(q, w);
  else
    detail::fp_dequantize(q, w);
  return w;
}

namespace detail {

void for_row_slices(int64_t rows, int64_t cols, const std::function<void(int64_t, int64_t)>& fn) {
  // About 64k elements a thread at least; a 4096 x 4096 weight uses every core.
  const int64_t hw = std::max(1u, std::thread::hardware_concurrency());
  const int64_t n = std::clamp<int64_t>(rows * cols / (1 << 16), 1, std::min(hw, std::max<int64_t>(rows, 1)));
  if (n == 1) {
    fn(0, rows);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(size_t(n));
  for (int64_t t = 0; t < n; ++t) pool.emplace_back(fn, rows * t / n, rows * (t + 1) / n);
  for (std::thread& th : pool) th.join();
}

}  // namespace detail

}  // namespace lmtune::quant
