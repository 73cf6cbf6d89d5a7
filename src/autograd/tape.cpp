#include "autograd/tape.h"

#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "ops/ops.h"

namespace lmtune::ag {

namespace {
thread_local bool g_grad_enabled = true;
}

bool grad_enabled() { return g_grad_enabled; }
NoGradGuard::NoGradGuard() : prev_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = prev_; }
EnableGradGuard::EnableGradGuard() : prev_(g_grad_enabled) { g_grad_enabled = true; }
EnableGradGuard::~EnableGradGuard() { g_grad_enabled = prev_; }

Tensor param(const Tensor& t) {
  Tensor p = t.detach();
  auto m = std::make_shared<AutogradMeta>();
  m->requires_grad = true;
  p.set_ag(m);
  return p;
}

bool requires_grad(const Tensor& t) { return t.ag() && t.ag()->requires_grad; }

const Tensor& grad(const Tensor& leaf) {
  LMT_CHECK(leaf.ag(), "[grad] tensor ", leaf.describe(), " does not require grad");
  return leaf.ag()->grad;
}

void zero_grad(const Tensor& leaf) {
  if (leaf.ag()) leaf.ag()->grad = Tensor();
}

Tensor record(const char* name, Tensor out, const std::vector<Tensor>& inputs,
              std::function<std::vector<Tensor>(const Tensor& dout)> backward) {
  if (!g_grad_enabled) return out;
  bool any = false;
  for (const Tensor& t : inputs) any = any || requires_grad(t);
  if (!any) return out;
  auto node = std::make_shared<Node>();
  node->name = name;
  for (const Tensor& t : inputs) node->inputs.push_back(requires_grad(t) ? t.ag() : nullptr);
  node->backward = std::move(backward);
  auto m = std::make_shared<AutogradMeta>();
  m->requires_grad = true;
  m->grad_fn = std::move(node);
  out.set_ag(m);
  return out;
}

namespace {
void accumulate(Tensor& slot, const Tensor& g) {
  if (!slot.defined()) {
    slot = g;
  } else {
    // Never modify a gradient in place: another slot may share its storage.
    slot = ops::axpby(slot, g, 1.f, 1.f);
  }
}
}  // namespace

void backward(const Tensor& root, const Tensor& seed) {
  LMT_CHECK(requires_grad(root), "[backward] root ", root.describe(), " does not require grad");
  Tensor s = seed;
  if (!s.defined()) {
    LMT_CHECK(root.numel() == 1, "[backward] a seed gradient is needed for non-scalar root ", root.describe());
    s = ops::full(root.shape(), 1.f, root.dtype(), root.device());
  }
  LMT_CHECK(s.shape() == root.shape(), "[backward] seed ", s.describe(), " for root ", root.describe());
  // Topological order by depth-first search from the root (iterative: graphs can be deep).
  std::vector<AutogradMeta*> order;
  std::unordered_set<AutogradMeta*> seen;
  std::vector<std::pair<AutogradMeta*, size_t>> stack{{root.ag().get(), 0}};
  seen.insert(root.ag().get());
  while (!stack.empty()) {
    auto& [m, i] = stack.back();
    if (m->grad_fn && i < m->grad_fn->inputs.size()) {
      AutogradMeta* c = m->grad_fn->inputs[i++].get();
      if (c && seen.insert(c).second) stack.push_back({c, 0});
    } else {
      order.push_back(m);
      stack.pop_back();
    }
  }
  std::unordered_map<AutogradMeta*, Tensor> pending;
  pending[root.ag().get()] = s;
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    AutogradMeta* m = *it;
    auto p = pending.find(m);
    if (p == pending.end()) continue;
    Tensor g = std::move(p->second);
    pending.erase(p);
    if (!m->grad_fn) {
      accumulate(m->grad, g);
      if (m->on_grad) m->on_grad();
      continue;
    }
    Node& node = *m->grad_fn;
    LMT_CHECK(node.backward, "[backward] the graph through ", node.name,
              " was consumed by an earlier backward (its saved tensors are freed as backward uses them)");
    std::vector<Tensor> grads = node.backward(g);
    // The rule's saved tensors (activations, masks, statistics) go as soon as it has run, so that
    // backward's peak is not every activation of the forward plus its own temporaries.
    node.backward = nullptr;
    LMT_CHECK(grads.size() == node.inputs.size(), "[backward] ", node.name, " returned ", grads.size(),
              " gradients for ", node.inputs.size(), " inputs");
    for (size_t i = 0; i < grads.size(); ++i) {
      if (!node.inputs[i] || !grads[i].defined()) continue;
      accumulate(pending[node.inputs[i].get()], grads[i]);
    }
  }
}

}  // namespace lmtune::ag
