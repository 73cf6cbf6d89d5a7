// Reverse-mode autograd: each differentiable result records a Node holding its backward
// rule; backward() walks the recorded graph in reverse topological order (the tape).
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace lmtune {

struct Node;

struct AutogradMeta {
  bool requires_grad = false;
  Tensor grad;                    // accumulated gradient of a leaf
  std::shared_ptr<Node> grad_fn;  // null for a leaf
  // A leaf's: called each time a backward has added its last part to grad (data parallel's sums
  // start then, overlapping the rest of backward: train/grad_buckets.h).
  std::function<void()> on_grad;
};

// A recorded op: given the gradient of its output, returns one gradient per input (an
// undefined Tensor where the input needs none).
struct Node {
  const char* name = "";
  std::vector<std::shared_ptr<AutogradMeta>> inputs;  // null where the input needs no gradient
  std::function<std::vector<Tensor>(const Tensor& dout)> backward;
};

namespace ag {

bool grad_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();

 private:
  bool prev_;
};
class EnableGradGuard {
 public:
  EnableGradGuard();
  ~EnableGradGuard();

 private:
  bool prev_;
};

// Marks a tensor as a trainable leaf (returns it, sharing storage).
Tensor param(const Tensor& t);
bool requires_grad(const Tensor& t);
const Tensor& grad(const Tensor& leaf);  // undefined until a backward reaches it
void zero_grad(const Tensor& leaf);

// Attaches a Node to out when gradients are on and an input requires them.
Tensor record(const char* name, Tensor out, const std::vector<Tensor>& inputs,
              std::function<std::vector<Tensor>(const Tensor& dout)> backward);

// Back-propagates from root with the seed gradient (ones for a one-element root when
// omitted); leaf gradients accumulate into their grad. The graph is consumed: each rule frees
// its saved tensors once run, and a second backward through it throws.
void backward(const Tensor& root, const Tensor& seed = {});

}  // namespace ag
}  // namespace lmtune
