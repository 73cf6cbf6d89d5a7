// mlx-lm keeps keys as (B, n_kv_head, S, head_dim) and may store a buffer longer than the offset
// (it grows in steps of 256); the cache keeps (B, S, n_kv_head, width). Rows are swapped on the
// host as raw bytes, so codes, scales and floats of any width take the same path.
#include "runtime/prompt_cache_file.h"

#include <cstring>
#include <string>

#include "core/error.h"
#include "io/safetensors.h"
#include "ops/ops.h"

namespace lmtune {

namespace {

constexpr const char* kDense = "KVCache";
constexpr const char* kQuantized = "QuantizedKVCache";

// x (B, P, Q, W) on the CPU -> (B, keep, P, W) holding x[b, p, q, w] at [b, q, p, w], q < keep.
Tensor swap_axes12(const Tensor& x, int64_t keep) {
  const int64_t B = x.dim(0), P = x.dim(1), Q = x.dim(2), W = x.dim(3);
  const size_t es = dtype_size(x.dtype()), row = size_t(W) * es;
  Tensor out = Tensor::empty({B, keep, P, W}, x.dtype(), Device::cpu);
  const char* src = static_cast<const char*>(x.raw());
  char* dst = static_cast<char*>(out.raw());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < P; ++p)
      for (int64_t q = 0; q < keep; ++q)
        std::memcpy(dst + size_t((b * keep + q) * P + p) * row, src + size_t((b * P + p) * Q + q) * row, row);
  return out;
}

struct Reader {
  const SafetensorsFile& f;
  const std::string& path;

  Tensor tensor(const std::string& name) const {
    LMT_CHECK(f.contains(name), "prompt cache file ", path, ": no tensor '", name, "'");
    return f.get(name);
  }
  int64_t scalar(const std::string& name) const {
    Tensor t = tensor(name);
    LMT_CHECK(t.numel() == 1 && (t.dtype() == DType::i32 || t.dtype() == DType::i64 || t.dtype() == DType::u32),
              "prompt cache file ", path, ": '", name, "' should be one integer, got ", t.describe());
    if (t.dtype() == DType::i64) return *t.data<int64_t>();
    if (t.dtype() == DType::u32) return int64_t(*t.data<uint32_t>());
    return *t.data<int32_t>();
  }
};

}  // namespace

PromptCacheInfo read_prompt_cache_info(const std::string& path) {
  SafetensorsFile f(path);  // throws naming the file when it is missing, damaged or truncated
  const Reader r{f, path};
  PromptCacheInfo info;
  std::map<int64_t, std::string> classes;
  for (const auto& [key, value] : f.metadata()) {
    if (key.rfind("0.", 0) == 0) {
      info.metadata[key.substr(2)] = value;
    } else if (key.rfind("1.", 0) == 0) {
      const std::string idx = key.substr(2);
      LMT_CHECK(!idx.empty() && idx.size() < 7 && idx.find_first_not_of("0123456789") == std::string::npos,
                "prompt cache file ", path, ": metadata key '", key, "' is not a layer's class");
      classes[std::stoll(idx)] = value;
    }
  }
  LMT_CHECK(!classes.empty(), "prompt cache file ", path,
            ": no cache classes in the metadata (keys '1.<layer>'; not a file written by cache_prompt?)");
  for (const auto& [l, cls] : classes) {
    LMT_CHECK(l == int64_t(info.classes.size()), "prompt cache file ", path, ": metadata '1.", info.classes.size(),
              "' (layer ", info.classes.size(), "'s class) is missing");
    LMT_CHECK(cls == kDense || cls == kQuantized, "prompt cache file ", path, ": layer ", l, " is a ", cls,
              "; lmtune loads KVCache and QuantizedKVCache layers");
    LMT_CHECK(cls == classes.begin()->second, "prompt cache file ", path, ": layer ", l, " is a ", cls, ", layer 0 a ",
              classes.begin()->second, " (mixed cache types are not supported)");
    info.classes.push_back(cls);
  }
  info.tokens = r.scalar("0.2");
  if (info.classes[0] == kQuantized) {
    info.kv_group_size = int(r.scalar("0.3"));
    info.kv_bits = int(r.scalar("0.4"));
  }
  return info;
}

PromptCacheInfo load_prompt_cache(const std::string& path, DenseKVCache& cache) {
  PromptCacheInfo info = read_prompt_cache_info(path);
  SafetensorsFile f(path);
  const Reader r{f, path};
  const int64_t L = cache.n_layer(), H = cache.n_kv_head(), D = cache.head_dim(), S = info.tokens;
  LMT_CHECK(int64_t(info.classes.size()) == L, "prompt cache file ", path, " holds ", info.classes.size(),
            " layers (metadata '1.*'), the model has ", L);
  LMT_CHECK(S >= 1, "prompt cache file ", path, ": '0.2' (the offset) is ", S, "; the cache holds no tokens");
  const bool quantized = info.classes[0] == kQuantized;
  const KVQuantization& q = cache.quantization();
  if (quantized)
    LMT_CHECK(q.bits == info.kv_bits && q.group_size == info.kv_group_size, "prompt cache file ", path,
              " is quantized to ", info.kv_bits, " bits in groups of ", info.kv_group_size, ", the cache is set to ",
              q.bits, " bits in groups of ", q.group_size);
  std::vector<std::vector<Tensor>> layers;
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = std::to_string(l);
    LMT_CHECK(r.scalar(p + ".2") == S, "prompt cache file ", path, ": '", p, ".2' (layer ", l, "'s offset) is ",
              r.scalar(p + ".2"), ", layer 0's is ", S);
    if (quantized)
      LMT_CHECK(r.scalar(p + ".3") == info.kv_group_size && r.scalar(p + ".4") == info.kv_bits, "prompt cache file ",
                path, ": layer ", l, "'s group size / bits differ from layer 0's");
    std::vector<std::string> names;
    std::vector<int64_t> widths;
    if (quantized) {
      const int64_t Wq = D * info.kv_bits / 32, G = D / std::max(info.kv_group_size, 1);
      for (const char* kv : {".0", ".1"}) {
        names.insert(names.end(), {p + kv + ".0", p + kv + ".1", p + kv + ".2"});
        widths.insert(widths.end(), {Wq, G, G});
      }
    } else {
      names = {p + ".0", p + ".1"};
      widths = {D, D};
    }
    std::vector<Tensor> planes;
    for (size_t i = 0; i < names.size(); ++i) {
      Tensor t = r.tensor(names[i]);
      const bool codes = quantized && i % 3 == 0;
      LMT_CHECK(t.ndim() == 4, "prompt cache file ", path, ": '", names[i], "' is ", t.describe(),
                ", expected (batch, kv heads, tokens, width)");
      LMT_CHECK(t.dim(0) == cache.batch(), "prompt cache file ", path, ": '", names[i], "' has batch ", t.dim(0),
                ", the cache ", cache.batch());
      LMT_CHECK(t.dim(1) == H, "prompt cache file ", path, ": '", names[i], "' has ", t.dim(1),
                " kv heads, the model has ", H);
      LMT_CHECK(t.dim(3) == widths[i], "prompt cache file ", path, ": '", names[i], "' has width ", t.dim(3),
                ", the model's head_dim ", D, " needs ", widths[i]);
      LMT_CHECK(t.dim(2) >= S, "prompt cache file ", path, ": '", names[i], "' holds ", t.dim(2),
                " tokens, fewer than its offset ", S);
      LMT_CHECK(codes ? t.dtype() == DType::u32 : is_float(t.dtype()), "prompt cache file ", path, ": '", names[i],
                "' has dtype ", dtype_name(t.dtype()), ", expected ", codes ? "u32" : "a float type");
      Tensor rows = swap_axes12(t, S);  // (B, S, H, W)
      planes.push_back(codes ? rows : ops::cast(rows, cache.dtype()));
    }
    layers.push_back(std::move(planes));
  }
  cache.load_held(layers, S, quantized);
  return info;
}

void save_prompt_cache(const std::string& path, DenseKVCache& cache,
                       const std::map<std::string, std::string>& metadata) {
  LMT_CHECK(cache.offset() > 0, "[prompt_cache] the cache holds no tokens; nothing to save to ", path);
  LMT_CHECK(cache.batch() == 1, "[prompt_cache] batch ", cache.batch(), " caches are not saved (batch 1 only)");
  LMT_CHECK(!cache.rotating(), "[prompt_cache] a rotating cache (--max-kv-size) cannot be saved to ", path);
  const bool quantized = cache.quantized();
  const std::string cls = quantized ? kQuantized : kDense;
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::map<std::string, std::string> meta;
  for (const auto& [k, v] : metadata) meta["0." + k] = v;
  meta["2.0"] = "";  // mlx-lm's scalar list starts with an empty string
  int64_t n_scalar = 0;
  auto scalar = [&](const std::string& name, int64_t v) {
    tensors.emplace_back(name, Tensor::from_i32({int32_t(v)}, {}));
    const std::string s = "2." + std::to_string(++n_scalar);
    meta[s + ".0"] = name;
    meta[s + ".1"] = "scalar";
  };
  for (int64_t l = 0; l < cache.n_layer(); ++l) {
    const std::string p = std::to_string(l);
    meta["1." + p] = cls;
    std::vector<Tensor> planes = cache.held_planes(l);  // each (B, S, H, W)
    for (size_t i = 0; i < planes.size(); ++i) {
      std::string name = quantized ? p + (i < 3 ? ".0." : ".1.") + std::to_string(i % 3) : p + "." + std::to_string(i);
      tensors.emplace_back(name, swap_axes12(planes[i], planes[i].dim(2)));
    }
    scalar(p + ".2", cache.offset());
    if (quantized) {
      scalar(p + ".3", cache.quantization().group_size);
      scalar(p + ".4", cache.quantization().bits);
    }
  }
  save_safetensors(path, tensors, meta);
}

}  // namespace lmtune
