// Safetensors reader/writer: round trips, zero-copy borrowing, sharded folders, and one test per
// kind of hostile file, each checking that the error names the file and the tensor or fact.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "lmt_st_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string p(const std::string& name) const { return (fs::path(dir_) / name).string(); }
  std::string dir_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(out.good());
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &v, 8);
  return s;
}

// A safetensors file written by hand: length prefix, header as given (no padding), then data.
std::string st_bytes(const std::string& header, const std::string& data) { return le64(header.size()) + header + data; }

// The message of the lmtune::Error that fn throws; fails the test on no throw or another type.
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-lmtune exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "did not throw";
  return "";
}

#define EXPECT_CONTAINS(msg, part) \
  EXPECT_NE(std::string(msg).find(part), std::string::npos) << "message: " << (msg) << "\nmissing: " << (part)

// Fills a tensor's bytes with a pattern that depends on seed.
Tensor patterned(const Shape& shape, DType dt, int seed) {
  Tensor t = Tensor::empty(shape, dt);
  auto* b = static_cast<unsigned char*>(t.raw());
  for (size_t i = 0; i < t.nbytes(); ++i) b[i] = static_cast<unsigned char>(i * 37 + seed * 11 + 5);
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

const std::string kF32x2 = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";

// ---------------------------------------------------------------------------------------------
// Round trips and zero-copy

TEST_F(SafetensorsTest, RoundTripEveryDtypeWithMetadata) {
  const DType dts[] = {DType::f32, DType::f16, DType::bf16, DType::i8, DType::u8, DType::i32, DType::u32, DType::i64};
  const char* names[] = {"F32", "F16", "BF16", "I8", "U8", "I32", "U32", "I64"};
  std::vector<std::pair<std::string, Tensor>> ts;
  int seed = 0;
  for (DType dt : dts) {
    ts.emplace_back(str_cat("layer.", dtype_name(dt), ".w"), patterned({3, 5}, dt, seed++));
    ts.emplace_back(str_cat("layer.", dtype_name(dt), ".v"), patterned({7}, dt, seed++));
  }
  ts.emplace_back("scalar", patterned({}, DType::f32, seed++));
  ts.emplace_back("empty", patterned({0, 4}, DType::bf16, seed++));
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "h\xc3\xa9llo \"quoted\"\n"}};
  const std::string path = p("model.safetensors");
  save_safetensors(path, ts, meta);

  SafetensorsFile f(path);
  EXPECT_EQ(f.metadata(), meta);
  EXPECT_EQ(f.data_offset() % 8, 0u);
  ASSERT_EQ(f.names().size(), ts.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    const auto& [name, want] = ts[i];
    EXPECT_EQ(f.names()[i], name);  // header keeps the given order
    ASSERT_TRUE(f.contains(name));
    const SafetensorsInfo& inf = f.info(name);
    EXPECT_TRUE(inf.supported);
    EXPECT_EQ(inf.dtype, want.dtype());
    EXPECT_EQ(inf.shape, want.shape());
    EXPECT_EQ(inf.end - inf.begin, want.nbytes());
    Tensor got = f.get(name);
    EXPECT_EQ(got.dtype(), want.dtype()) << name;
    EXPECT_EQ(got.shape(), want.shape()) << name;
    EXPECT_EQ(got.device(), Device::cpu);
    EXPECT_TRUE(same_bytes(got, want)) << name;
    // The writer orders data by element size, so every tensor is naturally aligned.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(got.raw()) % dtype_size(got.dtype()), 0u) << name;
  }
  for (size_t k = 0; k < 8; ++k) EXPECT_EQ(f.info(str_cat("layer.", dtype_name(dts[k]), ".w")).file_dtype, names[k]);
  EXPECT_FALSE(f.contains("nope"));
  EXPECT_CONTAINS(error_of([&] { f.get("nope"); }), "nope");

  auto all = load_safetensors(path);
  ASSERT_EQ(all.size(), ts.size());
  EXPECT_EQ(all[3].first, ts[3].first);
  EXPECT_TRUE(same_bytes(all[3].second, ts[3].second));
}

// Guards against a quadratic header parse (nlohmann's callback parser took minutes at 100k).
TEST_F(SafetensorsTest, ManyTensorsOpenQuickly) {
  std::vector<std::pair<std::string, Tensor>> ts;
  Tensor t = Tensor::from_f32({1.f}, {1});
  for (int i = 0; i < 20000; ++i) ts.emplace_back(str_cat("model.layers.", i, ".w"), t);
  const std::string path = p("many.safetensors");
  save_safetensors(path, ts);
  SafetensorsFile f(path);
  ASSERT_EQ(f.names().size(), ts.size());
  EXPECT_EQ(f.names()[19999], "model.layers.19999.w");
  EXPECT_EQ(f.info("model.layers.123.w").begin, 123u * 4);
}

TEST_F(SafetensorsTest, NoMetadataWritesNoMetadataKey) {
  const std::string path = p("a.safetensors");
  save_safetensors(path, {{"w", patterned({2}, DType::f32, 1)}});
  SafetensorsFile f(path);
  EXPECT_TRUE(f.metadata().empty());
  EXPECT_EQ(f.names(), std::vector<std::string>{"w"});
}

// The streamed writer (sharded training's checkpoints) asks for each tensor in turn and writes the
// very bytes save_safetensors writes for the same order; an order that would misalign a tensor, or a
// tensor unlike its entry, is refused and leaves no file.
TEST_F(SafetensorsTest, StreamedWriterEqualsWholeWriter) {
  const std::vector<std::pair<std::string, Tensor>> ts = {{"a", patterned({2, 3}, DType::f32, 1)},
                                                          {"b", patterned({5}, DType::bf16, 2)},
                                                          {"c", patterned({3}, DType::u8, 3)}};
  save_safetensors(p("whole.safetensors"), ts, {{"k", "v"}});
  std::vector<TensorEntry> entries;
  for (const auto& [n, t] : ts) entries.push_back({n, t.shape(), t.dtype()});
  std::vector<size_t> asked;
  save_safetensors_streamed(p("streamed.safetensors"), entries,
                            [&](size_t i) {
                              asked.push_back(i);
                              return ts[i].second;
                            },
                            {{"k", "v"}});
  EXPECT_EQ(asked, (std::vector<size_t>{0, 1, 2}));
  auto bytes = [](const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  EXPECT_EQ(bytes(p("streamed.safetensors")), bytes(p("whole.safetensors")));
  // bf16 after u8 would start at an odd byte.
  const std::vector<TensorEntry> bad = {{"c", {3}, DType::u8}, {"b", {5}, DType::bf16}};
  EXPECT_NE(error_of([&] {
              save_safetensors_streamed(p("bad.safetensors"), bad, [&](size_t) { return Tensor(); });
            }).find("not a multiple of its element size"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              save_safetensors_streamed(p("bad.safetensors"), {{"a", {2, 2}, DType::f32}},
                                        [&](size_t) { return ts[0].second; });
            }).find("tensor 'a' came as f32 (2, 3)"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(p("bad.safetensors")));
}

TEST_F(SafetensorsTest, GetIsZeroCopy) {
  const std::string path = p("z.safetensors");
  save_safetensors(path, {{"a", patterned({4, 4}, DType::f32, 1)}, {"b", patterned({3}, DType::bf16, 2)}});
  SafetensorsFile f(path);
  Tensor a1 = f.get("a"), a2 = f.get("a"), b = f.get("b");
  EXPECT_EQ(a1.raw(), a2.raw());
  EXPECT_TRUE(a1.same_storage(a2));
  EXPECT_EQ(a1.storage(), b.storage());  // one mapping for the whole file
  EXPECT_EQ(a1.storage()->nbytes(), f.file_size());
  const char* base = static_cast<const char*>(a1.storage()->data());
  EXPECT_EQ(static_cast<const char*>(a1.raw()), base + f.data_offset() + f.info("a").begin);
  EXPECT_EQ(static_cast<const char*>(b.raw()), base + f.data_offset() + f.info("b").begin);
}

TEST_F(SafetensorsTest, TensorOutlivesFileObjectAndUnlink) {
  const std::string path = p("o.safetensors");
  save_safetensors(path, {{"w", Tensor::from_f32({1.5f, -2.f, 3.25f}, {3})}});
  Tensor t;
  {
    SafetensorsFile f(path);
    t = f.get("w");
  }
  fs::remove(path);
  EXPECT_EQ(t.to_f32_vector(), (std::vector<float>{1.5f, -2.f, 3.25f}));
}

TEST_F(SafetensorsTest, WriteThroughTensorDoesNotReachFile) {
  const std::string path = p("cow.safetensors");
  save_safetensors(path, {{"w", Tensor::from_f32({1.f, 2.f}, {2})}});
  {
    SafetensorsFile f(path);
    Tensor t = f.get("w");
    t.data<float>()[0] = 99.f;  // private copy-on-write page
    EXPECT_EQ(t.to_f32_vector()[0], 99.f);
  }
  SafetensorsFile again(path);
  EXPECT_EQ(again.get("w").to_f32_vector(), (std::vector<float>{1.f, 2.f}));
}

TEST_F(SafetensorsTest, MisalignedTensorIsCopiedToAlignedMemory) {
  // An unpadded header (as MLX writes) can leave an F32 tensor at an odd address.
  std::string header = R"({"__metadata__":null,"w":)" + kF32x2 + "}";
  if ((8 + header.size()) % 4 == 0) header += ' ';
  ASSERT_NE((8 + header.size()) % 4, 0u);
  float vals[2] = {1.25f, -7.f};
  const std::string path = p("mis.safetensors");
  write_bytes(path, st_bytes(header, std::string(reinterpret_cast<char*>(vals), 8)));
  SafetensorsFile f(path);
  EXPECT_TRUE(f.metadata().empty());
  Tensor t = f.get("w");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 4, 0u);
  EXPECT_EQ(t.to_f32_vector(), (std::vector<float>{1.25f, -7.f}));
}

TEST_F(SafetensorsTest, ZeroSizeTensorsShareAnOffset) {
  const std::string header =
      R"({"e1":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"e2":{"dtype":"U8","shape":[3,0],"data_offsets":[0,0]},"w":)" +
      kF32x2 + "}";
  const std::string path = p("zs.safetensors");
  write_bytes(path, st_bytes(header, std::string(8, '\0')));
  SafetensorsFile f(path);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"e1", "e2", "w"}));
  EXPECT_EQ(f.get("e2").numel(), 0);
}

TEST_F(SafetensorsTest, UnsupportedDtypeOpensButGetRefuses) {
  const std::string header = R"({"w":)" + kF32x2 + R"(,"d":{"dtype":"F64","shape":[1],"data_offsets":[8,16]}})";
  const std::string path = p("f64.safetensors");
  write_bytes(path, st_bytes(header, std::string(16, '\0')));
  SafetensorsFile f(path);
  EXPECT_TRUE(f.contains("d"));
  EXPECT_FALSE(f.info("d").supported);
  EXPECT_EQ(f.info("d").file_dtype, "F64");
  f.get("w");
  std::string msg = error_of([&] { f.get("d"); });
  EXPECT_CONTAINS(msg, "F64");
  EXPECT_CONTAINS(msg, "'d'");
  EXPECT_CONTAINS(msg, "f64.safetensors");
}

// ---------------------------------------------------------------------------------------------
// Sharded folders

void write_st(const std::string& path, const std::vector<std::pair<std::string, float>>& scalars) {
  std::vector<std::pair<std::string, Tensor>> ts;
  for (const auto& [n, v] : scalars) ts.emplace_back(n, Tensor::from_f32({v, v + 1}, {2}));
  save_safetensors(path, ts);
}

TEST_F(SafetensorsTest, ShardedFolderWithIndex) {
  write_st(p("model-00001-of-00002.safetensors"), {{"a", 1.f}, {"b", 2.f}});
  write_st(p("model-00002-of-00002.safetensors"), {{"c", 3.f}});
  write_st(p("stray.safetensors"), {{"a", 9.f}});  // not named by the index: ignored
  write_bytes(p("model.safetensors.index.json"), R"({"metadata":{"total_size":24},"weight_map":{
      "a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors",
      "c":"model-00002-of-00002.safetensors"}})");
  SafetensorsModel m(dir_);
  EXPECT_EQ(m.files().size(), 2u);
  EXPECT_EQ(std::set<std::string>(m.names().begin(), m.names().end()), (std::set<std::string>{"a", "b", "c"}));
  EXPECT_EQ(m.get("a").to_f32_vector(), (std::vector<float>{1.f, 2.f}));
  EXPECT_EQ(m.get("c").to_f32_vector(), (std::vector<float>{3.f, 4.f}));
  EXPECT_CONTAINS(m.file_of("c").path(), "model-00002-of-00002.safetensors");
  EXPECT_EQ(m.info("b").shape, (Shape{2}));
  EXPECT_EQ(m.index_metadata().at("total_size"), "24");
  EXPECT_FALSE(m.contains("d"));
  EXPECT_CONTAINS(error_of([&] { m.get("d"); }), "'d'");
}

TEST_F(SafetensorsTest, IndexNamesMissingShard) {
  write_st(p("model-00001-of-00002.safetensors"), {{"a", 1.f}});
  write_bytes(p("model.safetensors.index.json"),
              R"({"weight_map":{"a":"model-00001-of-00002.safetensors","c":"model-00002-of-00002.safetensors"}})");
  std::string msg = error_of([&] { SafetensorsModel m(dir_); });
  EXPECT_CONTAINS(msg, "model-00002-of-00002.safetensors");
  EXPECT_CONTAINS(msg, "model.safetensors.index.json");
  EXPECT_CONTAINS(msg, "missing");
}

TEST_F(SafetensorsTest, IndexNamesTensorAbsentFromShard) {
  write_st(p("model-00001-of-00001.safetensors"), {{"a", 1.f}});
  write_bytes(p("model.safetensors.index.json"),
              R"({"weight_map":{"a":"model-00001-of-00001.safetensors","ghost":"model-00001-of-00001.safetensors"}})");
  std::string msg = error_of([&] { SafetensorsModel m(dir_); });
  EXPECT_CONTAINS(msg, "'ghost'");
  EXPECT_CONTAINS(msg, "model-00001-of-00001.safetensors");
}

TEST_F(SafetensorsTest, IndexShardNameMustBePlain) {
  write_bytes(p("model.safetensors.index.json"), R"({"weight_map":{"a":"../evil.safetensors"}})");
  std::string msg = error_of([&] { SafetensorsModel m(dir_); });
  EXPECT_CONTAINS(msg, "../evil.safetensors");
  EXPECT_CONTAINS(msg, "'a'");
}

TEST_F(SafetensorsTest, IndexNamesTensorTwice) {
  write_st(p("model-00001-of-00001.safetensors"), {{"a", 1.f}});
  write_bytes(p("model.safetensors.index.json"),
              R"({"weight_map":{"a":"model-00001-of-00001.safetensors","a":"model-00001-of-00001.safetensors"}})");
  std::string msg = error_of([&] { SafetensorsModel m(dir_); });
  EXPECT_CONTAINS(msg, "model.safetensors.index.json");
  EXPECT_CONTAINS(msg, "duplicate key 'a' inside 'weight_map'");
}

TEST_F(SafetensorsTest, IndexWithoutWeightMap) {
  write_bytes(p("model.safetensors.index.json"), R"({"metadata":{}})");
  EXPECT_CONTAINS(error_of([&] { SafetensorsModel m(dir_); }), "weight_map");
}

TEST_F(SafetensorsTest, DuplicateTensorAcrossShards) {
  write_st(p("one.safetensors"), {{"w", 1.f}, {"x", 1.f}});
  write_st(p("two.safetensors"), {{"w", 2.f}});
  std::string msg = error_of([&] { SafetensorsModel m(dir_); });
  EXPECT_CONTAINS(msg, "'w'");
  EXPECT_CONTAINS(msg, "one.safetensors");
  EXPECT_CONTAINS(msg, "two.safetensors");
}

TEST_F(SafetensorsTest, SingleFileIsPreferredThenEveryFile) {
  write_st(p("model.safetensors"), {{"w", 1.f}});
  write_st(p("other.safetensors"), {{"v", 1.f}});
  {
    SafetensorsModel m(dir_);
    EXPECT_EQ(m.names(), std::vector<std::string>{"w"});
  }
  fs::remove(p("model.safetensors"));
  write_st(p("another.safetensors"), {{"u", 1.f}});
  SafetensorsModel m(dir_);
  EXPECT_EQ(m.names(), (std::vector<std::string>{"u", "v"}));  // files sorted by name
}

// MLX's stacked experts read as per-expert tensors: slices of the same bytes, in the stacked one's place.
TEST_F(SafetensorsTest, SplitFirstAxis) {
  std::vector<float> v(12);
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i);
  save_safetensors(p("model.safetensors"), {{"a", Tensor::from_f32({7.f}, {1})},
                                            {"s", Tensor::from_f32(v, {3, 2, 2})},
                                            {"z", Tensor::from_f32({8.f}, {1})}});
  SafetensorsModel m(dir_);
  m.split_first_axis("s", {"e0", "e1", "e2"});
  EXPECT_EQ(m.names(), (std::vector<std::string>{"a", "e0", "e1", "e2", "z"}));
  EXPECT_FALSE(m.contains("s"));
  EXPECT_EQ(m.info("e1").shape, (Shape{2, 2}));
  EXPECT_EQ(m.get("e1").to_f32_vector(), (std::vector<float>{4.f, 5.f, 6.f, 7.f}));
  EXPECT_EQ(m.get("e2").to_f32_vector(), (std::vector<float>{8.f, 9.f, 10.f, 11.f}));
  EXPECT_EQ(m.file_of("e0").names(), m.names());
  SafetensorsModel n(dir_);
  std::string msg = error_of([&] { n.split_first_axis("s", {"e0", "e1"}); });  // 3 stacked, 2 names
  EXPECT_CONTAINS(msg, "'s'");
  EXPECT_CONTAINS(msg, "(3, 2, 2)");
  EXPECT_CONTAINS(error_of([&] { n.split_first_axis("s", {"e0", "a", "e2"}); }), "'a' is stored both");
  EXPECT_CONTAINS(error_of([&] { n.split_first_axis("a", {"e0"}); }), "'a'");  // 1-D: nothing to split
}

// A multimodal checkpoint's text tower: its prefix stripped, the vision tower's tensors dropped.
TEST_F(SafetensorsTest, RenameAndDrop) {
  save_safetensors(p("model.safetensors"), {{"language_model.model.norm.weight", Tensor::from_f32({1.f, 2.f}, {2})},
                                            {"vision_tower.w", Tensor::from_f32({3.f}, {1})},
                                            {"model.norm.weight", Tensor::from_f32({4.f}, {1})}});
  SafetensorsModel m(dir_);
  m.drop("vision_tower.w");
  EXPECT_FALSE(m.contains("vision_tower.w"));
  EXPECT_CONTAINS(error_of([&] { m.rename("language_model.model.norm.weight", "model.norm.weight"); }),
                  "'model.norm.weight', which the checkpoint also holds");
  m.drop("model.norm.weight");
  m.rename("language_model.model.norm.weight", "model.norm.weight");
  EXPECT_EQ(m.names(), std::vector<std::string>{"model.norm.weight"});
  EXPECT_EQ(m.get("model.norm.weight").to_f32_vector(), (std::vector<float>{1.f, 2.f}));
  EXPECT_EQ(m.file_of("model.norm.weight").info("model.norm.weight").shape, (Shape{2}));
  EXPECT_CONTAINS(error_of([&] { m.drop("absent"); }), "'absent'");
}

TEST_F(SafetensorsTest, FolderWithoutWeights) {
  EXPECT_CONTAINS(error_of([&] { SafetensorsModel m(dir_); }), "no model.safetensors");
  EXPECT_CONTAINS(error_of([&] { SafetensorsModel m(p("absent")); }), "not a folder");
}

// ---------------------------------------------------------------------------------------------
// Hostile files: each names the file and the tensor (or the key fact)

class HostileTest : public SafetensorsTest {
 protected:
  // Writes the bytes to bad.safetensors and returns the error from opening it.
  std::string open_error(const std::string& bytes) {
    write_bytes(p("bad.safetensors"), bytes);
    std::string msg = error_of([&] { SafetensorsFile f(p("bad.safetensors")); });
    EXPECT_CONTAINS(msg, "bad.safetensors");
    return msg;
  }
  std::string entry_error(const std::string& entry, const std::string& data) {
    return open_error(st_bytes(R"({"w":)" + entry + "}", data));
  }
};

TEST_F(HostileTest, ShorterThan8Bytes) {
  EXPECT_CONTAINS(open_error("abcde"), "too short");
  EXPECT_CONTAINS(open_error(""), "0 bytes");
}

TEST_F(HostileTest, HeaderLengthPastEndOfFile) {
  std::string msg = open_error(le64(9'000'000'000'000'000'000ull) + "{}");
  EXPECT_CONTAINS(msg, "header length 9000000000000000000 exceeds file size 10");
}

TEST_F(HostileTest, HeaderLengthOverLimit) {
  const std::string path = p("bad.safetensors");
  write_bytes(path, le64(150'000'000) + "{}");
  ASSERT_EQ(::truncate(path.c_str(), 200'000'000), 0);  // sparse
  std::string msg = error_of([&] { SafetensorsFile f(path); });
  EXPECT_CONTAINS(msg, "header length 150000000 exceeds the limit");
}

TEST_F(HostileTest, HeaderNotJson) {
  EXPECT_CONTAINS(open_error(st_bytes(R"({"w": {"dtype": )", "")), "not valid JSON");
  EXPECT_CONTAINS(open_error(st_bytes("", "")), "not valid JSON");
  EXPECT_CONTAINS(open_error(st_bytes("{\"\xff\":1}", "")), "not valid JSON");  // bad UTF-8
}

TEST_F(HostileTest, HeaderNotObject) {
  EXPECT_CONTAINS(open_error(st_bytes("[1,2]", "")), "not a JSON object");
  EXPECT_CONTAINS(open_error(st_bytes("\"str\"", "")), "not a JSON object");
}

TEST_F(HostileTest, EntryNotObject) {
  std::string msg = entry_error("[1]", "");
  EXPECT_CONTAINS(msg, "'w'");
  EXPECT_CONTAINS(msg, "not a JSON object");
}

TEST_F(HostileTest, EntryMissingFields) {
  std::string msg = entry_error(R"({"shape":[2],"data_offsets":[0,8]})", std::string(8, 0));
  EXPECT_CONTAINS(msg, "'w'");
  EXPECT_CONTAINS(msg, "no dtype");
  msg = entry_error(R"({"dtype":"F32","data_offsets":[0,8]})", std::string(8, 0));
  EXPECT_CONTAINS(msg, "'w'");
  EXPECT_CONTAINS(msg, "no shape");
  msg = entry_error(R"({"dtype":"F32","shape":[2]})", std::string(8, 0));
  EXPECT_CONTAINS(msg, "'w'");
  EXPECT_CONTAINS(msg, "no data_offsets");
}

TEST_F(HostileTest, EntryWrongJsonTypes) {
  const std::string d(8, 0);
  std::string msg = entry_error(R"({"dtype":4,"shape":[2],"data_offsets":[0,8]})", d);
  EXPECT_CONTAINS(msg, "'w'");
  EXPECT_CONTAINS(msg, "dtype is not a string");
  msg = entry_error(R"({"dtype":"F32","shape":"2","data_offsets":[0,8]})", d);
  EXPECT_CONTAINS(msg, "'w'");
  EXPECT_CONTAINS(msg, "shape is not an array");
  msg = entry_error(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})", d);
  EXPECT_CONTAINS(msg, "'w'");
  EXPECT_CONTAINS(msg, "data_offsets is not an array of two integers");
  msg = entry_error(R"({"dtype":"F32","shape":[2],"data_offsets":["0","8"]})", d);
  EXPECT_CONTAINS(msg, "'w'");
  EXPECT_CONTAINS(msg, "data_offsets[0]");
  msg = entry_error(R"({"dtype":"F32","shape":[2],"data_offsets":{"a":0,"b":8}})", d);
  EXPECT_CONTAINS(msg, "data_offsets is not an array");
}

TEST_F(HostileTest, UnknownDtype) {
  std::string msg = entry_error(R"({"dtype":"F33","shape":[2],"data_offsets":[0,8]})", std::string(8, 0));
  EXPECT_CONTAINS(msg, "'w'");
  EXPECT_CONTAINS(msg, "unknown dtype 'F33'");
}

TEST_F(HostileTest, SubByteDtypeRefused) {
  std::string msg = entry_error(R"({"dtype":"F4","shape":[2],"data_offsets":[0,1]})", std::string(1, 0));
  EXPECT_CONTAINS(msg, "'w'");
  EXPECT_CONTAINS(msg, "F4");
}

TEST_F(HostileTest, NegativeDim) {
  std::string msg = entry_error(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})", std::string(8, 0));
  EXPECT_CONTAINS(msg, "'w'");
  EXPECT_CONTAINS(msg, "shape[0] is negative: -2");
}

TEST_F(HostileTest, NonIntegerDim) {
  std::string msg = entry_error(R"({"dtype":"F32","shape":[1,2.5],"data_offsets":[0,8]})", std::string(8, 0));
  EXPECT_CONTAINS(msg, "'w'");
  EXPECT_CONTAINS(msg, "shape[1] is not a non-negative integer: 2.5");
  msg = entry_error(R"({"dtype":"F32","shape":[null],"data_offsets":[0,8]})", std::string(8, 0));
  EXPECT_CONTAINS(msg, "shape[0] is not a non-negative integer");
}

TEST_F(HostileTest, NegativeOffset) {
  std::string msg = entry_error(R"({"dtype":"F32","shape":[2],"data_offsets":[-8,0]})", std::string(8, 0));
  EXPECT_CONTAINS(msg, "'w'");
  EXPECT_CONTAINS(msg, "data_offsets[0] is negative");
}

TEST_F(HostileTest, OffsetsBeginAfterEnd) {
  std::string msg = entry_error(R"({"dtype":"F32","shape":[1],"data_offsets":[8,4]})", std::string(8, 0));
  EXPECT_CONTAINS(msg, "'w'");
  EXPECT_CONTAINS(msg, "begin 8 > end 4");
}

TEST_F(HostileTest, OffsetsPastDataSection) {
  std::string msg = entry_error(R"({"dtype":"F32","shape":[4],"data_offsets":[0,16]})", std::string(8, 0));
  EXPECT_CONTAINS(msg, "'w'");
  EXPECT_CONTAINS(msg, "end 16 is past the data section of 8 bytes");
  msg = entry_error(R"({"dtype":"U8","shape":[0],"data_offsets":[18446744073709551615,18446744073709551615]})",
                    std::string(8, 0));
  EXPECT_CONTAINS(msg, "past the data section");
}

TEST_F(HostileTest, ByteSizeMismatch) {
  std::string msg = entry_error(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})", std::string(8, 0));
  EXPECT_CONTAINS(msg, "'w'");
  EXPECT_CONTAINS(msg, "hold 8 bytes but F32 (3) needs 12");
}

TEST_F(HostileTest, NumelOverflow) {
  std::string msg =
      entry_error(R"({"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]})", std::string(8, 0));
  EXPECT_CONTAINS(msg, "'w'");
  EXPECT_CONTAINS(msg, "overflows");
  // numel fits, but numel * 4 bytes does not
  msg = entry_error(R"({"dtype":"F32","shape":[4611686018427387905],"data_offsets":[0,8]})", std::string(8, 0));
  EXPECT_CONTAINS(msg, "'w'");
  EXPECT_CONTAINS(msg, "overflows");
  msg = entry_error(R"({"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,8]})", std::string(8, 0));
  EXPECT_CONTAINS(msg, "too large");
}

TEST_F(HostileTest, OverlappingRanges) {
  std::string msg = open_error(st_bytes(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
      std::string(12, 0)));
  EXPECT_CONTAINS(msg, "'a'");
  EXPECT_CONTAINS(msg, "'b'");
  EXPECT_CONTAINS(msg, "overlap");
  // the same range twice
  msg = open_error(st_bytes(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
      std::string(8, 0)));
  EXPECT_CONTAINS(msg, "overlap");
}

TEST_F(HostileTest, GapBetweenTensors) {
  std::string msg = open_error(st_bytes(
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
      std::string(12, 0)));
  EXPECT_CONTAINS(msg, "bytes [4, 8)");
  EXPECT_CONTAINS(msg, "'b'");
}

TEST_F(HostileTest, TrailingBytesAfterLastTensor) {
  std::string msg = entry_error(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})", std::string(8, 0));
  EXPECT_CONTAINS(msg, "4 trailing bytes");
}

TEST_F(HostileTest, DuplicateTensorName) {
  std::string msg = open_error(st_bytes(R"({"w":)" + kF32x2 + R"(,"w":)" + kF32x2 + "}", std::string(8, 0)));
  EXPECT_CONTAINS(msg, "duplicate key 'w'");
}

TEST_F(HostileTest, DuplicateKeyInsideEntry) {
  std::string msg = entry_error(R"({"dtype":"F32","dtype":"I32","shape":[2],"data_offsets":[0,8]})", std::string(8, 0));
  EXPECT_CONTAINS(msg, "'w'");
  EXPECT_CONTAINS(msg, "duplicate key 'dtype'");
}

TEST_F(HostileTest, MetadataValuesMustBeStrings) {
  std::string msg = open_error(st_bytes(R"({"__metadata__":{"k":1}})", ""));
  EXPECT_CONTAINS(msg, "__metadata__");
  EXPECT_CONTAINS(msg, "'k'");
  msg = open_error(st_bytes(R"({"__metadata__":[1]})", ""));
  EXPECT_CONTAINS(msg, "__metadata__ is not a JSON object");
}

TEST_F(HostileTest, NotARegularFile) {
  fs::create_directory(p("d.safetensors"));
  EXPECT_CONTAINS(error_of([&] { SafetensorsFile f(p("d.safetensors")); }), "not a regular file");
  EXPECT_CONTAINS(error_of([&] { SafetensorsFile f(p("none.safetensors")); }), "cannot open");
}

// Every truncation and many single-byte corruptions of a valid file either open (and then every
// tensor reads in range) or throw lmtune::Error, never anything else.
TEST_F(HostileTest, TruncationsAndCorruptionsFailCleanly) {
  const std::string good = p("good.safetensors");
  save_safetensors(good, {{"a", patterned({3, 2}, DType::f32, 1)}, {"b", patterned({5}, DType::u8, 2)}}, {{"k", "v"}});
  std::ifstream in(good, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string path = p("bad.safetensors");
  for (size_t n = 0; n < bytes.size(); ++n) {
    write_bytes(path, bytes.substr(0, n));
    EXPECT_THROW(SafetensorsFile f(path), Error) << "prefix of " << n << " bytes";
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  const char subs[] = {'"', '{', '}', '[', ']', ',', ':', '9', '-', '.', 'e', ' ', '\0', '\xff'};
  int opened = 0;
  for (size_t i = 0; i < 8 + header_len; ++i) {
    for (char c : subs) {
      std::string b = bytes;
      if (b[i] == c) continue;
      b[i] = c;
      write_bytes(path, b);
      try {
        SafetensorsFile f(path);
        for (const auto& n : f.names())
          if (f.info(n).supported) f.get(n).numel();
        ++opened;
      } catch (const Error&) {
      } catch (const std::exception& e) {
        ADD_FAILURE() << "byte " << i << " = " << int(c) << ": non-lmtune exception " << e.what();
      }
    }
  }
  EXPECT_GT(opened, 0);  // e.g. a space in the padding is harmless
}

// ---------------------------------------------------------------------------------------------
// Writer refusals and atomicity

bool has_temp_files(const std::string& dir) {
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp.") != std::string::npos) return true;
  return false;
}

TEST_F(SafetensorsTest, WriterRefusesBadInput) {
  const std::string path = p("w.safetensors");
  Tensor t = Tensor::from_f32({1.f}, {1});
  std::string msg = error_of([&] { save_safetensors(path, {{"x", t}, {"x", t}}); });
  EXPECT_CONTAINS(msg, "'x'");
  EXPECT_CONTAINS(msg, "w.safetensors");
  EXPECT_CONTAINS(error_of([&] { save_safetensors(path, {{"__metadata__", t}}); }), "reserved");
  EXPECT_CONTAINS(error_of([&] { save_safetensors(path, {{"u", Tensor()}}); }), "'u' is undefined");
  EXPECT_CONTAINS(error_of([&] { save_safetensors(path, {{"bad\xff", t}}); }), "UTF-8");
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(has_temp_files(dir_));
}

TEST_F(SafetensorsTest, FailedWriteLeavesNoFile) {
  // The parent "folder" is a regular file: creating the temp file fails (even as root).
  write_bytes(p("not_a_dir"), "x");
  const std::string path = p("not_a_dir") + "/m.safetensors";
  std::string msg = error_of([&] { save_safetensors(path, {{"w", Tensor::from_f32({1.f}, {1})}}); });
  EXPECT_CONTAINS(msg, "m.safetensors");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(SafetensorsTest, FailedRenameRemovesTempFile) {
  // The target is a non-empty folder: the temp file is written, then rename fails.
  fs::create_directory(p("target.safetensors"));
  write_bytes(p("target.safetensors") + "/keep", "x");
  std::string msg = error_of([&] { save_safetensors(p("target.safetensors"), {{"w", Tensor::from_f32({1.f}, {1})}}); });
  EXPECT_CONTAINS(msg, "rename");
  EXPECT_FALSE(has_temp_files(dir_));
  EXPECT_TRUE(fs::is_directory(p("target.safetensors")));
}

TEST_F(SafetensorsTest, OverwriteReplacesAtomically) {
  const std::string path = p("m.safetensors");
  save_safetensors(path, {{"w", Tensor::from_f32({1.f}, {1})}});
  SafetensorsFile old(path);
  Tensor old_w = old.get("w");
  save_safetensors(path, {{"v", Tensor::from_f32({2.f, 3.f}, {2})}});
  EXPECT_EQ(SafetensorsFile(path).names(), std::vector<std::string>{"v"});
  EXPECT_EQ(old_w.to_f32_vector(), std::vector<float>{1.f});  // the old mapping is untouched
  EXPECT_FALSE(has_temp_files(dir_));
}

TEST_F(SafetensorsTest, AtomicFileHelper) {
  const std::string path = p("config.json");
  write_file_atomic(path, "{\"a\":1}");
  write_file_atomic(path, "{}");
  std::ifstream in(path);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(s, "{}");
  {
    AtomicFile f(p("big.bin"));
    std::string chunk(300'000, 'q');
    for (int i = 0; i < 10; ++i) f.write(chunk.data(), chunk.size());  // crosses the 1 MiB buffer
    std::string huge(3'000'000, 'z');
    f.write(huge.data(), huge.size());
    EXPECT_TRUE(fs::exists(f.temp_path()));
    f.commit();
  }
  EXPECT_EQ(fs::file_size(p("big.bin")), 6'000'000u);
  {
    AtomicFile f(p("abandoned.bin"));
    f.write("abc", 3);
  }  // destroyed without commit
  EXPECT_FALSE(fs::exists(p("abandoned.bin")));
  EXPECT_FALSE(has_temp_files(dir_));
}

}  // namespace
}  // namespace lmtune
