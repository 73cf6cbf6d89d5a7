// The mixture-of-experts families' config fields. mixtral: the llama block (mistral's sliding
// window) with every MLP a block_sparse_moe of num_local_experts experts (w1 gate, w3 up, w2 down,
// intermediate_size wide), the top num_experts_per_tok renormalized. qwen3_moe: the qwen3 block
// with MoE MLPs of num_experts experts (moe_intermediate_size wide) in the layers that
// decoder_sparse_step marks and mlp_only_layers does not, renormalized when norm_topk_prob. Also the
// mapping of mlx-lm's stacked expert layout onto the per-expert one (models/checkpoint_layout.h).
#include <array>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"
#include "models/checkpoint_layout.h"
#include "models/config.h"

namespace lmtune {

void parse_mistral(const ConfigReader& r, ModelConfig& c);       // models/llama.cpp
void parse_qwen_sliding(const ConfigReader& r, ModelConfig& c);  // models/qwen2.cpp

namespace {
void read_experts(const ConfigReader& r, ModelConfig& c, const char* n_key, int64_t width) {
  c.n_expert = r.required_int(n_key);
  c.n_expert_used = r.required_int("num_experts_per_tok");
  c.n_ff_expert = width;
  // The largest released mixtures hold ~12k experts in all (Qwen3-235B: 94 layers x 128): a bound far above
  // them keeps a hostile file from sizing millions of tensor names.
  LMT_CHECK(c.n_expert <= 4096 && c.n_expert * c.n_layer <= (int64_t(1) << 18), "[config] ", r.src, ": ", n_key, " ",
            c.n_expert, " over ", c.n_layer, " layers is beyond any released model");
  LMT_CHECK(c.n_expert_used <= c.n_expert, "[config] ", r.src, ": num_experts_per_tok ", c.n_expert_used, " of ", n_key,
            " ", c.n_expert);
  LMT_CHECK(c.n_ff_expert >= 1 && c.n_ff_expert <= (int64_t(1) << 20), "[config] ", r.src,
            ": the experts' intermediate size must be 1 to 2^20, got ", c.n_ff_expert);
}
}  // namespace

void parse_mixtral(const ConfigReader& r, ModelConfig& c) {
  parse_mistral(r, c);
  read_experts(r, c, "num_local_experts", c.n_ff);
  c.norm_topk_prob = true;
  LMT_CHECK(r.num_or("router_jitter_noise", 0.0) == 0.0, "[config] ", r.src,
            ": router_jitter_noise is a training-time perturbation lmtune does not apply; set it to 0");
  c.moe_block = "block_sparse_moe";
  c.expert_gate = "w1", c.expert_up = "w3", c.expert_down = "w2";
  c.layer_moe.assign(size_t(c.n_layer), true);
}

void parse_qwen3_moe(const ConfigReader& r, ModelConfig& c) {
  c.qk_norm = true;
  c.attention_bias = r.bool_or("attention_bias", false);
  parse_qwen_sliding(r, c);
  // The Hub's files say num_experts; transformers 5 writes it as num_local_experts.
  read_experts(r, c, r.has("num_experts") ? "num_experts" : "num_local_experts",
               r.required_int("moe_intermediate_size"));
  c.norm_topk_prob = r.bool_or("norm_topk_prob", false);
  const int64_t step = r.int_or("decoder_sparse_step", 1);
  LMT_CHECK(step >= 1, "[config] ", r.src, ": decoder_sparse_step must be positive, got ", step);
  std::vector<bool> dense(size_t(c.n_layer), false);
  if (r.has("mlp_only_layers")) {
    const nlohmann::json& l = r.j.at("mlp_only_layers");
    LMT_CHECK(l.is_array(), "[config] ", r.src, ": mlp_only_layers must be a list of layer indices");
    for (const nlohmann::json& v : l) {
      LMT_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() < c.n_layer, "[config] ", r.src,
                ": mlp_only_layers holds ", v.dump(), ", not a layer index below ", c.n_layer);
      dense[size_t(v.get<int64_t>())] = true;
    }
  }
  for (int64_t i = 0; i < c.n_layer; ++i) c.layer_moe[size_t(i)] = !dense[size_t(i)] && (i + 1) % step == 0;
}

namespace {
// The experts' linear layers: (cfg's per-expert name, mlx-lm's stacked name).
std::array<std::pair<std::string, std::string>, 3> expert_linears(const ModelConfig& c) {
  return {{{c.expert_gate, "gate_proj"}, {c.expert_up, "up_proj"}, {c.expert_down, "down_proj"}}};
}
}  // namespace

void read_stacked_experts(const ModelConfig& c, SafetensorsModel& files) {
  for (size_t i = 0; i < c.layer_moe.size() && c.n_expert > 0; ++i) {
    if (!c.layer_moe[i]) continue;
    const std::string block = "model.layers." + std::to_string(i) + "." + c.moe_block + ".";
    for (const auto& [hf, mlx] : expert_linears(c))
      for (const char* part : {".weight", ".scales", ".biases"}) {
        const std::string stacked = block + "switch_mlp." + mlx + part;
        if (!files.contains(stacked)) continue;
        std::vector<std::string> parts;
        for (int64_t e = 0; e < c.n_expert; ++e)
          parts.push_back(block + "experts." + std::to_string(e) + "." + hf + part);
        files.split_first_axis(stacked, parts);
      }
  }
}

std::string stacked_expert_path(const ModelConfig& c, const std::string& path, int64_t* expert) {
  if (c.n_expert == 0) return {};
  const std::string mid = c.moe_block + ".experts.";
  const size_t at = path.find(mid);
  if (at == std::string::npos || (at > 0 && path[at - 1] != '.')) return {};
  const size_t num = at + mid.size(), dot = path.find('.', num);
  if (dot == std::string::npos || dot == num || path.find_first_not_of("0123456789", num) != dot) return {};
  const std::string leaf = path.substr(dot + 1);
  for (const auto& [hf, mlx] : expert_linears(c))
    if (leaf == hf) {
      if (expert) *expert = std::stoll(path.substr(num, dot - num));
      return path.substr(0, at) + c.moe_block + ".switch_mlp." + mlx;
    }
  return {};
}

std::string per_expert_path(const ModelConfig& c, const std::string& stacked, int64_t e) {
  if (c.n_expert == 0) return {};
  const std::string mid = c.moe_block + ".switch_mlp.";
  const size_t at = stacked.find(mid);
  if (at == std::string::npos || (at > 0 && stacked[at - 1] != '.')) return {};
  const std::string leaf = stacked.substr(at + mid.size());
  for (const auto& [hf, mlx] : expert_linears(c))
    if (leaf == mlx) return stacked.substr(0, at) + c.moe_block + ".experts." + std::to_string(e) + "." + hf;
  return {};
}

}  // namespace lmtune
