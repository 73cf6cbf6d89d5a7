// What `lmtune convert` writes, decided before any weight is touched, by mlx_lm.convert's rules
// (convert.py, utils.py: load_model, quantize_model, dequantize_model, save_model, save_config):
// the model's modules in mlx-lm's tree order, the dtype cast, which layers are quantized with
// which parameters (incl. the mixed_* recipes), the output tensors and shards, config.json and
// the bits-per-weight figure. produce() then makes one module's output tensors.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "convert_io.h"
#include "io/safetensors.h"
#include "models/config.h"
#include "quant/quant.h"

namespace lmtune::cli::convert {

struct Request {
  std::string source;  // the model folder (a Hub id already resolved)
  bool quantize = false, dequantize = false;
  std::optional<int64_t> q_group_size, q_bits;  // unset: the mode's default
  std::string q_mode = "affine";
  std::optional<std::string> quant_predicate;    // mixed_2_6 | mixed_3_4 | mixed_3_6 | mixed_4_6
  std::optional<std::string> dtype;              // float16 | bfloat16 | float32
  uint64_t max_shard_bytes = uint64_t(5) << 30;  // mlx-lm's MAX_FILE_SIZE_GB = 5, shifted by 30
  // convert casts to --dtype / torch_dtype; fuse writes the dtypes mlx-lm's load() gives (no cast).
  bool cast = true;
  // fuse: layers whose weight is replaced. apply() takes the layer's dense weight (its source
  // dtype; a quantized layer dequantized as mx.dequantize does) and returns the merged weight, of
  // dtype out_dtype (unset: the dense weight's); a quantized layer is then quantized again with its own parameters
  // unless dequantize is set (mlx-lm's LoRALinear.fuse / DoRALinear.fuse).
  struct Merge {
    std::optional<DType> out_dtype;
    std::function<Tensor(const Tensor&)> apply;
  };
  std::map<std::string, Merge> merges;  // by layer path ("model.layers.0.self_attn.q_proj")
  // fuse, lmtune's way on a quantized base (fuse_keep.h): a merged layer's output chosen per layer
  // instead of its source parameters: quantized with `quant`, or (unset) dense; a dense layer in
  // f32 (f32_merge) is merged in f32 from the dequantized weight. config.json records the choice as
  // the layer's own "quantization" entry (its parameters, or false).
  struct MergeOutput {
    std::optional<quant::QuantParams> quant;
    bool f32_merge = false;
  };
  std::map<std::string, MergeOutput> merge_outputs;  // by layer path
  // fuse of a `full` adapter: tensors written instead of the source's, as they are (dense layers only).
  std::map<std::string, Tensor> replace;  // by tensor name ("model.layers.3.mlp.up_proj.weight")
};

// A module of mlx-lm's model that holds parameters: Linear, Embedding or RMSNorm.
struct Leaf {
  std::string path;          // "model.layers.0.mlp.down_proj"
  bool quantizable = false;  // Linear or Embedding: the modules with mlx's to_quantized
  bool has_bias = false;
  Shape shape;                                  // the dense weight: (out, in), (n_vocab, n_embd) or (n,)
  DType source_dtype = DType::f32;              // the float dtype in the source (of the scales if quantized)
  std::optional<quant::QuantParams> in_quant;   // quantized in the source folder
  std::optional<quant::QuantParams> out_quant;  // quantized in the output
  const Request::Merge* merge = nullptr;        // fuse: the layer's weight is merged
  DType merged_dtype = DType::f32;              // with merge: the merged weight's dtype
  bool f32_merge = false;                       // with merge: merged from the weight cast to f32
  size_t first_tensor = 0, n_tensors = 0;       // its slice of Plan::tensors
  // > 0: a mixture's experts as mlx-lm's SwitchLinear ("...switch_mlp.gate_proj"), this many stacked
  // along a first axis of every tensor (shape stays one expert's (out, in)); 0: a single module.
  int64_t experts = 0;
  Shape stored_shape() const {
    Shape s = shape;
    if (experts) s.insert(s.begin(), experts);
    return s;
  }
};

class Plan {
 public:
  // Reads the folder's config.json, generation_config.json and safetensors headers and decides
  // everything; throws on a folder, a flag combination or parameters mlx-lm refuses.
  explicit Plan(const Request& r);

  // --dtype, else config torch_dtype, else text_config.dtype, when one of the three names.
  const std::optional<std::string>& cast_name() const { return cast_name_; }
  double bits_per_weight() const;  // quantize_model's compute_bits_per_weight
  int64_t total_parameters() const { return total_parameters_; }
  uint64_t total_size() const;  // bytes of every output tensor
  // Layers left dense because their input size is not a multiple of the group size.
  const std::vector<std::string>& not_divisible() const { return not_divisible_; }

  const std::vector<Leaf>& leaves() const { return leaves_; }
  const std::vector<TensorEntry>& tensors() const { return tensors_; }  // mlx-lm's order
  // make_shards: consecutive tensors, a new shard when the next would pass max_shard_bytes.
  std::vector<std::vector<size_t>> shards() const;
  static std::string shard_name(size_t i, size_t n);  // model.safetensors | model-0000i-of-0000n.safetensors

  // config.json as save_config writes it: sorted top level, _name_or_path and vision_config
  // removed, quantization_config = quantization.
  std::string config_text() const;
  // model.safetensors.index.json: total_size, total_parameters and the sorted weight_map.
  std::string index_text(const std::vector<std::vector<size_t>>& shards) const;

  // A merged layer's source weight, dense (a quantized one dequantized as mx.dequantize does),
  // and the merged weight: in the merged dtype, or in f32 (the merge computed in f32) with f32.
  Tensor source_dense(const Leaf& leaf) const;
  Tensor merged(const Leaf& leaf, bool f32) const;

  // One module's output tensors (CPU), in the order of its Plan::tensors slice.
  std::vector<std::pair<std::string, Tensor>> produce(const Leaf& leaf) const;

 private:
  void read_leaves(const nlohmann::ordered_json& dense_config);
  // The source tensor holding a leaf's `part` (".weight", ".scales", ...): for stacked experts,
  // expert e's (the source is read per expert, models/checkpoint_layout.h).
  std::string source_name(const Leaf& l, const std::string& part, int64_t expert) const;
  // A leaf's `part` as mlx-lm holds it: stacked experts copied into one (experts, ...) tensor.
  Tensor source_tensor(const Leaf& l, const std::string& part) const;
  // A source-quantized leaf's packed weight, scales and biases (the float ones cast to `cast`).
  quant::QuantizedWeight source_quantized(const Leaf& l, const std::optional<DType>& cast) const;
  void plan_quantization(const Request& r);
  void plan_tensors();

  Request req_;
  nlohmann::ordered_json config_;  // the output config.json (not yet sorted)
  SafetensorsModel source_;
  std::string model_type_;
  ModelConfig mc_;  // the dense config's reading
  int64_t n_layer_ = 0;
  std::optional<std::string> cast_name_;
  std::optional<DType> cast_;
  std::vector<Leaf> leaves_;
  std::vector<TensorEntry> tensors_;
  std::vector<std::string> not_divisible_;
  int64_t total_parameters_ = 0;
  uint64_t nonparameter_bytes_ = 0;  // arrays mlx-lm's modules hold besides parameters (Llama3RoPE._freqs)
};

// Writes the planned model to out_path as mlx-lm's save() does (shards, index, config.json, the
// tokenizer files, generation_config.json, *.py of `source`, README.md with base_model when set),
// under "<out_path>.tmp.<pid>" renamed into place at the end (convert_io.h: StagedFolder).
void write_folder(const Plan& plan, const std::string& source, const std::string& out_path,
                  const std::optional<std::string>& base_model);

}  // namespace lmtune::cli::convert
