// The update rules of mlx/optimizers/optimizers.py. Adam and AdamW run the fused ops::adamw_
// and Muon composes ops (elementwise, GEMM), so both run on any device; SGD and Adafactor run on
// host copies of the f32 tensors (CUDA tensors make a round trip: adapters are small; a device
// kernel can replace it when full fine-tuning on a GPU needs it).
#include "train/optimizers.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <type_traits>

#include "autograd/tape.h"
#include "core/error.h"
#include "ops/ops.h"

namespace lmtune::train {

using json = nlohmann::json;

void Optimizer::update(const std::vector<std::pair<std::string, Tensor>>& params,
                       const std::map<std::string, Tensor>& grads) {
  double lr = lr_(step_);
  ++step_;
  for (const auto& [name, p] : params) {
    auto it = grads.find(name);
    if (it == grads.end() || !it->second.defined()) continue;
    LMT_CHECK(p.dtype() == DType::f32, "[optimizer] parameter ", name, " is ", p.describe(),
              "; trainable parameters must be f32");
    Tensor g = ops::to(it->second, p.device(), DType::f32);
    LMT_CHECK(g.shape() == p.shape(), "[optimizer] gradient ", g.describe(), " for parameter ", name, " ",
              p.describe());
    Tensor pp = p;
    apply(name, pp, g, lr, step_);
  }
}

void Optimizer::update(const std::vector<std::pair<std::string, Tensor>>& params) {
  std::map<std::string, Tensor> grads;
  for (const auto& [name, p] : params)
    if (p.ag()) grads[name] = p.ag()->grad;
  update(params, grads);
}

Tensor& Optimizer::slot(const std::string& name, const std::string& key, const Shape& shape, Device d) {
  Tensor& t = state_[name][key];
  if (!t.defined()) t = ops::zeros(shape, DType::f32, d);
  return t;
}

std::map<std::string, Tensor> Optimizer::state() const {
  std::map<std::string, Tensor> out;
  for (const auto& [name, slots] : state_)
    for (const auto& [key, t] : slots) out[name + "." + key] = t;
  return out;
}

void Optimizer::set_state(const std::map<std::string, Tensor>& state, int64_t step) {
  state_.clear();
  for (const auto& [full, t] : state) {
    size_t dot = full.rfind('.');
    LMT_CHECK(dot != std::string::npos, "[optimizer] state name '", full, "' has no slot");
    state_[full.substr(0, dot)][full.substr(dot + 1)] = t;
  }
  step_ = step;
}

namespace {

// Host view of an f32 tensor that writes back on commit when it lives on a device.
struct Host {
  Tensor dev, cpu;
  explicit Host(const Tensor& t) : dev(t), cpu(t.device() == Device::cpu ? t : ops::to(t, Device::cpu)) {}
  float* data() { return cpu.data<float>(); }
  void commit() {
    if (dev.device() != Device::cpu) ops::copy_into(dev, cpu);
  }
};

void check_keys(const char* opt, const json& cfg, std::set<std::string> allowed) {
  LMT_CHECK(cfg.is_null() || cfg.is_object(), "[", opt, "] optimizer_config must be a mapping, got ", cfg.dump());
  if (cfg.is_null()) return;
  for (const auto& [k, v] : cfg.items())
    LMT_CHECK(allowed.count(k), "[", opt, "] unknown optimizer_config key '", k, "'");
}

// A keyword's value, or an error naming the keyword (not nlohmann's bare "type must be number").
template <typename T>
T get(const json& cfg, const char* key, T dflt) {
  if (!cfg.is_object() || !cfg.contains(key) || cfg[key].is_null()) return dflt;
  const json& v = cfg[key];
  const bool ok = std::is_same_v<T, bool> ? v.is_boolean()
                  : std::is_arithmetic_v<T>
                      ? v.is_number()
                      : v.is_array() && std::all_of(v.begin(), v.end(), [](const json& x) { return x.is_number(); });
  LMT_CHECK(ok, "key '", key, "' must be ",
            std::is_same_v<T, bool>   ? "true or false"
            : std::is_arithmetic_v<T> ? "a number"
                                      : "a list of numbers",
            ", got ", v.dump());
  return v.get<T>();
}

class Adam : public Optimizer {
 public:
  Adam(Schedule lr, const json& cfg, bool adamw) : Optimizer(std::move(lr)) {
    const char* n = adamw ? "adamw" : "adam";
    if (adamw)
      check_keys(n, cfg, {"betas", "eps", "weight_decay", "bias_correction"});
    else
      check_keys(n, cfg, {"betas", "eps", "bias_correction"});
    std::vector<double> betas = get(cfg, "betas", std::vector<double>{0.9, 0.999});
    LMT_CHECK(betas.size() == 2, "[", n, "] betas needs two values");
    for (size_t i = 0; i < 2; ++i)
      LMT_CHECK(betas[i] >= 0.0 && betas[i] < 1.0, "[", n, "] beta", i + 1, " should be in [0, 1), ", betas[i],
                " was provided instead");
    b1_ = betas[0];
    b2_ = betas[1];
    eps_ = get(cfg, "eps", 1e-8);
    LMT_CHECK(eps_ >= 0.0, "[", n, "] epsilon should be >= 0, ", eps_, " was provided instead");
    bias_correction_ = get(cfg, "bias_correction", false);
    wd_ = adamw ? get(cfg, "weight_decay", 0.01) : 0.0;
    adamw_ = adamw;
  }
  const char* name() const override { return adamw_ ? "adamw" : "adam"; }

 protected:
  void apply(const std::string& name, Tensor& p, const Tensor& g, double lr, int64_t t) override {
    Tensor& m = slot(name, "m", p.shape(), p.device());
    Tensor& v = slot(name, "v", p.shape(), p.device());
    float bc1 = bias_correction_ ? float(1.0 - std::pow(b1_, double(t))) : 1.f;
    float bc2 = bias_correction_ ? float(1.0 - std::pow(b2_, double(t))) : 1.f;
    ops::adamw_(p, g, m, v, float(lr), float(b1_), float(b2_), float(eps_), float(wd_), bc1, bc2);
  }

 private:
  double b1_, b2_, eps_, wd_;
  bool bias_correction_, adamw_;
};

class Sgd : public Optimizer {
 public:
  Sgd(Schedule lr, const json& cfg) : Optimizer(std::move(lr)) {
    check_keys("sgd", cfg, {"momentum", "weight_decay", "dampening", "nesterov"});
    momentum_ = get(cfg, "momentum", 0.0);
    wd_ = get(cfg, "weight_decay", 0.0);
    dampening_ = get(cfg, "dampening", 0.0);
    nesterov_ = get(cfg, "nesterov", false);
    LMT_CHECK(!nesterov_ || (momentum_ > 0 && dampening_ == 0),
              "[sgd] Nesterov momentum requires a momentum and zero dampening.");
  }
  const char* name() const override { return "sgd"; }

 protected:
  void apply(const std::string& name, Tensor& p, const Tensor& g, double lr, int64_t) override {
    Host hp(p), hg(g);
    float* pd = hp.data();
    const float* gd = hg.data();
    int64_t n = p.numel();
    float flr = float(lr), mom = float(momentum_), wd = float(wd_), damp = float(dampening_);
    if (momentum_ <= 0) {
      for (int64_t i = 0; i < n; ++i) pd[i] -= flr * (wd != 0 ? gd[i] + wd * pd[i] : gd[i]);
    } else {
      Host hv(slot(name, "v", p.shape(), p.device()));
      float* vd = hv.data();
      for (int64_t i = 0; i < n; ++i) {
        float gi = wd != 0 ? gd[i] + wd * pd[i] : gd[i];
        float v = mom * vd[i];
        v += damp > 0 ? (1 - damp) * gi : gi;
        vd[i] = v;
        pd[i] -= flr * (nesterov_ ? gi + mom * v : v);
      }
      hv.commit();
    }
    hp.commit();
  }

 private:
  double momentum_, wd_, dampening_;
  bool nesterov_;
};

class Adafactor : public Optimizer {
 public:
  Adafactor(Schedule lr, const json& cfg, bool has_lr) : Optimizer(std::move(lr)), has_lr_(has_lr) {
    check_keys("adafactor", cfg,
               {"eps", "clip_threshold", "decay_rate", "beta_1", "weight_decay", "scale_parameter", "relative_step",
                "warmup_init"});
    std::vector<double> eps = get(cfg, "eps", std::vector<double>{1e-30, 1e-3});
    LMT_CHECK(eps.size() == 2, "[adafactor] eps needs two values");
    eps1_ = eps[0];
    eps2_ = eps[1];
    clip_ = get(cfg, "clip_threshold", 1.0);
    decay_rate_ = get(cfg, "decay_rate", -0.8);
    use_beta1_ = cfg.is_object() && cfg.contains("beta_1") && !cfg["beta_1"].is_null();
    beta1_ = get(cfg, "beta_1", 0.0);
    wd_ = get(cfg, "weight_decay", 0.0);
    scale_parameter_ = get(cfg, "scale_parameter", true);
    relative_step_ = get(cfg, "relative_step", true);
    warmup_init_ = get(cfg, "warmup_init", false);
    LMT_CHECK(relative_step_ || has_lr_, "[adafactor] relative_step false needs a learning rate");
  }
  const char* name() const override { return "adafactor"; }

 protected:
  void apply(const std::string& name, Tensor& p, const Tensor& g, double lr, int64_t t) override {
    Host hp(p), hg(g);
    float* pd = hp.data();
    const float* gd = hg.data();
    int64_t n = p.numel();
    auto rms = [](const float* x, int64_t k) {
      float s = 0;
      for (int64_t i = 0; i < k; ++i) s += x[i] * x[i];
      return std::sqrt(s / float(k));
    };
    float p_rms = rms(pd, n);
    float step = float(t);
    float rel = relative_step_ ? std::min(warmup_init_ ? 1e-6f * step : 1e-2f, 1.f / std::sqrt(step)) : float(lr);
    float lr_t = (scale_parameter_ ? std::max(float(eps2_), p_rms) : 1.f) * rel;
    float beta2 = 1.f - std::pow(step, float(decay_rate_));
    std::vector<float> upd(static_cast<size_t>(n));
    if (p.ndim() >= 2) {
      int64_t C = p.dim(-1), R = p.dim(-2), L = n / (R * C);
      Shape rs(p.shape().begin(), p.shape().end() - 1), cs(p.shape().begin(), p.shape().end() - 2);
      cs.push_back(C);
      Host hr(slot(name, "exp_avg_sq_row", rs, p.device())), hc(slot(name, "exp_avg_sq_col", cs, p.device()));
      float *row = hr.data(), *col = hc.data();
      for (int64_t l = 0; l < L; ++l) {
        const float* G = gd + l * R * C;
        float *rw = row + l * R, *cl = col + l * C;
        std::vector<float> csum(size_t(C), 0.f);
        for (int64_t r = 0; r < R; ++r) {
          float s = 0;
          for (int64_t c = 0; c < C; ++c) {
            float u = G[r * C + c] * G[r * C + c] + float(eps1_);
            s += u;
            csum[size_t(c)] += u;
          }
          rw[r] = beta2 * rw[r] + (1 - beta2) * (s / float(C));
        }
        for (int64_t c = 0; c < C; ++c) cl[c] = beta2 * cl[c] + (1 - beta2) * (csum[size_t(c)] / float(R));
        float rmean = 0;
        for (int64_t r = 0; r < R; ++r) rmean += rw[r];
        rmean /= float(R);
        for (int64_t r = 0; r < R; ++r) {
          float rf = 1.f / std::sqrt(rw[r] / rmean);
          for (int64_t c = 0; c < C; ++c)
            upd[size_t(l * R * C + r * C + c)] = rf * (1.f / std::sqrt(cl[c])) * G[r * C + c];
        }
      }
      hr.commit();
      hc.commit();
    } else {
      Host hs(slot(name, "exp_avg_sq", p.shape(), p.device()));
      float* s = hs.data();
      for (int64_t i = 0; i < n; ++i) {
        s[i] = beta2 * s[i] + (1 - beta2) * (gd[i] * gd[i] + float(eps1_));
        upd[size_t(i)] = (1.f / std::sqrt(s[i])) * gd[i];
      }
      hs.commit();
    }
    float denom = std::max(1.f, rms(upd.data(), n) / float(clip_));
    for (float& u : upd) u = lr_t * (u / denom);
    if (use_beta1_) {
      Host ha(slot(name, "exp_avg", p.shape(), p.device()));
      float* a = ha.data();
      for (int64_t i = 0; i < n; ++i) {
        a[i] = float(beta1_) * a[i] + (1 - float(beta1_)) * upd[size_t(i)];
        upd[size_t(i)] = a[i];
      }
      ha.commit();
    }
    for (int64_t i = 0; i < n; ++i) {
      if (wd_ != 0) pd[i] = pd[i] + pd[i] * (-float(wd_) * lr_t);
      pd[i] -= upd[size_t(i)];
    }
    hp.commit();
  }

 private:
  bool has_lr_;
  double eps1_, eps2_, clip_, decay_rate_, beta1_, wd_;
  bool use_beta1_, scale_parameter_, relative_step_, warmup_init_;
};

// MLX's Muon._zeropower_via_newtonschulz5 on g f32 (r, c): X = g / (||g||_F + 1e-7), then
// `steps` quintic iterations X <- a X + (b A + c A A) X, A = X X^T. MLX transposes a tall X
// (r > c) first and back at the end; iterating on the tall X with A = X^T X and X <- a X + X B^T
// forms the same products without the two transposes (ops has none).
Tensor newton_schulz(const Tensor& g, int64_t steps) {
  const float a = 3.4445f, b = -4.7750f, c = 2.0315f;
  const bool tall = g.dim(0) > g.dim(1);
  const int64_t n = tall ? g.dim(1) : g.dim(0);
  const Device d = g.device();
  float norm = std::sqrt(ops::item(ops::sum_all(ops::mul(g, g))));
  Tensor x = ops::div(g, ops::full({g.dim(1)}, norm + 1e-7f, DType::f32, d));  // f32 (r, c)
  for (int64_t i = 0; i < steps; ++i) {
    Tensor A = ops::zeros({n, n}, DType::f32, d);
    ops::gemm_into(A, x, x, tall, !tall, 1.f, 0.f);  // f32 (n, n)
    Tensor B = ops::scale(A, b);
    ops::gemm_into(B, A, A, false, false, c, 1.f);  // mx.addmm(b * A, A, A, alpha=c)
    Tensor next = ops::scale(x, a);
    if (tall)
      ops::gemm_into(next, x, B, false, true, 1.f, 1.f);  // (a X^T + B X^T)^T = a X + X B^T
    else
      ops::gemm_into(next, B, x, false, false, 1.f, 1.f);  // mx.addmm(a * X, B, X)
    x = next;
  }
  return x;
}

// mlx.optimizers.Muon: momentum SGD (coupled weight decay, Nesterov by default) whose update of a
// parameter with 2 or more dimensions, viewed as (shape[0], -1), is orthogonalized by
// Newton-Schulz and its rate scaled by sqrt(max(1, shape[-2] / shape[-1])); 1-D parameters take
// the plain momentum update. mlx-lm applies it to every trainable parameter, as here.
class Muon : public Optimizer {
 public:
  Muon(Schedule lr, const json& cfg) : Optimizer(std::move(lr)) {
    check_keys("muon", cfg, {"momentum", "weight_decay", "nesterov", "ns_steps"});
    momentum_ = get(cfg, "momentum", 0.95);
    wd_ = get(cfg, "weight_decay", 0.01);
    nesterov_ = get(cfg, "nesterov", true);
    ns_steps_ = get(cfg, "ns_steps", int64_t(5));
    LMT_CHECK(ns_steps_ >= 0, "[muon] ns_steps should be >= 0, ", ns_steps_, " was provided instead");
  }
  const char* name() const override { return "muon"; }

 protected:
  void apply(const std::string& name, Tensor& p, const Tensor& g, double lr, int64_t) override {
    // MLX rounds each Python float to f32 where it meets an f32 array: 1 - momentum in double first.
    const float mom = float(momentum_), rest = float(1.0 - momentum_);
    Tensor gd = wd_ != 0 ? ops::axpby(g, p, 1.f, float(wd_)) : g;
    Tensor& v = slot(name, "v", p.shape(), p.device());
    v = ops::axpby(v, gd, mom, rest);
    Tensor u = nesterov_ ? ops::axpby(gd, v, rest, mom) : v;
    float flr = float(lr);
    if (p.ndim() >= 2) {
      u = newton_schulz(u.reshape({p.dim(0), -1}), ns_steps_).reshape(p.shape());
      flr *= float(std::sqrt(std::max(1.0, double(p.dim(-2)) / double(p.dim(-1)))));
    }
    ops::copy_into(p, ops::axpby(p, u, 1.f, -flr));
  }

 private:
  double momentum_, wd_;
  bool nesterov_;
  int64_t ns_steps_;
};

}  // namespace

std::unique_ptr<Optimizer> make_optimizer(const std::string& name, const json& config, Schedule lr) {
  if (name == "adam") return std::make_unique<Adam>(std::move(lr), config, false);
  if (name == "adamw") return std::make_unique<Adam>(std::move(lr), config, true);
  if (name == "sgd") return std::make_unique<Sgd>(std::move(lr), config);
  if (name == "adafactor") return std::make_unique<Adafactor>(std::move(lr), config, bool(lr));
  if (name == "muon") return std::make_unique<Muon>(std::move(lr), config);
  fail("[optimizer] unknown optimizer '", name, "' (adam, adamw, muon, sgd, adafactor)");
}

}  // namespace lmtune::train
