// The activations a gated MLP applies to its gate (a config field of the families that use them).
#pragma once

namespace lmtune::nn {

enum class Activation { silu, gelu_tanh };

}  // namespace lmtune::nn
