// `lmtune fuse`: mlx_lm.fuse's flags and output. The adapters of --adapter-path (LoRA, DoRA, or a
// `full` adapter file of whole weights) are merged into the base model's weights as mlx-lm's
// LoRALinear.fuse / DoRALinear.fuse do, and the model is written as mlx-lm's save() writes it
// (convert's planner and writer), re-quantized with each layer's own parameters unless --dequantize.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "cli_commands.h"
#include "convert_plan.h"
#include "core/error.h"
#include "fuse_keep.h"
#include "fuse_report.h"
#include "gguf_export.h"
#include "io/hub.h"
#include "io/safetensors.h"
#include "models/checkpoint_layout.h"
#include "ops/ops.h"
#include "options.h"
#include "runtime/generate.h"
#include "runtime_setup.h"
#include "train/adapters.h"
#include "upload_option.h"

namespace fs = std::filesystem;

namespace lmtune::cli {

namespace {

struct FuseOptions {
  std::string model = "mlx_model";
  std::string save_path = "fused_model";
  std::string adapter_path = "adapters";
  std::optional<std::string> upload_repo, gguf_path, gguf_type, data;
  std::string requantize = "keep";  // lmtune's: keep | mlx
  double keep_threshold = 0.9;
  bool dequantize = false, export_gguf = false, trust_remote_code = false;
};

void declare(Options& t, FuseOptions& o) {
  t.add("--model", &o.model, "MODEL", std::string("The base model: ") + kModelHelp + ".");
  t.add("--save-path", &o.save_path, "PATH", "The path to save the fused model (it must not exist).");
  t.add("--adapter-path", &o.adapter_path, "PATH",
        "Path to the trained adapter weights and config (adapters.safetensors + adapter_config.json of "
        "lmtune lora / mlx_lm.lora: lora, dora or full), or a Hugging Face PEFT LoRA / DoRA folder.");
  t.add("--upload-repo", &o.upload_repo, "REPO",
        "The Hugging Face repo to upload the model to (org/name; created if missing; token: HF_TOKEN, else "
        "$HF_HOME/token)");
  t.add("--dequantize", &o.dequantize, "",
        "Generate a dequantized model: every layer of a quantized base written dense, the quantization "
        "keys dropped from config.json.");
  t.add("--export-gguf", &o.export_gguf, "",
        "Export the fused model as a GGUF file for llama.cpp (llama, mistral, qwen2, qwen3).");
  t.add("--gguf-path", &o.gguf_path, "PATH", "Path to save the exported GGUF file, relative to --save-path.")
      .default_text("ggml-model-f16.gguf");
  t.add("--gguf-type", &o.gguf_type, "TYPE",
        std::string("lmtune: the GGUF's weight type (") + gguf_export::kOutTypes +
            "; q4_k_s ... q6_k are llama-quantize's mixes); norms stay f32.")
      .default_text("f16");
  t.add("--trust-remote-code", &o.trust_remote_code, "", "accepted for compatibility; lmtune runs no model code");
  t.group("lmtune's options (not in mlx_lm.fuse)");
  t.add("--requantize", &o.requantize, "keep|mlx",
        "How merged layers of a quantized base are written: keep = each at the fewest bits that keep "
        "--keep-threshold of its change (its own bits, 8 bits, else dense); mlx = re-quantized with its "
        "own parameters, as mlx_lm.fuse (small changes can round away)");
  t.add("--keep-threshold", &o.keep_threshold, "F",
        "With --requantize keep: the share of each merged layer's change its output must keep, in [0, 1]");
  t.add("--data", &o.data, "DIR",
        "A lora data folder: report the validation loss (valid.jsonl) of the base, the base with the adapter "
        "and the fused model, and warn when the fused model keeps under 90% of the adapter's gain");
}

void say(const char* line) {
  std::printf("%s\n", line);
  std::fflush(stdout);
}

// x rounded to dtype dt (round to nearest even, as MLX's casts) and back to f32.
Tensor round_to(const Tensor& x, DType dt) { return dt == DType::f32 ? x : ops::cast(ops::cast(x, dt), DType::f32); }

// (scale * B^T) @ A^T in f32 as MLX's CPU matmul computes it for these shapes: each element a sum
// over the rank from k = 0 up, a product then a sum, no FMA (checked against mx on trained
// adapters: a BLAS GEMM's FMAs differ in the last bit of ~45% of the elements, and a few of those
// reach the bf16 rounding). tools/cli/CMakeLists.txt builds this file with -ffp-contract=off.
Tensor lora_delta(const Tensor& a, const Tensor& b, float scale) {
  Tensor af = ops::cast(a, DType::f32), bf = ops::cast(b, DType::f32);  // (in, r), (r, out)
  const int64_t in = af.shape()[0], r = af.shape()[1], out = bf.shape()[1];
  std::vector<float> sbt(size_t(out * r));  // scale * B^T, (out, r)
  for (int64_t k = 0; k < r; ++k)
    for (int64_t o = 0; o < out; ++o) sbt[size_t(o * r + k)] = scale * bf.data<float>()[k * out + o];
  Tensor delta = ops::empty({out, in}, DType::f32, Device::cpu);
  const float* pa = af.data<float>();
  float* pd = delta.data<float>();
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i) {
      float acc = 0.f;
      for (int64_t k = 0; k < r; ++k) acc = acc + sbt[size_t(o * r + k)] * pa[i * r + k];
      pd[o * in + i] = acc;
    }
  return delta;
}

// LoRALinear.fuse: W + ((scale * B^T) @ A^T).astype(W.dtype).
Tensor lora_merge(const Tensor& w, const Tensor& a, const Tensor& b, float scale) {
  Tensor delta = lora_delta(a, b, scale);  // f32 (out, in)
  if (w.dtype() == DType::f32) return ops::add(w, delta);
  // MLX adds two bf16 / f16 arrays in f32 and rounds the sum: the same, as the CPU ops compute in f32.
  Tensor sum = ops::add(ops::cast(w, DType::f32), round_to(delta, w.dtype()));
  return ops::cast(sum, w.dtype());  // W's dtype (out, in)
}

// DoRALinear.fuse: W1 = W + delta as above, then (m / ||W1||_row)[:, None] * W1, which mlx
// computes in f32 (m is f32). mx.linalg.norm of a bf16/f16 W1 squares each element into W1's
// dtype, sums the row in f32 left to right, rounds the sum to W1's dtype, and takes the square
// root in f32 rounded again (checked against MLX on random rows); for f32 it is sqrt of the f32
// left-to-right sum.
Tensor dora_merge(const Tensor& w, const Tensor& a, const Tensor& b, const Tensor& m, float scale) {
  Tensor w1 = lora_merge(w, a, b, scale);
  const DType dt = w1.dtype();
  Tensor w1f = ops::cast(w1, DType::f32);
  Tensor sq = round_to(ops::mul(w1f, w1f), dt);  // each square rounded to W1's dtype
  const int64_t out = w1.shape()[0], in = w1.shape()[1];
  Tensor sums = ops::empty({out}, DType::f32, Device::cpu);
  for (int64_t r = 0; r < out; ++r) {
    const float* row = sq.data<float>() + r * in;
    float acc = 0.f;
    for (int64_t c = 0; c < in; ++c) acc += row[c];
    sums.data<float>()[r] = acc;
  }
  Tensor norm = round_to(sums, dt);
  for (int64_t r = 0; r < out; ++r) norm.data<float>()[r] = std::sqrt(norm.data<float>()[r]);
  norm = round_to(norm, dt);
  Tensor mf = ops::cast(m, DType::f32);
  Tensor res = ops::empty({out, in}, DType::f32, Device::cpu);
  for (int64_t r = 0; r < out; ++r) {
    float s = mf.data<float>()[r] / norm.data<float>()[r];
    const float* src = w1f.data<float>() + r * in;
    float* dst = res.data<float>() + r * in;
    for (int64_t c = 0; c < in; ++c) dst[c] = s * src[c];
  }
  return res;
}

int fuse_model(const FuseOptions& o) {
  check_upload_repo(o.upload_repo);
  if (o.requantize != "keep" && o.requantize != "mlx")
    throw UsageError("argument --requantize: invalid choice: '" + o.requantize + "' (choose from 'keep', 'mlx')");
  if (!(o.keep_threshold >= 0 && o.keep_threshold <= 1))
    throw UsageError(str_cat("argument --keep-threshold: ", o.keep_threshold, " is not in [0, 1]"));
  if (o.data) fuse_report::check_data(*o.data);
  say("Loading pretrained model");
  // mlx-lm writes into an existing folder (mkdir exist_ok), mixing old and new files; lmtune
  // refuses, as convert does, and builds the folder under a temporary name.
  if (fs::exists(fs::symlink_status(o.save_path)))
    fail("Cannot save to the path ", o.save_path,
         " as it already exists. Please delete the file/directory or specify a new path to save to.");
  LMT_CHECK(fs::is_directory(o.adapter_path), "The adapter path does not exist: ", o.adapter_path);
  std::optional<std::string> base_model;
  if (is_hub_repo_id(o.model)) base_model = o.model.substr(0, o.model.find('@'));
  const std::string dir = resolve_model_dir(o.model);
  auto gguf = gguf_export::fuse_request(o.export_gguf, o.gguf_path, o.gguf_type, o.save_path, dir);

  // The adapters are read and checked by the code of `generate --adapter-path`: every stored name
  // must be a parameter the config's adapters create, with its shape.
  std::string cfg_dtype = ModelConfig::load(dir).torch_dtype;
  DType load_dtype = cfg_dtype == "float32" ? DType::f32 : cfg_dtype == "float16" ? DType::f16 : DType::bf16;
  std::unique_ptr<Model> model = load_model(dir, Device::cpu, load_dtype);
  train::AdapterConfig acfg = train::load_adapters(*model, o.adapter_path);

  convert::Request req;
  req.source = dir;
  req.dequantize = o.dequantize;
  req.cast = false;
  if (acfg.fine_tune_type == "full") {
    // The file's tensors replace the weights as they are (mlx-lm's load_weights keeps their dtype).
    for (auto& [name, t] : load_safetensors(o.adapter_path + "/adapters.safetensors")) req.replace[name] = t;
  } else {
    const bool dora = acfg.fine_tune_type == "dora";
    // A mixture's experts are one stacked layer in the output (mlx-lm's SwitchLinear): its merge
    // merges each expert's slice with that expert's adapter (LoRASwitchLinear.fuse).
    std::map<std::string, std::vector<std::pair<Tensor, Tensor>>> stacked;
    float stacked_scale = 0.f;
    for (auto& [prefix, ad] : model->adapters()) {
      int64_t e = 0;
      const std::string layer = stacked_expert_path(model->config(), prefix, &e);
      if (layer.empty()) continue;
      std::vector<std::pair<Tensor, Tensor>>& v = stacked[layer];
      v.resize(size_t(model->config().n_expert));
      v[size_t(e)] = {ops::to(ad.lora_a.detach(), Device::cpu), ops::to(ad.lora_b.detach(), Device::cpu)};
      stacked_scale = ad.scale;
    }
    for (auto& [layer, ab] : stacked) {
      convert::Request::Merge mg;
      mg.apply = [ab = ab, scale = stacked_scale](const Tensor& w) {  // (clang < 16: no capture of a binding)
        const int64_t E = w.dim(0), out = w.dim(1), in = w.dim(2);
        Tensor merged;
        for (int64_t e = 0; e < E; ++e) {
          Tensor one =
              lora_merge(w.slice_rows(e, e + 1).reshape({out, in}), ab[size_t(e)].first, ab[size_t(e)].second, scale);
          if (!merged.defined()) merged = Tensor::empty(w.shape(), one.dtype());
          std::memcpy(static_cast<char*>(merged.raw()) + size_t(e) * one.nbytes(), one.raw(), one.nbytes());
        }
        return merged;
      };
      req.merges[model->config().checkpoint_prefix + layer] = std::move(mg);
    }
    for (auto& [prefix, ad] : model->adapters()) {
      if (!stacked_expert_path(model->config(), prefix).empty()) continue;
      Tensor a = ops::to(ad.lora_a.detach(), Device::cpu), b = ops::to(ad.lora_b.detach(), Device::cpu);
      const float scale = ad.scale;  // adapter_config's lora_parameters.scale
      convert::Request::Merge mg;
      if (dora) {
        Tensor m = ops::to(ad.m.detach(), Device::cpu);
        mg.out_dtype = DType::f32;  // (f32 m / norm) * W1 promotes to f32 in mlx
        mg.apply = [a, b, m, scale](const Tensor& w) { return dora_merge(w, a, b, m, scale); };
      } else {
        mg.apply = [a, b, scale](const Tensor& w) { return lora_merge(w, a, b, scale); };
      }
      req.merges[model->config().checkpoint_prefix + prefix] = std::move(mg);
    }
  }
  model.reset();  // the planner reads the weights from the files again, one layer at a time

  std::unique_ptr<convert::Plan> plan =
      fuse_keep::make_plan(req, o.requantize == "keep" && !o.dequantize, o.keep_threshold);
  if (o.dequantize) say("Dequantizing model");
  convert::write_folder(*plan, dir, o.save_path, base_model);
  if (gguf) gguf_export::fuse_export(*gguf, o.save_path);
  if (o.data) fuse_report::report(dir, o.adapter_path, o.save_path, *o.data);
  upload_output(o.save_path, o.upload_repo, "Upload fused model with lmtune");
  return 0;
}

}  // namespace

int run_fuse(int argc, char** argv) {
  FuseOptions o;
  Options t("fuse", "lmtune fuse [--model MODEL] [--save-path PATH] [--adapter-path PATH] [--dequantize]",
            "Fuse fine-tuned adapters into the base model (mlx_lm.fuse's flags and output folder): W' = W + "
            "scale * B^T A^T in W's dtype for LoRA, mlx-lm's DoRA merge, or the weights of a full fine-tune; a "
            "quantized base is re-quantized with its own parameters unless --dequantize.");
  declare(t, o);
  return run_with_options(t, argc, argv, [&] { return fuse_model(o); });
}

}  // namespace lmtune::cli
