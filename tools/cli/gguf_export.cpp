// GGUF export (see gguf_export.h): the tensors of a model folder or LoRA adapter in llama.cpp's names and types
// (the per-architecture facts are gguf_arch.cpp's). q/k rows of the llama architecture permuted per head so that
// rotary pairs are adjacent (the others use NEOX rope and keep HF's order), 1-D tensors (norms, biases) always f32,
// gemma's (1 + w) norms written as 1 + w, no output.weight when tied.
#include "gguf_export.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>

#include "convert_plan.h"
#include "core/error.h"
#include "gguf_arch.h"
#include "gguf_mix.h"
#include "gguf_vocab.h"
#include "io/gguf.h"
#include "models/checkpoint_layout.h"
#include "models/model.h"
#include "ops/ops.h"
#include "quant/ggml_blocks.h"
#include "train/adapters.h"

namespace fs = std::filesystem;

namespace lmtune::cli::gguf_export {

namespace {

using gguf::TensorType;
using gguf::Value;

// convert_hf_to_gguf's LlamaModel.permute: per head, rows (half, i) -> (i, half), so rotary pairs
// (i, i + head_dim/2) of HF's rotate_half layout become adjacent rows (2i, 2i + 1). x: f32 with
// `rows` rows of `cols` values.
std::vector<float> permute_rows(const float* x, int64_t rows, int64_t cols, int64_t n_head) {
  LMT_CHECK(rows % (2 * n_head) == 0, "[gguf] cannot permute ", rows, " rows into ", n_head, " heads of pairs");
  const int64_t hd = rows / n_head, half = hd / 2;
  std::vector<float> out(size_t(rows * cols));
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j) {
        const float* src = x + (h * hd + j * half + i) * cols;
        std::copy(src, src + cols, out.begin() + (h * hd + 2 * i + j) * cols);
      }
  return out;
}

std::optional<KMix> k_mix_of(OutType t) {
  switch (t) {
    case OutType::q4_k_s: return KMix::q4_k_s;
    case OutType::q4_k_m: return KMix::q4_k_m;
    case OutType::q5_k_s: return KMix::q5_k_s;
    case OutType::q5_k_m: return KMix::q5_k_m;
    case OutType::q6_k: return KMix::q6_k;
    default: return std::nullopt;
  }
}

// The one type of the 2-D weights of the single-type outputs (f32 ... q4_0).
TensorType tensor_type_for(OutType t) {
  switch (t) {
    case OutType::f32: return TensorType::f32;
    case OutType::f16: return TensorType::f16;
    case OutType::bf16: return TensorType::bf16;
    case OutType::q8_0: return TensorType::q8_0;
    case OutType::q4_0: return TensorType::q4_0;
    default: fail("[gguf] ", out_type_name(t), " is a mix of types, not one");
  }
}

std::string encode(TensorType t, const float* x, int64_t n) {
  switch (t) {
    case TensorType::f32: return quant::ggml::encode_f32(x, n);
    case TensorType::f16: return quant::ggml::encode_f16(x, n);
    case TensorType::bf16: return quant::ggml::encode_bf16(x, n);
    case TensorType::q8_0: return quant::ggml::encode_q8_0(x, n);
    case TensorType::q4_0: return quant::ggml::encode_q4_0(x, n);
    case TensorType::q5_0: return quant::ggml::encode_q5_0(x, n);
    case TensorType::q5_1: return quant::ggml::encode_q5_1(x, n);
    case TensorType::q4_k: return quant::ggml::encode_q4_k(x, n);
    case TensorType::q5_k: return quant::ggml::encode_q5_k(x, n);
    case TensorType::q6_k: return quant::ggml::encode_q6_k(x, n);
  }
  return {};
}

// llama.cpp's general.file_type (enum llama_ftype).
uint32_t file_type(OutType t) {
  if (auto mix = k_mix_of(t)) return k_mix_file_type(*mix);
  switch (t) {
    case OutType::f32: return 0;
    case OutType::f16: return 1;
    case OutType::q4_0: return 2;
    case OutType::q8_0: return 7;
    case OutType::bf16: return 32;
    default: return 0;
  }
}

std::vector<float> to_f32(const Tensor& t) {
  Tensor f = ops::cast(ops::to(t, Device::cpu), DType::f32);
  return std::vector<float>(f.data<float>(), f.data<float>() + f.numel());
}

void refuse_existing(const std::string& path) {
  LMT_CHECK(!fs::exists(fs::symlink_status(path)), "[gguf] ", path,
            " already exists; delete it or name another --gguf-path");
  const fs::path parent = fs::path(path).parent_path();
  LMT_CHECK(parent.empty() || fs::is_directory(parent), "[gguf] the folder of ", path, " does not exist");
}

}  // namespace

OutType parse_out_type(const std::string& name) {
  if (name == "f32") return OutType::f32;
  if (name == "f16") return OutType::f16;
  if (name == "bf16") return OutType::bf16;
  if (name == "q8_0") return OutType::q8_0;
  if (name == "q4_0") return OutType::q4_0;
  if (name == "q4_k_s") return OutType::q4_k_s;
  if (name == "q4_k_m") return OutType::q4_k_m;
  if (name == "q5_k_s") return OutType::q5_k_s;
  if (name == "q5_k_m") return OutType::q5_k_m;
  if (name == "q6_k") return OutType::q6_k;
  fail("--gguf-type: '", name, "' is not a GGUF type lmtune writes (", kOutTypes, ")");
}

const char* out_type_name(OutType t) {
  switch (t) {
    case OutType::f32: return "f32";
    case OutType::f16: return "f16";
    case OutType::bf16: return "bf16";
    case OutType::q8_0: return "q8_0";
    case OutType::q4_0: return "q4_0";
    case OutType::q4_k_s: return "q4_k_s";
    case OutType::q4_k_m: return "q4_k_m";
    case OutType::q5_k_s: return "q5_k_s";
    case OutType::q5_k_m: return "q5_k_m";
    case OutType::q6_k: return "q6_k";
  }
  return "?";
}

namespace {
// llama-quantize's mixes have rules of their own for experts (n_expert 8: attn_v, attn_k in Q8_0, ...),
// which gguf_mix.cpp does not hold.
void check_type(const ModelConfig& c, OutType type, const std::string& dir) {
  LMT_CHECK(c.n_expert == 0 || !k_mix_of(type), "[gguf] ", dir, ": --gguf-type ", out_type_name(type),
            ": lmtune writes llama-quantize's K-quant mixes for dense models only (this one has ", c.n_expert,
            " experts); write f16 or q8_0 and run llama-quantize on it");
}
}  // namespace

namespace {
// llama.cpp's vocabulary loader sets Phi-3's token attributes when general.name contains "phi-3" or
// "phi3" (any architecture), looking these tokens up by text: a file without one of them does not load.
void check_phi3_name(std::string name, const VocabMeta& v, const std::string& dir) {
  for (char& ch : name) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  if (name.find("phi-3") == std::string::npos && name.find("phi3") == std::string::npos) return;
  for (const char* tok : {"</s>", "<unk>", "<s>", "<|endoftext|>"})
    LMT_CHECK(std::find(v.tokens.begin(), v.tokens.end(), tok) != v.tokens.end(), "[gguf] ", dir,
              ": llama.cpp reads a model whose general.name (the folder's name, ", name, ") says phi3 with ",
              "Phi-3's tokens, and this tokenizer has no ", tok, "; rename the folder");
}
}  // namespace

void check_model(const std::string& dir, OutType type) {
  ModelConfig c = ModelConfig::load(dir);
  arch_of(c, dir);
  check_type(c, type, dir);
  read_vocab(dir, c.n_vocab);
}

void export_model(const std::string& dir, const std::string& path, OutType type) {
  refuse_existing(path);
  const ModelConfig c = ModelConfig::load(dir);
  const Arch arch = arch_of(c, dir);
  check_type(c, type, dir);
  const VocabMeta vocab = read_vocab(dir, c.n_vocab);

  convert::Request req;
  req.source = dir;
  req.dequantize = true;  // a quantized layer is written from its mx.dequantize values
  req.cast = false;
  auto plan = std::make_shared<convert::Plan>(req);

  gguf::Writer w;
  w.set("general.architecture", Value::str(arch.name));
  w.set("general.type", Value::str("model"));
  const std::string name = fs::path(dir).lexically_normal().filename().string();
  check_phi3_name(name, vocab, dir);
  w.set("general.name", Value::str(name));
  w.set("general.alignment", Value::u32(32));
  w.set("general.file_type", Value::u32(file_type(type)));
  const std::optional<KMix> mix = k_mix_of(type);
  if (type == OutType::q8_0 || type == OutType::q4_0 || mix) w.set("general.quantization_version", Value::u32(2));
  add_arch_metadata(w, c, arch, dir);
  add_vocab(w, vocab);

  std::map<std::string, int> counts;  // tensors per written type
  for (const auto& [name, f] : config_tensors(c, arch)) {
    w.add_tensor(name, TensorType::f32, {int64_t(f.size())}, quant::ggml::encode_f32(f.data(), int64_t(f.size())));
    ++counts["F32"];
  }
  const TensorType asked = mix ? TensorType::f32 : tensor_type_for(type);
  // llama-quantize takes token_embd for the head when the file has no output.weight.
  MixModel mm{arch.name, c.n_layer, c.n_head, c.n_kv_head, false};
  for (const convert::TensorEntry& e : plan->tensors())
    mm.has_output |= gguf_name(e.name, arch.name) == "output.weight";
  int fallbacks = 0;
  // A module's tensors (weight and bias) come from one produce() call, kept until both are written.
  auto cache = std::make_shared<std::pair<const convert::Leaf*, std::vector<std::pair<std::string, Tensor>>>>();
  for (const convert::Leaf& leaf : plan->leaves()) {
    for (size_t i = leaf.first_tensor; i < leaf.first_tensor + leaf.n_tensors; ++i) {
      const convert::TensorEntry& e = plan->tensors()[i];
      const std::string name = gguf_name(e.name, arch.name);
      LMT_CHECK(!name.empty(), "[gguf] ", dir, ": tensor ", e.name, " has no place in llama.cpp's ", arch.name);
      std::vector<int64_t> dims(e.shape.begin(), e.shape.end());
      TensorType t = dims.size() == 1 ? TensorType::f32 : asked, wanted = t;
      if (dims.size() > 1 && mix) {
        const MixChoice ch = k_mix_type(*mix, mm, name, dims.back());
        t = ch.type;
        wanted = ch.wanted;
      } else if (gguf::block_elems(t) > 1 && dims.back() % gguf::block_elems(t) != 0) {
        t = TensorType::f16;  // as convert_hf_to_gguf: rows that are not whole blocks fall back to F16
      }
      if (t != wanted) {
        std::printf("[gguf] %s: rows of %lld are not blocks of %lld (%s); written as %s%s\n", name.c_str(),
                    (long long)dims.back(), (long long)gguf::block_elems(wanted), gguf::tensor_type_name(wanted),
                    gguf::tensor_type_name(t), mix ? ", as llama-quantize does" : "");
        ++fallbacks;
      }
      ++counts[gguf::tensor_type_name(t)];
      int64_t heads = 0;
      if (arch.permute_qk && e.name.find("self_attn.q_proj.") != std::string::npos) heads = c.n_head;
      if (arch.permute_qk && e.name.find("self_attn.k_proj.") != std::string::npos) heads = c.n_kv_head;
      const std::string hf = e.name;
      const convert::Leaf* lp = &leaf;
      // gemma's norms scale by (1 + w); llama.cpp's by w: written shifted, as convert_hf_to_gguf does.
      const bool shift = c.norm_unit_offset && hf.ends_with("norm.weight");
      w.add_tensor(name, t, dims, [plan, cache, lp, hf, t, heads, dims, shift] {
        if (cache->first != lp) *cache = {lp, plan->produce(*lp)};
        for (const auto& [n, tensor] : cache->second)
          if (n == hf) {
            std::vector<float> x = to_f32(tensor);
            if (gguf::block_elems(t) > 1)  // ggml's quantizers turn a NaN or inf into garbage blocks
              for (size_t k = 0; k < x.size(); ++k)
                LMT_CHECK(std::isfinite(x[k]), "[gguf] tensor ", hf, " holds ", x[k], " at element ", k, ", which ",
                          gguf::tensor_type_name(t), " cannot encode");
            const int64_t rows = dims[0], cols = dims.size() == 1 ? 1 : dims[1];
            if (heads) x = permute_rows(x.data(), rows, cols, heads);
            if (shift)
              for (float& v : x) v += 1.f;
            return encode(t, x.data(), int64_t(x.size()));
          }
        fail("[gguf] tensor ", hf, " was not produced");
      });
    }
  }
  w.write(path);
  std::string types;
  for (const auto& [n, k] : counts) types += (types.empty() ? "" : ", ") + std::to_string(k) + " " + n;
  std::printf("[gguf] Wrote %s: %s, %zu tensors, type %s (%s)%s\n", path.c_str(), arch.name.c_str(), w.n_tensors(),
              out_type_name(type), types.c_str(), fallbacks ? "; some rows were not whole blocks, see above" : "");
  std::fflush(stdout);
}

void export_lora(const std::string& model_dir, const std::string& adapter_dir, const std::string& path, OutType type) {
  LMT_CHECK(type == OutType::f32 || type == OutType::f16 || type == OutType::bf16, "--gguf-type ", out_type_name(type),
            ": a LoRA GGUF is written in f32, f16 or bf16");
  refuse_existing(path);
  LMT_CHECK(fs::is_directory(adapter_dir), "[gguf] the adapter path does not exist: ", adapter_dir);
  const ModelConfig c = ModelConfig::load(model_dir);
  const Arch arch = arch_of(c, model_dir);
  // The base is loaded (in its own dtype, as fuse loads it) only to check and attach the adapters.
  const DType dt = c.torch_dtype == "float32" ? DType::f32 : c.torch_dtype == "float16" ? DType::f16 : DType::bf16;
  std::unique_ptr<Model> model = load_model(model_dir, Device::cpu, dt);
  train::AdapterConfig acfg = train::load_adapters(*model, adapter_dir);
  LMT_CHECK(acfg.fine_tune_type == "lora", "[gguf] ", adapter_dir, ": a ", acfg.fine_tune_type,
            " adapter has no llama.cpp LoRA form (llama.cpp applies only W + alpha/r * B A); fuse it instead: "
            "lmtune fuse --adapter-path ",
            adapter_dir, " --export-gguf");
  const TensorType t = tensor_type_for(type);
  gguf::Writer w;
  w.set("general.architecture", Value::str(arch.name));
  w.set("general.type", Value::str("adapter"));
  w.set("general.name", Value::str(fs::path(adapter_dir).lexically_normal().filename().string()));
  w.set("general.alignment", Value::u32(32));
  w.set("general.file_type", Value::u32(file_type(type)));
  w.set("adapter.type", Value::str("lora"));
  std::optional<float> alpha;
  // A mixture's expert adapters (mlx-lm's LoRA on SwitchLinear), one per expert here, go stacked on
  // llama.cpp's *_exps tensors: lora_a (n_expert, r, in), lora_b (n_expert, out, r), which its
  // build_lora_mm_id applies per chosen expert.
  struct Stacked {
    int64_t in = 0, r = 0, out = 0;
    std::vector<float> at, bt;
    std::vector<bool> seen;
  };
  std::map<std::string, Stacked> stacked;  // by GGUF stem (blk.N.ffn_gate_exps)
  for (const auto& [prefix, ad] : model->adapters()) {
    int64_t expert = -1;
    const std::string switch_path = stacked_expert_path(c, prefix, &expert);
    const std::string base = gguf_name((switch_path.empty() ? prefix : switch_path) + ".weight", arch.name);
    LMT_CHECK(!base.empty(), "[gguf] ", adapter_dir, ": the adapter of ", prefix, " has no llama.cpp tensor");
    std::vector<float> a = to_f32(ad.lora_a), b = to_f32(ad.lora_b);  // (in, r), (r, out)
    const int64_t in = ad.lora_a.shape()[0], r = ad.lora_a.shape()[1], out = ad.lora_b.shape()[1];
    const float al = ad.scale * float(r);  // llama.cpp scales B A by alpha / r
    LMT_CHECK(!alpha || *alpha == al, "[gguf] ", adapter_dir, ": adapters with different scale * rank (", *alpha, ", ",
              al, ") cannot share one adapter.lora.alpha");
    alpha = al;
    std::vector<float> at(size_t(r * in)), bt(size_t(out * r));  // A^T (r, in), B^T (out, r)
    for (int64_t i = 0; i < in; ++i)
      for (int64_t k = 0; k < r; ++k) at[size_t(k * in + i)] = a[size_t(i * r + k)];
    for (int64_t k = 0; k < r; ++k)
      for (int64_t o = 0; o < out; ++o) bt[size_t(o * r + k)] = b[size_t(k * out + o)];
    if (arch.permute_qk && prefix.find("self_attn.q_proj") != std::string::npos)
      bt = permute_rows(bt.data(), out, r, c.n_head);
    if (arch.permute_qk && prefix.find("self_attn.k_proj") != std::string::npos)
      bt = permute_rows(bt.data(), out, r, c.n_kv_head);
    const std::string stem = base.substr(0, base.size() - std::string(".weight").size());
    if (expert >= 0) {
      Stacked& st = stacked[stem];
      if (st.seen.empty()) {
        st = {in,
              r,
              out,
              std::vector<float>(size_t(c.n_expert * r * in)),
              std::vector<float>(size_t(c.n_expert * out * r)),
              std::vector<bool>(size_t(c.n_expert))};
      }
      LMT_CHECK(st.in == in && st.r == r && st.out == out, "[gguf] ", adapter_dir, ": the experts of ", switch_path,
                " have adapters of different shapes");
      std::copy(at.begin(), at.end(), st.at.begin() + expert * r * in);
      std::copy(bt.begin(), bt.end(), st.bt.begin() + expert * out * r);
      st.seen[size_t(expert)] = true;
      continue;
    }
    w.add_tensor(stem + ".weight.lora_a", t, {r, in}, encode(t, at.data(), r * in));
    w.add_tensor(stem + ".weight.lora_b", t, {out, r}, encode(t, bt.data(), out * r));
  }
  for (const auto& [stem, st] : stacked) {
    for (int64_t e = 0; e < c.n_expert; ++e)
      LMT_CHECK(st.seen[size_t(e)], "[gguf] ", adapter_dir, ": ", stem, " has adapters on some experts but not on ",
                "expert ", e, " (llama.cpp's expert LoRA covers all of them)");
    const int64_t n = c.n_expert;
    w.add_tensor(stem + ".weight.lora_a", t, {n, st.r, st.in}, encode(t, st.at.data(), n * st.r * st.in));
    w.add_tensor(stem + ".weight.lora_b", t, {n, st.out, st.r}, encode(t, st.bt.data(), n * st.out * st.r));
  }
  LMT_CHECK(alpha.has_value(), "[gguf] ", adapter_dir, ": no LoRA adapters found");
  w.set("adapter.lora.alpha", Value::f32(*alpha));
  w.write(path);
  std::printf("[gguf] Wrote %s: LoRA adapter for %s, %zu tensors, alpha %g, type %s\n", path.c_str(), arch.name.c_str(),
              w.n_tensors(), double(*alpha), out_type_name(type));
  std::fflush(stdout);
}

}  // namespace lmtune::cli::gguf_export
