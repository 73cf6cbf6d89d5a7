// Prompt cache files (runtime/prompt_cache_file.h) on models/default (CPU, f32): a saved and
// reloaded cache holds the same bytes (dense and --kv-bits), generation continued from it equals
// generation over the whole prompt, the file has mlx-lm's names and metadata, and files that do
// not fit the model (layers, kv heads, head_dim, dtype, quantization) or are damaged are refused
// naming the file and the field.
#include <gtest/gtest.h>

#include <unistd.h>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "io/safetensors.h"
#include "runtime/generate.h"
#include "runtime/prompt_cache_file.h"

using namespace lmtune;
namespace fs = std::filesystem;

namespace {

std::unique_ptr<Model> default_model() { return load_model(LMTUNE_DEFAULT_MODEL_DIR, Device::cpu, DType::f32); }

std::vector<int32_t> tokens(size_t n, int32_t first) {
  std::vector<int32_t> p(n);
  for (size_t i = 0; i < n; ++i) p[i] = int32_t((first + 37 * int32_t(i)) % 2000);
  return p;
}

std::string temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("lmtune-prompt-cache-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

void feed(Model& m, DenseKVCache& c, const std::vector<int32_t>& ids) {
  (void)m.forward(Tensor::from_i32(ids, {1, int64_t(ids.size())}), c, true);
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(PromptCacheFile, RoundTripKeepsTheBytesAndTheContinuation) {
  auto model = default_model();
  const std::string dir = temp_dir("roundtrip");
  const std::vector<int32_t> prefix = tokens(11, 100), suffix = tokens(6, 900);
  for (int bits : {0, 4}) {
    KVQuantization q;
    q.bits = bits;
    q.start = 0;
    DenseKVCache saved(model->config(), Device::cpu, DType::f32);
    saved.set_quantization(q);
    feed(*model, saved, prefix);
    ASSERT_EQ(saved.quantized(), bits > 0);
    const std::string path = dir + "/c" + std::to_string(bits) + ".safetensors";
    save_prompt_cache(path, saved, {{"model", "m"}, {"tokenizer_config", "{}"}});
    // Nothing but the file is left in the folder (temporary name + rename).
    EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), bits > 0 ? 2 : 1);

    DenseKVCache loaded(model->config(), Device::cpu, DType::f32);
    loaded.set_quantization(q);
    PromptCacheInfo info = load_prompt_cache(path, loaded);
    EXPECT_EQ(info.tokens, 11);
    EXPECT_EQ(info.metadata.at("model"), "m");
    EXPECT_EQ(info.kv_bits, bits);
    ASSERT_EQ(loaded.offset(), 11);
    EXPECT_EQ(loaded.quantized(), bits > 0);
    for (int64_t l = 0; l < model->config().n_layer; ++l) {
      std::vector<Tensor> a = saved.held_planes(l), b = loaded.held_planes(l);
      ASSERT_EQ(a.size(), b.size());
      for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(same_bytes(a[i], b[i])) << "layer " << l << " plane " << i;
    }

    // Continuing from the file = running the whole prompt (prefill split at the same place).
    GenerationConfig cfg;
    cfg.max_tokens = 16;
    cfg.prefill_step_size = int64_t(prefix.size());
    std::vector<int32_t> whole = prefix;
    whole.insert(whole.end(), suffix.begin(), suffix.end());
    DenseKVCache fresh(model->config(), Device::cpu, DType::f32);
    fresh.set_quantization(q);
    Sampler s1(SamplerOptions{}, 0), s2(SamplerOptions{}, 0);
    Generator g1(*model, fresh, s1), g2(*model, loaded, s2);
    const std::vector<int32_t> ref = g1.generate(whole, cfg).tokens;
    EXPECT_EQ(g2.generate(suffix, cfg).tokens, ref) << "kv bits " << bits;
    EXPECT_EQ(loaded.offset(), fresh.offset());
  }
  fs::remove_all(dir);
}

TEST(PromptCacheFile, MlxLayoutAndMetadata) {
  auto model = default_model();
  const std::string dir = temp_dir("layout");
  DenseKVCache cache(model->config(), Device::cpu, DType::f32);
  feed(*model, cache, tokens(7, 5));
  save_prompt_cache(dir + "/c.safetensors", cache, {{"model", "folder"}, {"tokenizer_config", "{}"}});
  SafetensorsFile f(dir + "/c.safetensors");
  const ModelConfig& c = model->config();
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const std::string p = std::to_string(l);
    for (const char* kv : {".0", ".1"})
      EXPECT_EQ(f.info(p + kv).shape, (Shape{1, c.n_kv_head, 7, c.head_dim})) << p + kv;
    EXPECT_EQ(f.info(p + ".2").dtype, DType::i32);
    EXPECT_EQ(f.info(p + ".2").shape, Shape{});
    EXPECT_EQ(f.metadata().at("1." + p), "KVCache");
    EXPECT_EQ(f.metadata().at("2." + std::to_string(l + 1) + ".0"), p + ".2");
    EXPECT_EQ(f.metadata().at("2." + std::to_string(l + 1) + ".1"), "scalar");
  }
  EXPECT_EQ(f.metadata().at("0.model"), "folder");
  EXPECT_EQ(f.metadata().at("2.0"), "");
  // (B, H, S, D) in the file: head 1's row 3 is the cache's (row 3, head 1).
  Tensor k = f.get("0.0");
  Tensor held = cache.held_planes(0)[0];  // (1, 7, H, D)
  const int64_t H = c.n_kv_head, D = c.head_dim;
  EXPECT_EQ(std::memcmp(k.data<float>() + (1 * 7 + 3) * D, held.data<float>() + (3 * H + 1) * D, size_t(D) * 4), 0);
  fs::remove_all(dir);
}

TEST(PromptCacheFile, RefusesFilesThatDoNotFit) {
  auto model = default_model();
  const std::string dir = temp_dir("refuse");
  const std::string path = dir + "/c.safetensors";
  DenseKVCache cache(model->config(), Device::cpu, DType::f32);
  feed(*model, cache, tokens(5, 3));
  save_prompt_cache(path, cache, {});

  auto load_into = [&](ModelConfig cfg, KVQuantization q = {}) {
    DenseKVCache c(cfg, Device::cpu, DType::f32);
    c.set_quantization(q);
    return error_of([&] { load_prompt_cache(path, c); });
  };
  ModelConfig layers = model->config(), heads = model->config(), dim = model->config();
  layers.n_layer = 3;
  heads.n_kv_head = 4;
  dim.head_dim = 32;

  EXPECT_NE(load_into(layers).find(path + " holds 4 layers (metadata '1.*'), the model has 3"), std::string::npos)
      << load_into(layers);
  EXPECT_NE(load_into(heads).find("'0.0' has 2 kv heads, the model has 4"), std::string::npos) << load_into(heads);
  EXPECT_NE(load_into(dim).find("'0.0' has width 64, the model's head_dim 32"), std::string::npos) << load_into(dim);
  EXPECT_EQ(load_into(model->config()), "(no error)");

  // A quantized file into a cache set to other bits, and a dense cache into a non-empty one.
  KVQuantization q4;
  q4.bits = 4;
  q4.start = 0;
  DenseKVCache qc(model->config(), Device::cpu, DType::f32);
  qc.set_quantization(q4);
  feed(*model, qc, tokens(5, 3));
  const std::string qpath = dir + "/q.safetensors";
  save_prompt_cache(qpath, qc, {});
  KVQuantization q8 = q4;
  q8.bits = 8;
  DenseKVCache c8(model->config(), Device::cpu, DType::f32);
  c8.set_quantization(q8);
  EXPECT_NE(error_of([&] { load_prompt_cache(qpath, c8); }).find("quantized to 4 bits in groups of 64"),
            std::string::npos);
  EXPECT_NE(error_of([&] { load_prompt_cache(path, cache); }).find("only an empty"), std::string::npos);

  // Integer keys; a truncated file; a safetensors file without the cache metadata.
  std::vector<std::pair<std::string, Tensor>> ts;
  for (int64_t l = 0; l < 4; ++l) {
    const std::string p = std::to_string(l);
    for (const char* kv : {".0", ".1"})
      ts.emplace_back(p + kv, Tensor::from_i32(std::vector<int32_t>(2 * 5 * 64), {1, 2, 5, 64}));
    ts.emplace_back(p + ".2", Tensor::from_i32({5}, {}));
  }
  const std::string ipath = dir + "/int.safetensors";
  save_safetensors(ipath, ts, {{"1.0", "KVCache"}, {"1.1", "KVCache"}, {"1.2", "KVCache"}, {"1.3", "KVCache"}});
  DenseKVCache fresh(model->config(), Device::cpu, DType::f32);
  EXPECT_NE(error_of([&] { load_prompt_cache(ipath, fresh); }).find("'0.0' has dtype i32, expected a float type"),
            std::string::npos)
      << error_of([&] { load_prompt_cache(ipath, fresh); });
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::string tpath = dir + "/truncated.safetensors";
  std::ofstream(tpath, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size() / 2));
  EXPECT_NE(error_of([&] { load_prompt_cache(tpath, fresh); }).find(tpath), std::string::npos)
      << error_of([&] { load_prompt_cache(tpath, fresh); });
  save_safetensors(dir + "/plain.safetensors", {{"w", Tensor::from_f32({1, 2}, {2})}});
  EXPECT_NE(error_of([&] { load_prompt_cache(dir + "/plain.safetensors", fresh); }).find("no cache classes"),
            std::string::npos);
  EXPECT_EQ(fresh.offset(), 0);

  // Saving: an empty or rotating cache is refused; a missing folder fails and leaves nothing.
  DenseKVCache empty(model->config(), Device::cpu, DType::f32),
      rotating(model->config(), Device::cpu, DType::f32, 1, 64);
  feed(*model, rotating, tokens(3, 1));
  EXPECT_NE(error_of([&] { save_prompt_cache(dir + "/e.safetensors", empty, {}); }).find("holds no tokens"),
            std::string::npos);
  EXPECT_NE(error_of([&] { save_prompt_cache(dir + "/r.safetensors", rotating, {}); }).find("rotating"),
            std::string::npos);
  EXPECT_NE(error_of([&] { save_prompt_cache(dir + "/no/such/c.safetensors", cache, {}); }), "(no error)");
  fs::remove_all(dir);
}
