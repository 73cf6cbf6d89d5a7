#include "nn/embedding.h"

namespace lmtune::nn {

Tensor Embedding::forward(const Tensor& ids) const {
  Tensor rows = gather(ids);
  return scale == 1.f ? rows : ag::scale(rows, scale);
}

Tensor Embedding::gather(const Tensor& ids) const {
  if (!table.scales) return ag::embedding(*table.weight, ids);
  Tensor flat = ids.reshape({ids.numel()});
  Tensor wq = ops::embedding(*table.weight, flat), s = ops::embedding(*table.scales, flat),
         b = table.biases ? ops::embedding(*table.biases, flat) : Tensor();  // the ids' rows, packed
  Tensor rows = ops::dequantize(wq, s, b, table.format, table.dense_dtype, "embedding");
  Shape shape = ids.shape();
  shape.push_back(rows.dim(1));
  return rows.reshape(shape);
}

}  // namespace lmtune::nn
