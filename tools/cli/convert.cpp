// `lmtune convert`: mlx_lm.convert's flags, rules and output folder. A Hugging Face (or MLX)
// model folder or Hub id becomes an MLX folder: optionally cast (--dtype), quantized (-q: affine,
// mxfp4, nvfp4, mxfp8, mixed_* recipes) or dequantized (-d), built under a temporary name.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "cli_commands.h"
#include "convert_io.h"
#include "convert_plan.h"
#include "core/error.h"
#include "io/hub.h"
#include "options.h"
#include "runtime/generate.h"
#include "runtime_setup.h"
#include "upload_option.h"

namespace fs = std::filesystem;

namespace lmtune::cli {

namespace {

struct ConvertOptions {
  std::string hf_path;
  std::string mlx_path = "mlx_model";
  bool quantize = false, dequantize = false, trust_remote_code = false;
  std::optional<int64_t> q_group_size, q_bits;
  std::string q_mode = "affine";
  std::optional<std::string> quant_predicate, dtype, upload_repo;
  int64_t max_shard_size = int64_t(5) << 30;
};

void declare(Options& t, ConvertOptions& o) {
  t.add("--hf-path, --model", &o.hf_path, "MODEL", std::string("Path to the model: ") + kModelHelp + ".");
  t.add("--mlx-path", &o.mlx_path, "PATH", "Path to save the MLX model (it must not exist).");
  t.add("-q, --quantize", &o.quantize, "", "Generate a quantized model.");
  t.add("--q-group-size", &o.q_group_size, "N", "Group size for quantization.")
      .default_text("the mode's: affine 64, mxfp4 32, nvfp4 16, mxfp8 32");
  t.add("--q-bits", &o.q_bits, "N", "Bits per weight for quantization.")
      .default_text("the mode's: affine 4, mxfp4 4, nvfp4 4, mxfp8 8");
  t.add("--q-mode", &o.q_mode, "", "The quantization mode.").choices({"affine", "mxfp4", "nvfp4", "mxfp8"});
  t.add("--quant-predicate", &o.quant_predicate, "",
        "Mixed-bit quantization recipe (affine): v_proj and down_proj of the first and last eighth of the "
        "layers and of every third layer between, and lm_head, get the high bits; the rest the low bits")
      .choices({"mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6"});
  t.add("--dtype", &o.dtype, "",
        "Type to save the non-quantized parameters. Defaults to config.json's `torch_dtype` (else "
        "text_config.dtype), else the weights' own dtype.")
      .choices({"float16", "bfloat16", "float32"});
  t.add("--upload-repo", &o.upload_repo, "REPO",
        "The Hugging Face repo to upload the model to (org/name; created if missing; token: HF_TOKEN, else "
        "$HF_HOME/token)");
  t.add("-d, --dequantize", &o.dequantize, "", "Dequantize a quantized model.");
  t.add("--trust-remote-code", &o.trust_remote_code, "", "accepted for compatibility; lmtune runs no model code");
  t.group("lmtune's additions");
  t.add("--max-shard-size", &o.max_shard_size, "BYTES", "the most bytes of tensors in one model-*.safetensors shard")
      .default_text("5368709120 (5 GiB, mlx-lm's)");
}

void say(const std::string& line) {
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

int convert_model(const ConvertOptions& o) {
  if (o.hf_path.empty()) throw UsageError("--hf-path (or --model) is required: a model folder or a Hub repo id");
  check_upload_repo(o.upload_repo);
  if (o.max_shard_size <= 0) throw UsageError("--max-shard-size must be positive");
  if (fs::exists(fs::symlink_status(o.mlx_path)))
    fail("Cannot save to the path ", o.mlx_path,
         " as it already exists. Please delete the file/directory or specify a new path to save to.");
  if (o.quantize && o.dequantize) fail("Choose either quantize or dequantize, not both.");
  convert::Request req;
  req.quantize = o.quantize;
  req.dequantize = o.dequantize;
  req.q_group_size = o.q_group_size;
  req.q_bits = o.q_bits;
  req.q_mode = o.q_mode;
  req.quant_predicate = o.quant_predicate;
  req.dtype = o.dtype;
  req.max_shard_bytes = uint64_t(o.max_shard_size);
  if (o.quantize) {  // refused before the model is read (mlx-lm finds out layer by layer)
    quant::QuantParams p = quant::default_params(quant::parse_mode(o.q_mode, "--q-mode"));
    if (o.q_group_size && *o.q_group_size != 0) p.group_size = int(*o.q_group_size);
    if (o.q_bits && *o.q_bits != 0) p.bits = int(*o.q_bits);
    quant::check_params(p, 0, "--q-group-size / --q-bits");
    LMT_CHECK(!o.quant_predicate || o.q_mode == "affine", "Quant predicates only support 'affine' quantization.");
  } else if (o.quant_predicate) {
    std::fprintf(stderr, "[WARN] --quant-predicate has no effect without -q/--quantize\n");
  }

  say("[INFO] Loading");
  std::optional<std::string> base_model;
  if (is_hub_repo_id(o.hf_path)) base_model = o.hf_path.substr(0, o.hf_path.find('@'));
  req.source = resolve_model_dir(o.hf_path);
  convert::Plan plan(req);
  if (plan.cast_name()) say("[INFO] Using dtype: " + *plan.cast_name());
  if (o.quantize) {
    say("[INFO] Quantizing");
    if (!plan.not_divisible().empty()) {
      const auto& nd = plan.not_divisible();
      std::string list;
      for (size_t i = 0; i < nd.size() && i < 4; ++i) list += (i ? ", " : "") + nd[i];
      if (nd.size() > 4) list += str_cat(", ... (", nd.size() - 4, " more)");
      std::fprintf(stderr,
                   "[WARN] %zu layers stay unquantized: their input size is not a multiple of the group size (%s)\n",
                   nd.size(), list.c_str());
    }
    char buf[96];
    std::snprintf(buf, sizeof buf, "[INFO] Quantized model with %.3f bits per weight.", plan.bits_per_weight());
    say(buf);
  }
  if (o.dequantize) say("[INFO] Dequantizing");
  convert::write_folder(plan, req.source, o.mlx_path, base_model);
  upload_output(o.mlx_path, o.upload_repo, "Upload model converted with lmtune");
  return 0;
}

}  // namespace

int run_convert(int argc, char** argv) {
  ConvertOptions o;
  Options t("convert", "lmtune convert --hf-path MODEL [--mlx-path PATH] [-q [--q-bits N] ...] [-d] [--dtype T]",
            "Convert a Hugging Face model to MLX format (mlx_lm.convert's flags, rules and output folder): "
            "cast, quantize (-q) or dequantize (-d) it.");
  declare(t, o);
  return run_with_options(t, argc, argv, [&] { return convert_model(o); });
}

}  // namespace lmtune::cli
