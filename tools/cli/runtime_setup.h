// What generate, chat, benchmark and lora share: the option-table fragments for the model, device
// and sampler flags (declared once here, added to each command's table), and loading a model
// folder or Hub id with its tokenizer on the chosen device and dtype.
#pragma once
#include <memory>
#include <string>

#include "models/model.h"
#include "options.h"
#include "runtime/kv_cache.h"
#include "runtime/sampler.h"
#include "tokenizer/chat_template.h"

namespace lmtune::cli {

struct LoadOptions {
  std::string model;
  std::string adapter_path;
  std::string device;  // "" = cuda when available, else cpu
  std::string dtype;   // "" = the config's torch_dtype on CUDA (bf16 when unset); the CPU uses f32
};

struct LoadedModel {
  std::string dir;
  std::unique_ptr<Model> model;
  std::unique_ptr<ChatTemplate> chat;  // the tokenizer and its chat templates
};

// resolve_model_dir (a folder, or org/name[@revision] through the Hub cache), then the weights on
// the device in the dtype, with the adapters of adapter_path baked in when given.
LoadedModel load_for_generation(const LoadOptions& o);

// What --model accepts, for the commands' help texts.
extern const char kModelHelp[];

// Table fragments. Each adds its rows to the current group of `t`, bound to fields of `o`.
void add_model_options(Options& t, LoadOptions& o, const std::string& model_help);  // --model --adapter-path
void add_device_options(Options& t, LoadOptions& o,  // --device --dtype (recorded when set)
                        const std::string& dtype_help = "the weights' dtype on CUDA; the CPU computes in float32");
void add_sampler_options(Options& t, SamplerOptions& o);  // --temp --top-p --min-p --top-k --min-tokens-to-keep
                                                          // --xtc-probability --xtc-threshold
void add_penalty_options(Options& t, SamplerOptions& o);  // --repetition-penalty --repetition-context-size
                                                          // --presence-penalty --frequency-penalty

// mlx_lm.generate's KV-cache quantization flags (runtime/kv_cache.h's KVQuantization).
struct KVQuantOptions {
  std::optional<int64_t> kv_bits;  // none: off
  int64_t kv_group_size = 64;
  int64_t quantized_kv_start = 5000;
};
void add_kv_quant_options(Options& t, KVQuantOptions& o);  // --kv-bits --kv-group-size --quantized-kv-start
// The cache's settings; throws UsageError naming the flag unless bits are 2, 3, 4, 5, 6 or 8, the
// group size 32, 64 or 128 and the start >= 0, and (head_dim > 0, bits set) the group size divides
// the model's head_dim.
KVQuantization kv_quantization(const KVQuantOptions& o, int64_t head_dim = 0);

// mlx-lm's get_total_parameters: every weight's size, a quantized layer counting its dense weight
// (packed size x 32 / bits) and not its scales and biases; adapters not included.
double total_parameters(const Model& model);

}  // namespace lmtune::cli
