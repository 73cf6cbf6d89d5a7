// Typed model configuration parsed from a Hugging Face config.json.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace lmtune {

struct RopeConfig {
  std::string type = "default";  // default | linear | llama3
  double theta = 10000.0;
  double factor = 1.0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string model_type;  // llama | mistral | qwen2
  int64_t n_vocab = 0, n_embd = 0, n_ff = 0, n_layer = 0, n_head = 0, n_kv_head = 0, head_dim = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v/o biases (llama's attention_bias)
  bool qkv_bias = false;        // q/k/v only (qwen2)
  bool mlp_bias = false;
  std::string hidden_act = "silu";
  std::vector<int64_t> layer_window;  // per layer: 0 = full attention, else sliding window size
  int64_t max_position_embeddings = 0;
  std::string torch_dtype;  // as the file says ("bfloat16", ...), may be empty

  // Throws naming the file and the field on a missing, mistyped or unsupported value.
  static ModelConfig from_json_text(const std::string& text, const std::string& source);
  static ModelConfig load(const std::string& model_dir);  // reads model_dir/config.json
};

// The rotary inverse frequencies (head_dim / 2) after the config's scaling.
std::vector<float> rope_inv_freq(const ModelConfig& cfg);

}  // namespace lmtune
