// quantized_linear_group: decoding's products that share x, in one launch where the backend can.
#include "core/error.h"
#include "ops/ops.h"

namespace lmtune::ops {

std::vector<Tensor> quantized_linear_group(const Tensor& x, const std::vector<QuantizedWeight>& ws,
                                           const QuantFormat& f) {
  LMT_CHECK(!ws.empty() && ws.size() <= 3, "[quantized_linear_group] takes 1 to 3 weights, got ", ws.size());
  const int64_t K = x.dim(-1), M = x.numel() / (K ? K : 1);
  std::vector<Tensor> out;
  std::vector<const uint32_t*> wp;
  std::vector<const void*> sp, bp;
  std::vector<void*> yp;
  std::vector<int64_t> ns;
  // The grouped kernel is affine's; the fp modes run their products one by one.
  bool fits = M >= 1 && M <= 8 && f.mode == QuantMode::affine;
  const int bits = f.bits, group_size = f.group_size;
  for (const QuantizedWeight& w : ws) {
    check_quantized(*w.wq, *w.scales, *w.biases, f, "quantized_linear_group");
    fits = fits && w.wq->dim(1) * 32 / bits == K && w.scales->dtype() == x.dtype() && w.wq->device() == x.device();
    if (!fits) break;
    Shape os = x.shape();
    os.back() = w.wq->dim(0);
    out.push_back(empty(os, x.dtype(), x.device()));
    wp.push_back(static_cast<const uint32_t*>(w.wq->raw()));
    sp.push_back(w.scales->raw());
    bp.push_back(w.biases->raw());
    yp.push_back(out.back().raw());
    ns.push_back(w.wq->dim(0));
  }
  if (fits && backend(x.device())
                  .quantized_gemv_group(x.raw(), wp.data(), sp.data(), bp.data(), yp.data(), ns.data(), int(ws.size()),
                                        M, K, bits, group_size, x.dtype()))
    return out;
  out.clear();
  for (const QuantizedWeight& w : ws) out.push_back(quantized_linear(x, *w.wq, *w.scales, *w.biases, f));
  return out;
}

}  // namespace lmtune::ops
