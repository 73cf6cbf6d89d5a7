// The quantized formats as read from a checkpoint: an MLX quantized layer (mode, bits, group size,
// and the .weight / .scales / .biases tensors with shapes and dtypes taken from the input, their
// bytes too) checked by check_quant_format and quant::validate and, when accepted, dequantized;
// and the rest of the input decoded as each of ggml's block formats (Q8_0 ... Q6_K).
#include <cstring>

#include "core/error.h"
#include "fuzz_target.h"
#include "quant/ggml_blocks.h"
#include "quant/quant.h"

namespace {

struct Reader {
  const uint8_t* p;
  size_t n;
  uint8_t byte() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
  // Fills t's bytes from the input, cycling it (zeros once the input is used up).
  void fill(lmtune::Tensor& t) {
    auto* out = static_cast<uint8_t*>(t.raw());
    for (size_t i = 0; i < t.nbytes(); ++i) out[i] = n ? p[i % n] : 0;
  }
};

const lmtune::DType kScaleTypes[] = {lmtune::DType::f32, lmtune::DType::bf16, lmtune::DType::f16, lmtune::DType::u8,
                                     lmtune::DType::u32};

}  // namespace

LMTUNE_FUZZ_TARGET(quant) {
  using namespace lmtune;
  Reader in{data, size};
  quant::QuantParams p;
  p.mode = static_cast<QuantMode>(in.byte() % 4);
  p.bits = in.byte() % 10;
  const int groups[] = {0, 8, 16, 32, 64, 128, 256, 3};
  p.group_size = groups[in.byte() % 8];
  const int64_t out = 1 + in.byte() % 4, batch = 1 + in.byte() % 2;
  const int64_t in_features = int64_t(in.byte() % 5) * 32 + (in.byte() % 4 == 0 ? 8 : 0);
  // Shapes as the checkpoint would give them: right most of the time, off by one otherwise.
  const uint8_t skew = in.byte();
  const DType sdt = kScaleTypes[in.byte() % 5], bdt = kScaleTypes[in.byte() % 5];
  try {
    quant::check_params(p, in_features, "fuzz");
  } catch (const Error&) {
  }
  if (p.bits > 0 && p.group_size > 0 && in_features > 0) {
    int64_t wcols = in_features * p.bits / 32 + ((skew & 1) ? 1 : 0);
    int64_t gcols = in_features / p.group_size + ((skew & 2) ? 1 : 0);
    Shape ws = (skew & 8) ? Shape{batch, out, wcols} : Shape{out, wcols};
    Shape ss = (skew & 8) ? Shape{batch, out, gcols} : Shape{out, gcols};
    quant::QuantizedWeight q;
    q.params = p;
    q.wq = Tensor::zeros_cpu(ws, (skew & 16) ? DType::i32 : DType::u32);
    q.scales = Tensor::zeros_cpu(ss, sdt);
    if (p.mode == QuantMode::affine || (skew & 4)) q.biases = Tensor::zeros_cpu(ss, bdt);
    in.fill(q.wq);
    in.fill(q.scales);
    if (q.biases.defined()) in.fill(q.biases);
    try {
      quant::validate(q, in_features, "model.layers.0.mlp.down_proj");
      for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
        volatile int64_t sink = quant::dequantize(q, dt).numel();
        (void)sink;
      }
    } catch (const Error&) {
    }
  }
  const std::string rest(reinterpret_cast<const char*>(in.p), in.n);
  using Decode = std::vector<float> (*)(const std::string&);
  for (Decode d :
       {quant::ggml::decode_q8_0, quant::ggml::decode_q4_0, quant::ggml::decode_q5_0, quant::ggml::decode_q5_1,
        quant::ggml::decode_q4_k, quant::ggml::decode_q5_k, quant::ggml::decode_q6_k}) {
    try {
      volatile size_t sink = d(rest).size();
      (void)sink;
    } catch (const Error&) {
    }
  }
  return 0;
}
