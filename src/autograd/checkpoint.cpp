#include "autograd/checkpoint.h"

namespace lmtune::ag {

Tensor checkpoint(const BlockFn& fn, const std::vector<Tensor>& inputs, std::function<void()> after_backward) {
  if (!grad_enabled()) return fn(inputs);
  Tensor out;
  {
    NoGradGuard no_grad;
    out = fn(inputs);
  }
  std::vector<Tensor> saved;
  for (const Tensor& t : inputs) saved.push_back(t.detach());
  std::vector<bool> wants;
  for (const Tensor& t : inputs) wants.push_back(requires_grad(t));
  auto node_fn = [fn, saved, wants, after_backward](const Tensor& dout) {
    std::vector<Tensor> leaves;
    for (size_t i = 0; i < saved.size(); ++i) leaves.push_back(wants[i] ? param(saved[i]) : saved[i]);
    EnableGradGuard enable;
    Tensor re = fn(leaves);
    std::vector<Tensor> grads(saved.size());
    if (requires_grad(re)) {
      backward(re, dout);
      for (size_t i = 0; i < leaves.size(); ++i)
        if (wants[i]) grads[i] = grad(leaves[i]);
    }
    if (after_backward) after_backward();
    return grads;
  };
  // Attached even when no input needs a gradient: the parameters inside fn may.
  auto node = std::make_shared<Node>();
  node->name = "checkpoint";
  for (const Tensor& t : inputs) node->inputs.push_back(requires_grad(t) ? t.ag() : nullptr);
  node->backward = node_fn;
  auto m = std::make_shared<AutogradMeta>();
  m->requires_grad = true;
  m->grad_fn = node;
  out.set_ag(m);
  return out;
}

}  // namespace lmtune::ag
