// GGUF export (see gguf_export.h). Facts taken from llama.cpp's loader and converter
// (src/models/{llama,granite,smollm3,olmo2,gemma3,qwen2,qwen3}.cpp, convert_hf_to_gguf.py): tensor names blk.N.attn_q
// ..., q/k rows of the llama architecture permuted per head so that rotary pairs are adjacent (qwen2 and qwen3 use NEOX
// rope and keep HF's order), 1-D tensors (norms, biases) always f32, llama3 rope scaling as a rope_freqs tensor of
// per-frequency divisors, no output.weight when tied.
#include "gguf_export.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <regex>

#include "convert_plan.h"
#include "core/error.h"
#include "gguf_mix.h"
#include "gguf_vocab.h"
#include "io/gguf.h"
#include "models/model.h"
#include "ops/ops.h"
#include "quant/ggml_blocks.h"
#include "train/adapters.h"

namespace fs = std::filesystem;

namespace lmtune::cli::gguf_export {

namespace {

using gguf::TensorType;
using gguf::Value;

// HF name -> llama.cpp name in architecture `arch`; "" for a name llama.cpp has no place for.
std::string gguf_name(const std::string& hf, const std::string& arch) {
  static const std::map<std::string, std::string> kTop = {{"model.embed_tokens.weight", "token_embd.weight"},
                                                          {"model.norm.weight", "output_norm.weight"},
                                                          {"lm_head.weight", "output.weight"}};
  static const std::map<std::string, std::string> kBlock = {
      {"input_layernorm", "attn_norm"},    {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},      {"self_attn.v_proj", "attn_v"},
      {"self_attn.o_proj", "attn_output"}, {"self_attn.q_norm", "attn_q_norm"},
      {"self_attn.k_norm", "attn_k_norm"}, {"post_attention_layernorm", "ffn_norm"},
      {"mlp.gate_proj", "ffn_gate"},       {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"}};
  if (auto it = kTop.find(hf); it != kTop.end()) return it->second;
  static const std::regex kRe(R"(model\.layers\.(\d+)\.(.+)\.(weight|bias))");
  std::smatch m;
  if (!std::regex_match(hf, m, kRe)) return "";
  // Where an architecture names a block's norms otherwise: olmo2's follow attention and the MLP
  // (its post_attention_layernorm is not llama's pre-MLP norm); gemma3's sandwich them.
  static const std::map<std::string, std::map<std::string, std::string>> kArchNorms = {
      {"olmo2", {{"post_attention_layernorm", "post_attention_norm"}, {"post_feedforward_layernorm", "post_ffw_norm"}}},
      {"gemma3",
       {{"post_attention_layernorm", "post_attention_norm"},
        {"pre_feedforward_layernorm", "ffn_norm"},
        {"post_feedforward_layernorm", "post_ffw_norm"}}}};
  const std::map<std::string, std::string>* block = &kBlock;
  if (auto a = kArchNorms.find(arch); a != kArchNorms.end() && a->second.count(m[2].str())) block = &a->second;
  auto it = block->find(m[2].str());
  if (it == block->end()) return "";
  return "blk." + m[1].str() + "." + it->second + "." + m[3].str();
}

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

// llama3 rope scaling as llama.cpp takes it: a divisor per frequency (convert_hf_to_gguf's
// generate_extra_tensors, in f64 as Python computes it, stored as f32).
std::vector<float> llama3_rope_factors(const ModelConfig& c) {
  const RopeConfig& r = c.rope;
  const double old_ctx = double(r.original_max_position_embeddings);
  const double low_wl = old_ctx / r.low_freq_factor, high_wl = old_ctx / r.high_freq_factor;
  std::vector<float> out;
  for (int64_t i = 0; i < c.head_dim; i += 2) {
    const float freq = 1.0f / std::pow(float(r.theta), float(i) / float(c.head_dim));  // torch f32
    const double wl = 2 * M_PI / double(freq);
    if (wl < high_wl)
      out.push_back(1.f);
    else if (wl > low_wl)
      out.push_back(float(r.factor));
    else {
      const double smooth = (old_ctx / wl - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
      out.push_back(float(1.0 / ((1 - smooth) / r.factor + smooth)));
    }
  }
  return out;
}

void add_arch_metadata(gguf::Writer& w, const ModelConfig& c, const Arch& a, const std::string& dir) {
  const std::string k = a.name + ".";
  w.set(k + "vocab_size", Value::u32(uint32_t(c.n_vocab)));
  w.set(k + "context_length", Value::u32(uint32_t(c.max_position_embeddings)));
  w.set(k + "embedding_length", Value::u32(uint32_t(c.n_embd)));
  w.set(k + "block_count", Value::u32(uint32_t(c.n_layer)));
  w.set(k + "feed_forward_length", Value::u32(uint32_t(c.n_ff)));
  w.set(k + "attention.head_count", Value::u32(uint32_t(c.n_head)));
  w.set(k + "attention.head_count_kv", Value::u32(uint32_t(c.n_kv_head)));
  w.set(k + "rope.freq_base", Value::f32(float(c.rope.theta)));
  w.set(k + "attention.layer_norm_rms_epsilon", Value::f32(float(c.rms_norm_eps)));
  w.set(k + "rope.dimension_count", Value::u32(uint32_t(c.head_dim)));
  w.set(k + "attention.key_length", Value::u32(uint32_t(c.head_dim)));
  w.set(k + "attention.value_length", Value::u32(uint32_t(c.head_dim)));
  if (a.name == "granite") {  // convert_hf_to_gguf's GraniteModel: the config's multipliers as they are
    w.set(k + "attention.scale", Value::f32(float(c.attn_scale)));
    w.set(k + "embedding_scale", Value::f32(float(c.embed_scale)));
    w.set(k + "residual_scale", Value::f32(float(c.residual_scale)));
    w.set(k + "logit_scale", Value::f32(float(1.0 / c.logit_scale)));  // logits_scaling: llama.cpp divides
  }
  if (a.name == "gemma3") {  // convert_hf_to_gguf's Gemma3Model, and the sliding layers as a list
    int64_t window = 0;
    for (int64_t win : c.layer_window) window = std::max(window, win);
    if (window > 0) {
      w.set(k + "attention.sliding_window", Value::u32(uint32_t(window)));
      Value pattern;
      pattern.type = gguf::ValueType::array;
      pattern.elem = gguf::ValueType::boolean;
      for (int64_t win : c.layer_window) pattern.arr.push_back(Value::boolean(win > 0));
      w.set(k + "attention.sliding_window_pattern", pattern);
      w.set(k + "rope.freq_base_swa", Value::f32(float(c.rope_sliding ? c.rope_sliding->theta : c.rope.theta)));
    }
    if (c.final_logit_softcap > 0) w.set(k + "final_logit_softcapping", Value::f32(float(c.final_logit_softcap)));
  }
  if (c.rope.type == "linear") {
    w.set(k + "rope.scaling.type", Value::str("linear"));
    w.set(k + "rope.scaling.factor", Value::f32(float(c.rope.factor)));
  }
  for (int64_t win : c.layer_window)
    if (win > 0 && win < c.max_position_embeddings && a.name != "gemma3") {
      std::fprintf(stderr,
                   "[gguf] note: %s has a sliding window of %lld tokens; llama.cpp's %s ignores it, so texts "
                   "longer than the window differ\n",
                   dir.c_str(), (long long)win, a.name.c_str());
      break;
    }
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

Arch arch_of(const ModelConfig& c, const std::string& dir) {
  Arch a;
  if (c.model_type == "llama" || c.model_type == "mistral") {
    a = {"llama", true};
    LMT_CHECK(c.attention_bias || !c.qkv_bias, "[gguf] ", dir, ": q/k/v biases without an o_proj bias");
  } else if (c.model_type == "granite") {
    a = {"granite", true};  // llama's block and rope, with four multipliers (add_arch_metadata)
    LMT_CHECK(c.attention_bias || !c.qkv_bias, "[gguf] ", dir, ": q/k/v biases without an o_proj bias");
    LMT_CHECK(c.head_dim * c.n_head == c.n_embd, "[gguf] ", dir, ": llama.cpp's granite takes head_dim as hidden_size",
              " / heads (", c.n_embd / c.n_head, "), this config has ", c.head_dim);
  } else if (c.model_type == "smollm3") {
    a = {"smollm3", true};  // llama's block and rope, but no rope on every 4th layer
    LMT_CHECK(!c.attention_bias && !c.qkv_bias && !c.mlp_bias, "[gguf] ", dir,
              ": llama.cpp's smollm3 has no attention or MLP biases (this config has attention_bias or mlp_bias)");
    for (int64_t il = 0; il < c.n_layer; ++il)  // llama.cpp fixes the pattern (n_no_rope_layer_step = 4)
      LMT_CHECK(c.layer_rope.empty() ? (il + 1) % 4 != 0 : c.layer_rope[size_t(il)] == ((il + 1) % 4 != 0), "[gguf] ",
                dir, ": llama.cpp's smollm3 leaves rope out of every 4th layer (3, 7, ...); this config's ",
                "no_rope_layers differ at layer ", il);
  } else if (c.model_type == "olmo2") {
    a = {"olmo2", false};  // NEOX rope (HF's order), q/k norms over all heads, norms after attention and MLP
    LMT_CHECK(!c.attention_bias && !c.qkv_bias && !c.mlp_bias, "[gguf] ", dir,
              ": llama.cpp's olmo2 has no attention or MLP biases (this config has attention_bias or mlp_bias)");
    LMT_CHECK(!c.tie_word_embeddings, "[gguf] ", dir,
              ": llama.cpp's olmo2 needs its own output.weight (this config ties ", "the embeddings)");
    LMT_CHECK(c.head_dim * c.n_head == c.n_embd, "[gguf] ", dir, ": llama.cpp's olmo2 needs head_dim * heads (",
              c.head_dim * c.n_head, ") = hidden_size (", c.n_embd, ")");
  } else if (c.model_type == "gemma3_text") {
    a = {"gemma3", false};  // NEOX rope, (1 + w) norms stored as 1 + w, GeGLU, sqrt(hidden) embedding scale inside
    LMT_CHECK(!c.attention_bias && !c.qkv_bias && !c.mlp_bias, "[gguf] ", dir, ": llama.cpp's gemma3 has no biases");
    LMT_CHECK(c.n_layer != 62 && std::abs(c.attn_scale * std::sqrt(double(c.head_dim)) - 1.0) < 1e-6, "[gguf] ", dir,
              ": llama.cpp's gemma3 scales scores by 1 / sqrt(head_dim) (but for its 62-layer 27B), not this ",
              "config's query_pre_attn_scalar");
    LMT_CHECK(c.attn_logit_softcap == 0, "[gguf] ", dir, ": llama.cpp's gemma3 has no attention soft-cap");
    LMT_CHECK(c.rope.type == "default" && (!c.rope_sliding || c.rope_sliding->type == "default"), "[gguf] ", dir,
              ": rope scaling on gemma3 (", c.rope.type, ") is not exported (Gemma 3 1B has none)");
    int64_t window = 0;
    for (int64_t win : c.layer_window) {
      LMT_CHECK(win == 0 || window == 0 || win == window, "[gguf] ", dir, ": gemma3 with two window sizes");
      window = std::max(window, win);
    }
  } else if (c.model_type == "qwen2") {
    a = {"qwen2", false};
    LMT_CHECK(!c.attention_bias && !c.mlp_bias, "[gguf] ", dir,
              ": llama.cpp's qwen2 takes q/k/v biases only (this config has o_proj or MLP biases)");
    LMT_CHECK(c.head_dim * c.n_head == c.n_embd, "[gguf] ", dir, ": llama.cpp's qwen2 needs head_dim * heads (",
              c.head_dim * c.n_head, ") = hidden_size (", c.n_embd, ")");
  } else if (c.model_type == "qwen3") {
    a = {"qwen3", false};
    LMT_CHECK(!c.attention_bias && !c.qkv_bias && !c.mlp_bias, "[gguf] ", dir,
              ": llama.cpp's qwen3 has no attention or MLP biases (this config has attention_bias or mlp_bias)");
  } else {
    fail("[gguf] ", dir, ": model_type ", c.model_type,
         " cannot be exported to GGUF (lmtune exports llama, mistral, granite, smollm3, olmo2, gemma3_text, qwen2, "
         "qwen3)");
  }
  const nn::Activation act = a.name == "gemma3" ? nn::Activation::gelu_tanh : nn::Activation::silu;
  LMT_CHECK(c.activation == act, "[gguf] ", dir, ": llama.cpp's ", a.name, " uses ",
            act == nn::Activation::silu ? "SiLU" : "tanh-approximated GELU", ", not this config's hidden_act");
  LMT_CHECK(c.rope.type == "default" || c.rope.type == "linear" || (c.rope.type == "llama3" && a.name == "llama"),
            "[gguf] ", dir, ": rope type ", c.rope.type, " is not exported for llama.cpp's ", a.name);
  LMT_CHECK(c.head_dim % 2 == 0, "[gguf] ", dir, ": head_dim ", c.head_dim, " is odd");
  return a;
}

void check_model(const std::string& dir) {
  ModelConfig c = ModelConfig::load(dir);
  arch_of(c, dir);
  read_vocab(dir, c.n_vocab);
}

void export_model(const std::string& dir, const std::string& path, OutType type) {
  refuse_existing(path);
  const ModelConfig c = ModelConfig::load(dir);
  const Arch arch = arch_of(c, dir);
  const VocabMeta vocab = read_vocab(dir, c.n_vocab);

  convert::Request req;
  req.source = dir;
  req.dequantize = true;  // a quantized layer is written from its mx.dequantize values
  req.cast = false;
  auto plan = std::make_shared<convert::Plan>(req);

  gguf::Writer w;
  w.set("general.architecture", Value::str(arch.name));
  w.set("general.type", Value::str("model"));
  w.set("general.name", Value::str(fs::path(dir).lexically_normal().filename().string()));
  w.set("general.alignment", Value::u32(32));
  w.set("general.file_type", Value::u32(file_type(type)));
  const std::optional<KMix> mix = k_mix_of(type);
  if (type == OutType::q8_0 || type == OutType::q4_0 || mix) w.set("general.quantization_version", Value::u32(2));
  add_arch_metadata(w, c, arch, dir);
  add_vocab(w, vocab);

  if (c.rope.type == "llama3") {
    std::vector<float> f = llama3_rope_factors(c);
    w.add_tensor("rope_freqs.weight", TensorType::f32, {int64_t(f.size())},
                 quant::ggml::encode_f32(f.data(), int64_t(f.size())));
  }
  std::map<std::string, int> counts;  // tensors per written type
  if (c.rope.type == "llama3") ++counts["F32"];
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
  for (const auto& [prefix, ad] : model->adapters()) {
    const std::string base = gguf_name(prefix + ".weight", arch.name);
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
    w.add_tensor(stem + ".weight.lora_a", t, {r, in}, encode(t, at.data(), r * in));
    w.add_tensor(stem + ".weight.lora_b", t, {out, r}, encode(t, bt.data(), out * r));
  }
  LMT_CHECK(alpha.has_value(), "[gguf] ", adapter_dir, ": no LoRA adapters found");
  w.set("adapter.lora.alpha", Value::f32(*alpha));
  w.write(path);
  std::printf("[gguf] Wrote %s: LoRA adapter for %s, %zu tensors, alpha %g, type %s\n", path.c_str(), arch.name.c_str(),
              w.n_tensors(), double(*alpha), out_type_name(type));
  std::fflush(stdout);
}

}  // namespace lmtune::cli::gguf_export
