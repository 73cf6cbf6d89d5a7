#include "train/perplexity.h"

#include <cmath>
#include <limits>
#include <random>

#include "autograd/linear_cross_entropy.h"
#include "autograd/tape.h"
#include "core/error.h"
#include "core/runtime_config.h"
#include "nn/linear.h"
#include "ops/ops.h"

namespace lmtune::train {

std::vector<size_t> numpy_permutation(size_t n, uint32_t seed) {
  std::vector<size_t> perm(n);
  for (size_t i = 0; i < n; ++i) perm[i] = i;
  std::mt19937 mt(seed);  // init_genrand(seed), as numpy's legacy seeding of an int
  for (size_t i = n; i-- > 1;) {
    // numpy's random_interval(max = i): the smallest all-ones mask covering max, 32-bit draws
    // masked until one is <= max.
    uint64_t mask = i;
    mask |= mask >> 1;
    mask |= mask >> 2;
    mask |= mask >> 4;
    mask |= mask >> 8;
    mask |= mask >> 16;
    mask |= mask >> 32;
    uint64_t j;
    do j = uint64_t(mt()) & mask;
    while (j > i);
    std::swap(perm[i], perm[size_t(j)]);
  }
  return perm;
}

std::vector<std::vector<int32_t>> perplexity_rows(const Dataset& ds, int64_t sequence_length, int64_t num_samples,
                                                  uint32_t seed) {
  LMT_CHECK(sequence_length >= 2, "--sequence-length must be at least 2 (got ", sequence_length, ")");
  std::vector<size_t> perm = numpy_permutation(ds.size(), seed);
  const uint64_t want =
      num_samples > 0 ? uint64_t(sequence_length) * uint64_t(num_samples) : std::numeric_limits<uint64_t>::max();
  std::vector<int32_t> data;
  for (size_t i = 0; i < perm.size() && data.size() < want; ++i) {
    const auto& t = ds.examples[perm[i]].tokens;
    data.insert(data.end(), t.begin(), t.end());
  }
  std::vector<std::vector<int32_t>> rows;
  const size_t L = size_t(sequence_length);
  for (size_t s = 0; s + L <= data.size(); s += L) {
    if (num_samples > 0 && int64_t(rows.size()) == num_samples) break;
    rows.emplace_back(data.begin() + int64_t(s), data.begin() + int64_t(s + L));
  }
  return rows;
}

PerplexityResult eval_perplexity(Model& model, const std::vector<std::vector<int32_t>>& rows, int64_t batch_size,
                                 const std::function<void(int64_t, int64_t)>& on_batch) {
  LMT_CHECK(batch_size >= 1, "--batch-size must be at least 1 (got ", batch_size, ")");
  LMT_CHECK(!rows.empty(), "[perplexity] no rows to evaluate");
  ag::NoGradGuard ng;
  const int64_t L = int64_t(rows[0].size()), T = L - 1, n_rows = int64_t(rows.size());
  const int64_t n_batches = (n_rows + batch_size - 1) / batch_size;
  std::vector<float> losses;
  losses.reserve(size_t(n_rows * T));
  for (int64_t bi = 0; bi < n_batches; ++bi) {
    const int64_t s = bi * batch_size, B = std::min(batch_size, n_rows - s);
    Tensor ids = ops::empty({B, T}, DType::i32, Device::cpu);
    Tensor tgt = ops::empty({B * T}, DType::i32, Device::cpu);
    for (int64_t r = 0; r < B; ++r) {
      const auto& row = rows[size_t(s + r)];
      for (int64_t j = 0; j < T; ++j) {
        ids.data<int32_t>()[r * T + j] = row[size_t(j)];
        tgt.data<int32_t>()[r * T + j] = row[size_t(j + 1)];
      }
    }
    Tensor hidden;
    nn::Linear head;
    if (runtime_config().fused_xent && model.forward_hidden(ids, hidden, head)) {
      // The head in row chunks (as the training loss): the (B * T, n_vocab) logits are never whole
      // (a 152k vocabulary at batch 8 x 2,048 would be 10 GB of them in f32).
      const Tensor flat = hidden.reshape({B * T, hidden.dim(-1)});
      const Tensor t = ops::to(tgt, flat.device());
      const int64_t step = runtime_config().xent_chunk_rows > 0
                               ? runtime_config().xent_chunk_rows
                               : ag::default_xent_chunk_rows(model.config().n_vocab, flat.dtype());
      for (int64_t r0 = 0; r0 < B * T; r0 += step) {
        const int64_t r1 = std::min(B * T, r0 + step);
        const Tensor logits = head.forward(flat.slice_rows(r0, r1));
        const Tensor l = ops::to(ops::cross_entropy(logits, t.slice_rows(r0, r1)).loss, Device::cpu);
        losses.insert(losses.end(), l.data<float>(), l.data<float>() + (r1 - r0));
      }
    } else {
      Tensor logits = model.forward(ids);  // (B, T, V)
      Tensor flat = logits.reshape({B * T, model.config().n_vocab});
      Tensor l = ops::to(ops::cross_entropy(flat, ops::to(tgt, flat.device())).loss, Device::cpu);
      const float* p = l.data<float>();
      losses.insert(losses.end(), p, p + B * T);
    }
    if (on_batch) on_batch(bi + 1, n_batches);
  }
  PerplexityResult r;
  r.n_tokens = int64_t(losses.size());
  double sum = 0;
  for (float x : losses) sum += x;
  r.mean_loss = sum / double(r.n_tokens);
  double ss = 0;
  for (float x : losses) ss += (x - r.mean_loss) * (x - r.mean_loss);
  const double sd = r.n_tokens > 1 ? std::sqrt(ss / double(r.n_tokens - 1)) : std::nan("");
  r.ppl = std::exp(r.mean_loss);
  r.se_ppl = r.ppl * sd / std::sqrt(double(r.n_tokens));
  return r;
}

}  // namespace lmtune::train
