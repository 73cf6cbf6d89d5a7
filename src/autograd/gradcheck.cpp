#include "autograd/gradcheck.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "autograd/functions.h"
#include "core/error.h"

namespace lmtune::ag {

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                          const std::vector<Tensor>& inputs, const GradcheckOptions& opt, std::vector<size_t> check) {
  if (check.empty())
    for (size_t i = 0; i < inputs.size(); ++i) check.push_back(i);
  std::vector<Tensor> work;
  for (const Tensor& t : inputs) work.push_back(ops::clone(t));

  Tensor out0;
  {
    NoGradGuard ng;
    out0 = fn(work);
  }
  Tensor r = ops::randn(out0.shape(), opt.seed, 1.f, out0.dtype(), out0.device());
  std::vector<float> rv = r.to_f32_vector();
  auto objective = [&]() {
    NoGradGuard ng;
    std::vector<float> y = ops::to(fn(work), Device::cpu, DType::f32).to_f32_vector();
    double s = 0;
    for (size_t i = 0; i < y.size(); ++i) s += double(y[i]) * rv[i];
    return s;
  };

  // Analytic gradients.
  std::vector<Tensor> leaves;
  for (size_t i = 0; i < work.size(); ++i) {
    bool want = std::find(check.begin(), check.end(), i) != check.end() && is_float(work[i].dtype());
    leaves.push_back(want ? param(work[i]) : work[i]);
  }
  Tensor out = fn(leaves);
  LMT_CHECK(requires_grad(out), "[gradcheck] output does not depend on the checked inputs");
  backward(out, r);

  GradcheckResult res;
  std::ostringstream rep;
  for (size_t idx : check) {
    if (!is_float(work[idx].dtype())) continue;
    Tensor g = grad(leaves[idx]);
    std::vector<float> ga = g.defined() ? ops::to(g, Device::cpu, DType::f32).to_f32_vector()
                                        : std::vector<float>(size_t(work[idx].numel()), 0.f);
    float* x = work[idx].data<float>();
    for (int64_t e = 0; e < work[idx].numel(); ++e) {
      float orig = x[e];
      x[e] = orig + opt.eps;
      double fp = objective();
      x[e] = orig - opt.eps;
      double fm = objective();
      x[e] = orig;
      double num = (fp - fm) / (2.0 * opt.eps);
      double err = std::fabs(num - ga[size_t(e)]);
      double rel = err / std::max(1e-12, std::fabs(num));
      res.max_abs_err = std::max(res.max_abs_err, err);
      if (err > opt.atol) res.max_rel_err = std::max(res.max_rel_err, rel);
      if (err > opt.atol + opt.rtol * std::fabs(num)) {
        if (res.ok) rep << "gradcheck mismatches (input, element: numeric vs analytic):\n";
        res.ok = false;
        rep << "  input " << idx << " [" << e << "]: " << num << " vs " << ga[size_t(e)] << "\n";
      }
    }
  }
  res.report = rep.str();
  return res;
}

}  // namespace lmtune::ag
