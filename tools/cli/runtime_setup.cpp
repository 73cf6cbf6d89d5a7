// Model loading for the commands and the shared option-table fragments (see runtime_setup.h).
#include "runtime_setup.h"

#include "backend/backend.h"
#include "core/error.h"
#include "runtime/generate.h"
#include "train/adapters.h"

namespace lmtune::cli {

const char kModelHelp[] =
    "a local model folder, or a Hugging Face repo id org/name[@revision] read from the Hub cache "
    "(downloaded into it when missing; HF_HUB_OFFLINE=1 forbids that)";

LoadedModel load_for_generation(const LoadOptions& o) {
  LoadedModel lm;
  lm.dir = resolve_model_dir(o.model);
  Device dev;
  if (o.device.empty()) {
    dev = cuda_available() ? Device::cuda : Device::cpu;
  } else if (o.device == "cpu") {
    dev = Device::cpu;
  } else if (o.device == "cuda") {
    LMT_CHECK(cuda_available(), "--device cuda: no CUDA device (or lmtune was built without CUDA)");
    dev = Device::cuda;
  } else {
    throw UsageError("argument --device: invalid choice: '" + o.device + "' (choose from 'cpu', 'cuda')");
  }
  std::string dt = o.dtype;
  if (dt.empty()) dt = ModelConfig::load(lm.dir).torch_dtype;
  DType dtype = DType::bf16;
  if (dt == "float32" || dt == "f32") {
    dtype = DType::f32;
  } else if (dt == "float16" || dt == "f16") {
    dtype = DType::f16;
  } else if (dt == "bfloat16" || dt == "bf16" || dt.empty()) {
    dtype = DType::bf16;
  } else if (!o.dtype.empty()) {
    throw UsageError("argument --dtype: invalid choice: '" + o.dtype +
                     "' (choose from 'float32', 'bfloat16', 'float16')");
  }
  lm.chat = std::make_unique<ChatTemplate>(ChatTemplate::load(lm.dir));
  lm.model = load_model(lm.dir, dev, dtype);
  if (!o.adapter_path.empty()) {
    train::load_adapters(*lm.model, o.adapter_path);
    lm.model->bake_masters();  // inference: full-FT weights in the model's dtype, no f32 copies kept
  }
  return lm;
}

void add_model_options(Options& t, LoadOptions& o, const std::string& model_help) {
  t.add("--model", &o.model, "MODEL", model_help);
  t.add("--adapter-path", &o.adapter_path, "PATH",
        "a folder with adapters.safetensors + adapter_config.json (lmtune lora / mlx_lm.lora), or a Hugging "
        "Face PEFT folder (adapter_model.safetensors + adapter_config.json: LoRA, DoRA)");
}

void add_device_options(Options& t, LoadOptions& o, const std::string& dtype_help) {
  t.add("--device", &o.device, "", "where the model runs")
      .choices({"cpu", "cuda"})
      .default_text("cuda when available, else cpu")
      .record_when_set();
  // f32 / bf16 / f16 are accepted as well, as before.
  t.add("--dtype", &o.dtype, "float32|bfloat16|float16", dtype_help)
      .choices({"float32", "bfloat16", "float16", "f32", "bf16", "f16"})
      .default_text("the config's torch_dtype, bfloat16 when unset")
      .record_when_set();
}

void add_sampler_options(Options& t, SamplerOptions& o) {
  t.add("--temp", &o.temp, "T", "sampling temperature; 0.0 = greedy");
  t.add("--top-p", &o.top_p, "P", "nucleus sampling; 1.0 = off");
  t.add("--min-p", &o.min_p, "P", "drop tokens below P times the top probability; 0.0 = off");
  t.add("--top-k", &o.top_k, "K", "keep the K most likely tokens; 0 = off");
  t.add("--min-tokens-to-keep", &o.min_tokens_to_keep, "N", "tokens min-p always keeps");
  t.add("--xtc-probability", &o.xtc_probability, "P", "chance per step to exclude the top choices (XTC)");
  t.add("--xtc-threshold", &o.xtc_threshold, "P", "XTC's probability threshold");
}

void add_penalty_options(Options& t, SamplerOptions& o) {
  t.add("--repetition-penalty", &o.repetition_penalty, "R", "CTRL penalty on recent tokens").default_text("off");
  t.add("--repetition-context-size", &o.repetition_context_size, "N", "recent tokens the repetition penalty looks at");
  t.add("--presence-penalty", &o.presence_penalty, "P", "subtract P from each recent token's logit")
      .default_text("off");
  t.add("--frequency-penalty", &o.frequency_penalty, "P", "subtract P per recent occurrence").default_text("off");
}

void add_kv_quant_options(Options& t, KVQuantOptions& o) {
  t.add("--kv-bits", &o.kv_bits, "N",
        "quantize the KV cache to N bits (2, 3, 4, 5, 6 or 8; MLX's affine layout); unset = not quantized")
      .default_text("None");
  t.add("--kv-group-size", &o.kv_group_size, "N", "KV-cache quantization group along head_dim (32, 64 or 128)");
  t.add("--quantized-kv-start", &o.quantized_kv_start, "N",
        "with --kv-bits, quantize the cache once it holds N tokens (rotating caches too)");
}

KVQuantization kv_quantization(const KVQuantOptions& o, int64_t head_dim) {
  KVQuantization q;
  if (o.kv_bits) {
    const int64_t b = *o.kv_bits;
    if (b != 2 && b != 3 && b != 4 && b != 5 && b != 6 && b != 8)
      throw UsageError("argument --kv-bits: must be 2, 3, 4, 5, 6 or 8, got " + std::to_string(b));
    q.bits = int(b);
  }
  const int64_t g = o.kv_group_size;
  if (g != 32 && g != 64 && g != 128)
    throw UsageError("argument --kv-group-size: must be 32, 64 or 128, got " + std::to_string(g));
  q.group_size = int(g);
  if (o.quantized_kv_start < 0)
    throw UsageError("argument --quantized-kv-start: must be >= 0, got " + std::to_string(o.quantized_kv_start));
  q.start = o.quantized_kv_start;
  if (q.enabled() && head_dim > 0 && head_dim % g != 0)
    throw UsageError("argument --kv-group-size: " + std::to_string(g) + " does not divide the model's head_dim " +
                     std::to_string(head_dim) + " (the KV cache is quantized along head_dim)");
  return q;
}

double total_parameters(const Model& model) {
  double total = 0;
  const auto& quantized = model.quantized();
  for (auto& [n, w] : model.weights()) {
    const size_t dot = n.rfind('.');
    auto q = quantized.find(n.substr(0, dot));
    if (q == quantized.end()) {
      total += double(w.numel());
    } else if (n.compare(dot, std::string::npos, ".weight") == 0) {
      total += double(w.numel()) * 32 / q->second.bits;
    }
  }
  return total;
}

}  // namespace lmtune::cli
