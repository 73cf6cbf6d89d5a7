// Op front end for MLX's affine quantization on the tensor's device (the KV cache's --kv-bits).
#include "core/error.h"
#include "ops/ops.h"

namespace lmtune::ops {

AffineQuantized quantize_affine(const Tensor& x, int bits, int group_size) {
  LMT_CHECK(bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8,
            "[quantize_affine] bits must be 2, 3, 4, 5, 6 or 8, got ", bits);
  LMT_CHECK(group_size == 32 || group_size == 64 || group_size == 128,
            "[quantize_affine] group_size must be 32, 64 or 128, got ", group_size);
  LMT_CHECK(x.defined() && x.ndim() == 2 && is_float(x.dtype()) && x.dim(1) % group_size == 0,
            "[quantize_affine] input must be a float (rows, in) with in a multiple of ", group_size, ", got ",
            x.defined() ? x.describe() : "none");
  const int64_t rows = x.dim(0), in = x.dim(1);
  AffineQuantized q;
  q.wq = empty({rows, in * bits / 32}, DType::u32, x.device());
  q.scales = empty({rows, in / group_size}, x.dtype(), x.device());
  q.biases = empty({rows, in / group_size}, x.dtype(), x.device());
  if (rows > 0 && in > 0)
    backend(x.device())
        .quantize_affine(x.raw(), static_cast<uint32_t*>(q.wq.raw()), q.scales.raw(), q.biases.raw(), rows, in, bits,
                         group_size, x.dtype());
  return q;
}

}  // namespace lmtune::ops
