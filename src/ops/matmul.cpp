// Matrix products: batched matmul with transpose flags, linear layers, accumulation.
#include "core/error.h"
#include "ops/ops.h"

namespace lmtune::ops {

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  LMT_CHECK(a.device() == b.device() && a.dtype() == b.dtype(), "[matmul] ", a.describe(), " @ ", b.describe());
  LMT_CHECK(a.ndim() >= 2 && b.ndim() >= 2, "[matmul] needs matrices, got ", a.describe(), " @ ", b.describe());
  int64_t M = trans_a ? a.dim(-1) : a.dim(-2);
  int64_t K = trans_a ? a.dim(-2) : a.dim(-1);
  int64_t Kb = trans_b ? b.dim(-1) : b.dim(-2);
  int64_t N = trans_b ? b.dim(-2) : b.dim(-1);
  LMT_CHECK(K == Kb, "[matmul] inner dimensions differ: ", shape_str(a.shape()), (trans_a ? "^T" : ""), " @ ",
            shape_str(b.shape()), (trans_b ? "^T" : ""));
  int64_t batch = M * K > 0 ? a.numel() / (M * K) : numel_of(Shape(a.shape().begin(), a.shape().end() - 2));
  int64_t bbatch = K * N > 0 ? b.numel() / (K * N) : numel_of(Shape(b.shape().begin(), b.shape().end() - 2));
  LMT_CHECK(b.ndim() == 2 || bbatch == batch, "[matmul] batch shapes differ: ", shape_str(a.shape()), " @ ",
            shape_str(b.shape()));
  Shape os(a.shape().begin(), a.shape().end() - 2);
  os.push_back(M);
  os.push_back(N);
  // One broadcast 2-D b with an untransposed a: fold the batch into M (a single larger GEMM).
  bool fold = b.ndim() == 2 && !trans_a;
  Tensor out = empty(os, a.dtype(), a.device());
  if (out.numel() == 0) return out;
  if (K == 0) return zeros(os, a.dtype(), a.device());
  GemmArgs g;
  g.a = a.raw();
  g.b = b.raw();
  g.c = out.raw();
  g.dtype = a.dtype();
  g.M = fold ? M * batch : M;
  g.N = N;
  g.K = K;
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  g.lda = a.dim(-1);
  g.ldb = b.dim(-1);
  g.ldc = N;
  g.batch = fold ? 1 : batch;
  g.stride_a = M * K;
  g.stride_b = b.ndim() == 2 ? 0 : K * N;
  g.stride_c = M * N;
  backend(a.device()).gemm(g);
  return out;
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  LMT_CHECK(w.ndim() == 2 && x.ndim() >= 1 && x.dim(-1) == w.dim(1), "[linear] input ", x.describe(),
            " does not match weight ", w.describe());
  Tensor x2 = x.reshape({x.numel() / x.dim(-1), x.dim(-1)});
  Tensor y = matmul(x2, w, false, true);
  if (bias.defined()) {
    LMT_CHECK(bias.ndim() == 1 && bias.dim(0) == w.dim(0), "[linear] bias ", bias.describe(), " for weight ",
              w.describe());
    y = add(y, bias);
  }
  Shape os = x.shape();
  os.back() = w.dim(0);
  return y.reshape(os);
}

std::vector<Tensor> linear_group(const Tensor& x, const std::vector<Tensor>& ws) {
  LMT_CHECK(!ws.empty() && ws.size() <= 3, "[linear_group] takes 1 to 3 weights, got ", ws.size());
  const int64_t K = x.dim(-1), M = x.numel() / (K ? K : 1);
  std::vector<Tensor> out;
  std::vector<const void*> wp;
  std::vector<void*> yp;
  std::vector<int64_t> ns;
  for (const Tensor& w : ws) {
    LMT_CHECK(w.ndim() == 2 && w.dim(1) == K && w.dtype() == x.dtype() && w.device() == x.device(),
              "[linear_group] input ", x.describe(), " does not match weight ", w.describe());
    Shape os = x.shape();
    os.back() = w.dim(0);
    out.push_back(empty(os, x.dtype(), x.device()));
    wp.push_back(w.raw());
    yp.push_back(out.back().raw());
    ns.push_back(w.dim(0));
  }
  if (M > 0 &&
      backend(x.device()).gemv_group(x.raw(), wp.data(), yp.data(), ns.data(), int(ws.size()), M, K, x.dtype()))
    return out;
  for (size_t i = 0; i < ws.size(); ++i) out[i] = linear(x, ws[i]);
  return out;
}

Tensor swiglu_linear(const Tensor& x, const Tensor& w_gate, const Tensor& w_up) {
  LMT_CHECK(w_gate.ndim() == 2 && w_gate.shape() == w_up.shape() && w_gate.dim(1) == x.dim(-1) &&
                w_gate.dtype() == x.dtype() && w_up.dtype() == x.dtype() && w_gate.device() == x.device() &&
                w_up.device() == x.device(),
            "[swiglu_linear] input ", x.describe(), ", gate ", w_gate.describe(), ", up ", w_up.describe());
  const int64_t K = x.dim(-1), M = x.numel() / (K ? K : 1);
  Shape os = x.shape();
  os.back() = w_gate.dim(0);
  Tensor out = empty(os, x.dtype(), x.device());
  if (M > 0 &&
      backend(x.device()).gemv_swiglu(x.raw(), w_gate.raw(), w_up.raw(), out.raw(), M, w_gate.dim(0), K, x.dtype()))
    return out;
  return swiglu(linear(x, w_gate), linear(x, w_up));
}

void gemm_into(Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, float alpha, float beta) {
  LMT_CHECK(a.ndim() == 2 && b.ndim() == 2 && c.ndim() == 2, "[gemm_into] needs 2-D tensors");
  // c in a's dtype, or in f32 for 16-bit a and b (f32 accumulation and output).
  LMT_CHECK(a.dtype() == b.dtype() && (a.dtype() == c.dtype() || c.dtype() == DType::f32) && a.device() == c.device() &&
                b.device() == c.device(),
            "[gemm_into] ", c.describe(), " = ", a.describe(), " @ ", b.describe());
  int64_t M = trans_a ? a.dim(1) : a.dim(0), K = trans_a ? a.dim(0) : a.dim(1);
  int64_t N = trans_b ? b.dim(0) : b.dim(1);
  LMT_CHECK((trans_b ? b.dim(1) : b.dim(0)) == K && c.dim(0) == M && c.dim(1) == N, "[gemm_into] shapes ",
            shape_str(c.shape()), " = ", shape_str(a.shape()), " @ ", shape_str(b.shape()));
  GemmArgs g;
  g.a = a.raw();
  g.b = b.raw();
  g.c = c.raw();
  g.dtype = a.dtype();
  g.M = M;
  g.N = N;
  g.K = K;
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  g.lda = a.dim(1);
  g.ldb = b.dim(1);
  g.ldc = N;
  g.alpha = alpha;
  g.beta = beta;
  g.c_f32 = c.dtype() != a.dtype();
  backend(c.device()).gemm(g);
}

namespace {

// The backend's pointers: device memory where the tensors live on a GPU (Tensor::data is for host memory only, and
// the backend may decline the call, as CUDA does).
const float* f32_ptr(const Tensor& t) { return static_cast<const float*>(t.raw()); }
float* f32_ptr_mut(const Tensor& t) { return static_cast<float*>(t.raw()); }

LoraLinearArgs lora_args(const Tensor& x, const Tensor& w, const Tensor& a, const Tensor& b, float scale,
                         const char* op) {
  LMT_CHECK(x.ndim() >= 2 && w.ndim() == 2 && a.ndim() == 2 && b.ndim() == 2 && x.dim(-1) == w.dim(1) &&
                a.dim(0) == w.dim(1) && b.dim(0) == a.dim(1) && b.dim(1) == w.dim(0),
            "[", op, "] ", x.describe(), ", weight ", w.describe(), ", lora_a ", a.describe(), ", lora_b ",
            b.describe());
  for (const Tensor* t : {&x, &w, &a, &b})
    LMT_CHECK(t->dtype() == DType::f32 && t->device() == x.device(), "[", op, "] needs f32 tensors on one device, got ",
              t->describe(), " beside ", x.describe());
  LoraLinearArgs g;
  g.in = w.dim(1);
  g.out = w.dim(0);
  g.r = a.dim(1);
  g.rows = x.numel() / g.in;
  g.scale = scale;
  g.x = f32_ptr(x);
  g.w = f32_ptr(w);
  g.a = f32_ptr(a);
  g.b = f32_ptr(b);
  return g;
}

}  // namespace

LoraLinearOut lora_linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& a, const Tensor& b,
                          float scale) {
  LoraLinearArgs g = lora_args(x, w, a, b, scale, "lora_linear");
  if (bias.defined()) {
    LMT_CHECK(bias.dtype() == DType::f32 && bias.numel() == g.out && bias.device() == x.device(), "[lora_linear] bias ",
              bias.describe(), " for weight ", w.describe());
    g.bias = f32_ptr(bias);
  }
  if (!backend(x.device()).takes_lora_linear(g.rows)) return {};  // before allocating outputs it would not write
  Shape ys = x.shape();
  ys.back() = g.out;
  Tensor y = empty(ys, DType::f32, x.device()), xa = empty({g.rows, g.r}, DType::f32, x.device());
  g.y = f32_ptr_mut(y);
  g.xa = f32_ptr_mut(xa);
  if (!backend(x.device()).lora_linear(g)) return {};
  return {y, xa};
}

LoraLinearGrads lora_linear_backward(const Tensor& dy, const Tensor& x, const Tensor& xa, const Tensor& w,
                                     const Tensor& a, const Tensor& b, float scale, bool want_dx, bool want_da,
                                     bool want_db) {
  LoraLinearArgs g = lora_args(x, w, a, b, scale, "lora_linear_backward");
  LMT_CHECK(dy.dtype() == DType::f32 && dy.numel() == g.rows * g.out && xa.dtype() == DType::f32 &&
                xa.numel() == g.rows * g.r && dy.device() == x.device() && xa.device() == x.device(),
            "[lora_linear_backward] dy ", dy.describe(), ", xa ", xa.describe(), " for ", x.describe(), " and ",
            w.describe());
  LoraLinearGrads r;
  g.dy = f32_ptr(dy);
  g.xa = f32_ptr_mut(xa);  // read only in backward
  if (want_dx) r.dx = empty(x.shape(), DType::f32, x.device()), g.dx = f32_ptr_mut(r.dx);
  if (want_da) r.da = empty({g.in, g.r}, DType::f32, x.device()), g.da = f32_ptr_mut(r.da);
  if (want_db) r.db = empty({g.r, g.out}, DType::f32, x.device()), g.db = f32_ptr_mut(r.db);
  r.ok = backend(x.device()).lora_linear_backward(g);
  if (!r.ok) r = {};
  return r;
}

}  // namespace lmtune::ops
