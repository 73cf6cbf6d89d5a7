// Gradient checkpointing: run a block without recording, keep only its inputs, and
// recompute it with recording during backward.
#pragma once
#include <functional>
#include <vector>

#include "autograd/tape.h"

namespace lmtune::ag {

using BlockFn = std::function<Tensor(const std::vector<Tensor>& inputs)>;

// Returns fn(inputs). Parameters that fn captures receive their gradients when the block
// is recomputed in backward; inputs receive theirs through the returned tensor. after_backward, when
// given, runs once the recomputed block's backward is done (its parameters' gradients complete).
Tensor checkpoint(const BlockFn& fn, const std::vector<Tensor>& inputs, std::function<void()> after_backward = {});

}  // namespace lmtune::ag
