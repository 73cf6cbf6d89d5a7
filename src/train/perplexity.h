// mlx_lm.perplexity's data selection and evaluation: the examples of a dataset in a seeded
// permutation (numpy's legacy np.random.permutation), their tokens concatenated and cut into
// rows of sequence_length, then the mean next-token cross-entropy over every row's L - 1 targets.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "models/model.h"
#include "train/dataset.h"

namespace lmtune::train {

// np.random.seed(seed); np.random.permutation(n): MT19937 seeded with init_genrand(seed), then a
// Fisher-Yates shuffle of 0..n-1 from the top, each index drawn by numpy's masked rejection.
std::vector<size_t> numpy_permutation(size_t n, uint32_t seed);

// mlx_lm.perplexity.load_data: examples in the permuted order, tokens appended until there are
// sequence_length * num_samples of them (num_samples <= 0: every example), cut into whole rows of
// sequence_length, at most num_samples rows. mlx-lm fails with an IndexError when the data has
// fewer tokens than asked; here every example is used and fewer rows result.
std::vector<std::vector<int32_t>> perplexity_rows(const Dataset& ds, int64_t sequence_length, int64_t num_samples,
                                                  uint32_t seed);

struct PerplexityResult {
  double mean_loss = 0, ppl = 0, se_ppl = 0;  // se_ppl = ppl * std(losses, ddof=1) / sqrt(n)
  int64_t n_tokens = 0;                       // losses averaged: rows * (L - 1)
};

// eval_ppl: rows in batches of batch_size, model.forward(row[:-1]) and the f32 cross-entropy of
// each position against row[1:] (ops::cross_entropy, as Model::loss). on_batch(i, n) is called
// after each batch.
PerplexityResult eval_perplexity(Model& model, const std::vector<std::vector<int32_t>>& rows, int64_t batch_size,
                                 const std::function<void(int64_t, int64_t)>& on_batch = {});

}  // namespace lmtune::train
