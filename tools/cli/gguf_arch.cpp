// The llama.cpp architectures GGUF export writes (see gguf_arch.h). Facts taken from llama.cpp's loader and converter
// (src/models/{llama,granite,smollm3,olmo2,gemma,gemma2,gemma3,phi3,qwen2,qwen3,qwen3moe}.cpp, src/llama-model.cpp,
// convert_hf_to_gguf.py): tensor names blk.N.attn_q ..., which configs each architecture's tensors and graph hold,
// llama3 rope scaling as a rope_freqs tensor of per-frequency divisors, longrope's as rope_factors_long / _short.
#include "gguf_arch.h"

#include <cmath>
#include <cstdio>
#include <map>
#include <regex>

#include "core/error.h"

namespace lmtune::cli::gguf_export {

namespace {

using gguf::Value;

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

bool is_gemma(const std::string& arch) { return arch == "gemma" || arch == "gemma2" || arch == "gemma3"; }

// The sliding layers' one window (0: none); two sizes are refused (llama.cpp has one n_swa).
int64_t one_window(const ModelConfig& c, const std::string& dir, const std::string& arch) {
  int64_t window = 0;
  for (int64_t win : c.layer_window) {
    LMT_CHECK(win == 0 || window == 0 || win == window, "[gguf] ", dir, ": ", arch,
              " with two sliding_window sizes (llama.cpp's ", arch, " has one)");
    window = std::max(window, win);
  }
  return window;
}

void set_window_pattern(gguf::Writer& w, const std::string& k, const ModelConfig& c) {
  Value pattern;
  pattern.type = gguf::ValueType::array;
  pattern.elem = gguf::ValueType::boolean;
  for (int64_t win : c.layer_window) pattern.arr.push_back(Value::boolean(win > 0));
  w.set(k + "attention.sliding_window_pattern", pattern);
}

}  // namespace

std::string gguf_name(const std::string& hf, const std::string& arch) {
  static const std::map<std::string, std::string> kTop = {{"model.embed_tokens.weight", "token_embd.weight"},
                                                          {"model.norm.weight", "output_norm.weight"},
                                                          {"lm_head.weight", "output.weight"}};
  static const std::map<std::string, std::string> kBlock = {
      {"input_layernorm", "attn_norm"},
      {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"},
      {"self_attn.o_proj", "attn_output"},
      {"self_attn.q_norm", "attn_q_norm"},
      {"self_attn.k_norm", "attn_k_norm"},
      {"post_attention_layernorm", "ffn_norm"},
      {"mlp.gate_proj", "ffn_gate"},
      {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"},
      {"self_attn.qkv_proj", "attn_qkv"},  // phi3's fused q/k/v
      {"mlp.gate_up_proj", "ffn_up"},      // phi3's fused gate/up: llama.cpp's ffn_up of 2 * n_ff rows
      // A mixture's router and its experts stacked as mlx-lm's switch_mlp (convert's plan stacks a
      // checkpoint's per-expert layers so): (n_expert, out, in), llama.cpp's *_exps.
      {"block_sparse_moe.gate", "ffn_gate_inp"},
      {"block_sparse_moe.switch_mlp.gate_proj", "ffn_gate_exps"},
      {"block_sparse_moe.switch_mlp.up_proj", "ffn_up_exps"},
      {"block_sparse_moe.switch_mlp.down_proj", "ffn_down_exps"},
      {"mlp.gate", "ffn_gate_inp"},
      {"mlp.switch_mlp.gate_proj", "ffn_gate_exps"},
      {"mlp.switch_mlp.up_proj", "ffn_up_exps"},
      {"mlp.switch_mlp.down_proj", "ffn_down_exps"}};
  // gemma and gemma2 take their head from token_embd; they have no output.weight.
  if (hf == "lm_head.weight" && (arch == "gemma" || arch == "gemma2")) return "";
  if (auto it = kTop.find(hf); it != kTop.end()) return it->second;
  static const std::regex kRe(R"(model\.layers\.(\d+)\.(.+)\.(weight|bias))");
  std::smatch m;
  if (!std::regex_match(hf, m, kRe)) return "";
  // Where an architecture names a block's norms otherwise: olmo2's follow attention and the MLP
  // (its post_attention_layernorm is not llama's pre-MLP norm); gemma2's and gemma3's sandwich them.
  static const std::map<std::string, std::string> kSandwich = {{"post_attention_layernorm", "post_attention_norm"},
                                                               {"pre_feedforward_layernorm", "ffn_norm"},
                                                               {"post_feedforward_layernorm", "post_ffw_norm"}};
  static const std::map<std::string, std::map<std::string, std::string>> kArchNorms = {
      {"olmo2", {{"post_attention_layernorm", "post_attention_norm"}, {"post_feedforward_layernorm", "post_ffw_norm"}}},
      {"gemma2", kSandwich},
      {"gemma3", kSandwich}};
  const std::map<std::string, std::string>* block = &kBlock;
  if (auto a = kArchNorms.find(arch); a != kArchNorms.end() && a->second.count(m[2].str())) block = &a->second;
  auto it = block->find(m[2].str());
  if (it == block->end()) return "";
  return "blk." + m[1].str() + "." + it->second + "." + m[3].str();
}

Arch arch_of(const ModelConfig& c, const std::string& dir) {
  Arch a;
  auto no_biases = [&](const std::string& arch) {
    LMT_CHECK(!c.attention_bias && !c.qkv_bias && !c.mlp_bias, "[gguf] ", dir, ": llama.cpp's ", arch,
              " has no attention or MLP biases (this config has attention_bias or mlp_bias)");
  };
  // llama.cpp's mixtures (llama with experts, qwen3moe): every layer a MoE one, the chosen experts'
  // softmax weights renormalized.
  auto all_moe = [&](const std::string& arch) {
    for (int64_t il = 0; il < c.n_layer; ++il)
      LMT_CHECK(c.layer_moe[size_t(il)], "[gguf] ", dir, ": llama.cpp's ", arch, " has experts in every layer; ",
                "this config's layer ", il, " is dense (mlp_only_layers / decoder_sparse_step)");
    LMT_CHECK(c.norm_topk_prob, "[gguf] ", dir, ": llama.cpp's ", arch, " renormalizes the chosen experts' ",
              "weights; this config sets norm_topk_prob false");
  };
  if (c.model_type == "llama" || c.model_type == "mistral" || c.model_type == "mixtral") {
    a = {"llama", true};  // mixtral: llama's block with experts (llama.expert_count)
    LMT_CHECK(c.attention_bias || !c.qkv_bias, "[gguf] ", dir, ": q/k/v biases without an o_proj bias");
    if (c.n_expert > 0) all_moe("llama (mixtral)");
  } else if (c.model_type == "granite") {
    a = {"granite", true};  // llama's block and rope, with four multipliers (add_arch_metadata)
    LMT_CHECK(c.attention_bias || !c.qkv_bias, "[gguf] ", dir, ": q/k/v biases without an o_proj bias");
    LMT_CHECK(c.head_dim * c.n_head == c.n_embd, "[gguf] ", dir, ": llama.cpp's granite takes head_dim as hidden_size",
              " / heads (", c.n_embd / c.n_head, "), this config has ", c.head_dim);
  } else if (c.model_type == "smollm3") {
    a = {"smollm3", true};  // llama's block and rope, but no rope on every 4th layer
    no_biases(a.name);
    for (int64_t il = 0; il < c.n_layer; ++il)  // llama.cpp fixes the pattern (n_no_rope_layer_step = 4)
      LMT_CHECK(c.layer_rope.empty() ? (il + 1) % 4 != 0 : c.layer_rope[size_t(il)] == ((il + 1) % 4 != 0), "[gguf] ",
                dir, ": llama.cpp's smollm3 leaves rope out of every 4th layer (3, 7, ...); this config's ",
                "no_rope_layers differ at layer ", il);
  } else if (c.model_type == "olmo2") {
    a = {"olmo2", false};  // NEOX rope (HF's order), q/k norms over all heads, norms after attention and MLP
    no_biases(a.name);
    LMT_CHECK(!c.tie_word_embeddings, "[gguf] ", dir,
              ": llama.cpp's olmo2 needs its own output.weight (this config ties ", "the embeddings)");
    LMT_CHECK(c.head_dim * c.n_head == c.n_embd, "[gguf] ", dir, ": llama.cpp's olmo2 needs head_dim * heads (",
              c.head_dim * c.n_head, ") = hidden_size (", c.n_embd, ")");
  } else if (c.model_type == "gemma" || c.model_type == "gemma2") {
    // NEOX rope, (1 + w) norms stored as 1 + w, GeGLU, sqrt(hidden) embedding scale inside; gemma2 adds the sandwich
    // norms, both soft-caps and the sliding layers.
    a = {c.model_type, false};
    no_biases(a.name);
    LMT_CHECK(c.tie_word_embeddings, "[gguf] ", dir, ": llama.cpp's ", a.name,
              " takes the head from token_embd and has no output.weight; this config sets tie_word_embeddings false");
    if (a.name == "gemma2") {
      // llama.cpp's gemma2 scales q by 1 / sqrt(head_dim), or 1 / sqrt(hidden / heads) for its 46-layer 27B.
      const bool b27 = c.n_layer == 46;
      const double want = 1.0 / std::sqrt(double(b27 ? c.n_embd / c.n_head : c.head_dim));
      LMT_CHECK(std::abs(c.attn_scale - want) <= 1e-9 * want, "[gguf] ", dir, ": llama.cpp's gemma2 scales scores by ",
                "1 / sqrt(", b27 ? "hidden_size / heads" : "head_dim", "), this config's query_pre_attn_scalar is ",
                1.0 / (c.attn_scale * c.attn_scale));
      LMT_CHECK(c.attn_logit_softcap > 0, "[gguf] ", dir, ": llama.cpp's gemma2 always soft-caps the attention ",
                "scores; this config's attn_logit_softcapping is null");
      LMT_CHECK(c.final_logit_softcap > 0, "[gguf] ", dir, ": llama.cpp's gemma2 always soft-caps the logits; ",
                "this config's final_logit_softcapping is null");
      one_window(c, dir, a.name);
    }
  } else if (c.model_type == "gemma3_text") {
    a = {"gemma3", false};  // NEOX rope, (1 + w) norms stored as 1 + w, GeGLU, sqrt(hidden) embedding scale inside
    LMT_CHECK(!c.attention_bias && !c.qkv_bias && !c.mlp_bias, "[gguf] ", dir, ": llama.cpp's gemma3 has no biases");
    LMT_CHECK(c.n_layer != 62 && std::abs(c.attn_scale * std::sqrt(double(c.head_dim)) - 1.0) < 1e-6, "[gguf] ", dir,
              ": llama.cpp's gemma3 scales scores by 1 / sqrt(head_dim) (but for its 62-layer 27B), not this ",
              "config's query_pre_attn_scalar");
    LMT_CHECK(c.attn_logit_softcap == 0, "[gguf] ", dir, ": llama.cpp's gemma3 has no attention soft-cap");
    LMT_CHECK(c.rope.type == "default" && (!c.rope_sliding || c.rope_sliding->type == "default"), "[gguf] ", dir,
              ": rope scaling on gemma3 (", c.rope.type, ") is not exported (Gemma 3 1B has none)");
    one_window(c, dir, a.name);
  } else if (c.model_type == "phi3") {
    a = {"phi3", false};  // NEOX rope, fused attn_qkv and ffn_up (gate rows first: ggml's swiglu gates the first half)
    no_biases(a.name);
    LMT_CHECK(c.head_dim * c.n_head == c.n_embd, "[gguf] ", dir, ": llama.cpp's phi3 needs head_dim * heads (",
              c.head_dim * c.n_head, ") = hidden_size (", c.n_embd, ")");
  } else if (c.model_type == "qwen2") {
    a = {"qwen2", false};
    LMT_CHECK(!c.attention_bias && !c.mlp_bias, "[gguf] ", dir,
              ": llama.cpp's qwen2 takes q/k/v biases only (this config has o_proj or MLP biases)");
    LMT_CHECK(c.head_dim * c.n_head == c.n_embd, "[gguf] ", dir, ": llama.cpp's qwen2 needs head_dim * heads (",
              c.head_dim * c.n_head, ") = hidden_size (", c.n_embd, ")");
  } else if (c.model_type == "qwen3") {
    a = {"qwen3", false};
    no_biases(a.name);
  } else if (c.model_type == "qwen3_moe") {
    a = {"qwen3moe", false};  // qwen3's block (q/k norms, NEOX rope) with experts
    no_biases(a.name);
    all_moe(a.name);
  } else {
    fail("[gguf] ", dir, ": model_type ", c.model_type,
         " cannot be exported to GGUF (lmtune exports llama, mistral, mixtral, granite, smollm3, olmo2, gemma, "
         "gemma2, gemma3_text, phi3, qwen2, qwen3, qwen3_moe)");
  }
  const nn::Activation act = is_gemma(a.name) ? nn::Activation::gelu_tanh : nn::Activation::silu;
  LMT_CHECK(c.activation == act, "[gguf] ", dir, ": llama.cpp's ", a.name, " uses ",
            act == nn::Activation::silu ? "SiLU" : "tanh-approximated GELU", ", not this config's hidden_act");
  LMT_CHECK(c.rope.type == "default" || c.rope.type == "linear" || (c.rope.type == "llama3" && a.name == "llama") ||
                (c.rope.type == "longrope" && a.name == "phi3"),
            "[gguf] ", dir, ": rope type ", c.rope.type, " is not exported for llama.cpp's ", a.name);
  LMT_CHECK(c.head_dim % 2 == 0, "[gguf] ", dir, ": head_dim ", c.head_dim, " is odd");
  // What only some architectures' graphs hold (a config of another family never sets these).
  LMT_CHECK(c.rotary_dim == 0 || c.rotary_dim == c.head_dim || a.name == "phi3", "[gguf] ", dir,
            ": a partial rotary (partial_rotary_factor) is not exported for llama.cpp's ", a.name);
  LMT_CHECK(c.attn_logit_softcap == 0 || a.name == "gemma2", "[gguf] ", dir, ": llama.cpp's ", a.name,
            " has no attention soft-cap (attn_logit_softcapping)");
  LMT_CHECK(c.final_logit_softcap == 0 || a.name == "gemma2" || a.name == "gemma3", "[gguf] ", dir, ": llama.cpp's ",
            a.name, " has no logit soft-cap (final_logit_softcapping)");
  return a;
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
  // phi3's partial rotary: only the first rotary_dim dimensions of each head rotate.
  w.set(k + "rope.dimension_count", Value::u32(uint32_t(c.rotary_dim > 0 ? c.rotary_dim : c.head_dim)));
  w.set(k + "attention.key_length", Value::u32(uint32_t(c.head_dim)));
  w.set(k + "attention.value_length", Value::u32(uint32_t(c.head_dim)));
  if (c.n_expert > 0) {  // convert_hf_to_gguf's MixtralModel / Qwen3MoeModel
    w.set(k + "expert_count", Value::u32(uint32_t(c.n_expert)));
    w.set(k + "expert_used_count", Value::u32(uint32_t(c.n_expert_used)));
    if (a.name == "qwen3moe") w.set(k + "expert_feed_forward_length", Value::u32(uint32_t(c.n_ff_expert)));
  }
  if (a.name == "granite") {  // convert_hf_to_gguf's GraniteModel: the config's multipliers as they are
    w.set(k + "attention.scale", Value::f32(float(c.attn_scale)));
    w.set(k + "embedding_scale", Value::f32(float(c.embed_scale)));
    w.set(k + "residual_scale", Value::f32(float(c.residual_scale)));
    w.set(k + "logit_scale", Value::f32(float(1.0 / c.logit_scale)));  // logits_scaling: llama.cpp divides
  }
  if (a.name == "gemma3") {  // convert_hf_to_gguf's Gemma3Model, and the sliding layers as a list
    if (const int64_t window = one_window(c, dir, a.name); window > 0) {
      w.set(k + "attention.sliding_window", Value::u32(uint32_t(window)));
      set_window_pattern(w, k, c);
      w.set(k + "rope.freq_base_swa", Value::f32(float(c.rope_sliding ? c.rope_sliding->theta : c.rope.theta)));
    }
    if (c.final_logit_softcap > 0) w.set(k + "final_logit_softcapping", Value::f32(float(c.final_logit_softcap)));
  }
  if (a.name == "gemma2") {  // convert_hf_to_gguf's Gemma2Model; the pattern always (llama.cpp's default: every 2nd)
    if (const int64_t window = one_window(c, dir, a.name); window > 0)
      w.set(k + "attention.sliding_window", Value::u32(uint32_t(window)));
    set_window_pattern(w, k, c);
    w.set(k + "attn_logit_softcapping", Value::f32(float(c.attn_logit_softcap)));
    w.set(k + "final_logit_softcapping", Value::f32(float(c.final_logit_softcap)));
  }
  if (c.rope.type == "linear") {
    w.set(k + "rope.scaling.type", Value::str("linear"));
    w.set(k + "rope.scaling.factor", Value::f32(float(c.rope.factor)));
  }
  if (c.rope.type == "longrope") {  // convert_hf_to_gguf's Phi3MiniModel, the attention factor as transformers'
    w.set(k + "rope.scaling.attn_factor", Value::f32(float(c.rope.attention_factor)));
    w.set(k + "rope.scaling.original_context_length", Value::u32(uint32_t(c.rope.original_max_position_embeddings)));
    std::fprintf(stderr,
                 "[gguf] note: llama.cpp applies %s's long rope factors whenever its context (-c) exceeds "
                 "original_max_position_embeddings (%lld), to every position; transformers and lmtune switch to them "
                 "only once a text is longer\n",
                 dir.c_str(), (long long)c.rope.original_max_position_embeddings);
  }
  for (int64_t win : c.layer_window)
    if (win > 0 && win < c.max_position_embeddings && a.name != "gemma3" && a.name != "gemma2") {
      std::fprintf(stderr,
                   "[gguf] note: %s has a sliding window of %lld tokens; llama.cpp's %s ignores it, so texts "
                   "longer than the window differ\n",
                   dir.c_str(), (long long)win, a.name.c_str());
      break;
    }
}

std::vector<std::pair<std::string, std::vector<float>>> config_tensors(const ModelConfig& c, const Arch&) {
  std::vector<std::pair<std::string, std::vector<float>>> out;
  if (c.rope.type == "llama3") out.emplace_back("rope_freqs.weight", llama3_rope_factors(c));
  if (c.rope.type == "longrope") {  // per-frequency divisors over the rotated pairs, as the config lists them
    const size_t half = size_t((c.rotary_dim > 0 ? c.rotary_dim : c.head_dim) / 2);
    LMT_CHECK(c.rope.long_factor.size() == half && c.rope.short_factor.size() == half, "[gguf] longrope's factors ",
              "have ", c.rope.long_factor.size(), " and ", c.rope.short_factor.size(), " entries, not ", half);
    out.emplace_back("rope_factors_long.weight",
                     std::vector<float>(c.rope.long_factor.begin(), c.rope.long_factor.end()));
    out.emplace_back("rope_factors_short.weight",
                     std::vector<float>(c.rope.short_factor.begin(), c.rope.short_factor.end()));
  }
  return out;
}

}  // namespace lmtune::cli::gguf_export
