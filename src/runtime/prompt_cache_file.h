// Prompt cache files as mlx-lm's save_prompt_cache / load_prompt_cache write and read them (one
// safetensors file): per layer l, a KVCache's "l.0" keys and "l.1" values (B, n_kv_head, S,
// head_dim) and "l.2" its offset, or a QuantizedKVCache's "l.0.{0,1,2}" / "l.1.{0,1,2}" (codes u32,
// scales, biases) and "l.2" offset, "l.3" group size, "l.4" bits (i32 scalars); __metadata__
// holds the user metadata under "0.<key>", the class names under "1.<l>" and the scalar list
// under "2.*". The token ids are not stored (as in mlx-lm).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "runtime/kv_cache.h"

namespace lmtune {

struct PromptCacheInfo {
  std::map<std::string, std::string> metadata;  // the user metadata ("model", "tokenizer_config")
  std::vector<std::string> classes;             // one per layer: "KVCache" or "QuantizedKVCache"
  int64_t tokens = 0;                           // layer 0's offset
  int kv_bits = 0, kv_group_size = 0;           // a QuantizedKVCache's; 0 for KVCache
};

// Writes every held entry of a non-empty, non-rotating, batch-1 cache, atomically (a temporary
// name, then a rename), with the user metadata.
void save_prompt_cache(const std::string& path, DenseKVCache& cache,
                       const std::map<std::string, std::string>& metadata);

// The metadata and layout of a file, without its tensors. Throws naming the file and the field
// for anything this reader cannot load (a damaged or truncated file, an unknown cache class).
PromptCacheInfo read_prompt_cache_info(const std::string& path);

// Loads the file into `cache` (empty, made for the model; with the file's kv bits and group size
// set when it is quantized) and returns its info. Float keys and values are cast to the cache's
// dtype. Refuses, naming the file and the field, a different layer count, kv head count or
// head_dim, a non-float dtype, differing offsets, and mismatched quantization.
PromptCacheInfo load_prompt_cache(const std::string& path, DenseKVCache& cache);

}  // namespace lmtune
