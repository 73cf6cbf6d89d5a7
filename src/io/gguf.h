// GGUF v3 (llama.cpp's file format), little endian: a writer (metadata key/values of every type,
// tensor infos, data aligned to general.alignment, default 32; written atomically through
// "<path>.tmp.<pid>" and renamed, tensors streamed one at a time) and a validating reader.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace lmtune::gguf {

// The value types of GGUF metadata (gguf.h's enum gguf_type).
enum class ValueType : uint32_t { u8 = 0, i8, u16, i16, u32, i32, f32, boolean, string, array, u64, i64, f64 };
const char* value_type_name(ValueType t);

// The ggml tensor types lmtune writes or reads (ggml.h's enum ggml_type numbers).
enum class TensorType : uint32_t {
  f32 = 0,
  f16 = 1,
  q4_0 = 2,
  q5_0 = 6,
  q5_1 = 7,
  q8_0 = 8,
  q4_k = 12,
  q5_k = 13,
  q6_k = 14,
  bf16 = 30
};
const char* tensor_type_name(TensorType t);  // "F32", "F16", "Q4_0", "Q5_0", "Q5_1", "Q8_0", "Q4_K", ..., "BF16"
int64_t block_elems(TensorType t);           // elements per block: 1; 32 (Q4_0 ... Q8_0); 256 (the K-quants)
uint64_t block_bytes(TensorType t);          // bytes per block
uint64_t tensor_bytes(TensorType t, const std::vector<int64_t>& dims);  // throws if the rows do not divide

// One metadata value: a scalar of `type`, or an array of `elem` (nested arrays are not supported).
struct Value {
  ValueType type = ValueType::u32;
  ValueType elem = ValueType::u8;  // arrays only
  uint64_t u = 0;                  // u8..u64, bool
  int64_t i = 0;                   // i8..i64
  double f = 0;                    // f32, f64
  std::string s;                   // string
  std::vector<Value> arr;          // array elements (each of type elem)

  static Value u32(uint32_t v);
  static Value i32(int32_t v);
  static Value u64(uint64_t v);
  static Value f32(float v);
  static Value boolean(bool v);
  static Value str(std::string v);
  static Value strings(const std::vector<std::string>& v);
  static Value f32s(const std::vector<float>& v);
  static Value i32s(const std::vector<int32_t>& v);
};

struct TensorInfo {
  std::string name;
  TensorType type = TensorType::f32;
  std::vector<int64_t> dims;  // row-major (PyTorch order, outermost first); the file stores them reversed (ne)
  uint64_t offset = 0;        // from the start of the data section
  uint64_t nbytes = 0;
};

class Writer {
 public:
  // A metadata key/value, in insertion order; a repeated key is an error naming it.
  void set(const std::string& key, Value v);
  // A tensor: its bytes come from produce() when write() reaches it, and must be exactly
  // tensor_bytes(type, dims) long (ggml's layout: row-major, rows of blocks).
  void add_tensor(const std::string& name, TensorType type, std::vector<int64_t> dims,
                  std::function<std::string()> produce);
  void add_tensor(const std::string& name, TensorType type, std::vector<int64_t> dims, std::string bytes);
  // Writes the file atomically; an existing path is replaced only when everything was written.
  void write(const std::string& path) const;
  size_t n_tensors() const { return tensors_.size(); }

 private:
  uint64_t alignment() const;
  std::vector<std::pair<std::string, Value>> kv_;
  std::vector<TensorInfo> tensors_;
  std::vector<std::function<std::string()>> producers_;
};

// A GGUF file read into memory, every length and offset checked against the file's size; a
// malformed file is refused with an lmtune::Error naming it.
class Reader {
 public:
  explicit Reader(const std::string& path);
  uint32_t version() const { return version_; }
  const std::vector<std::pair<std::string, Value>>& kv() const { return kv_; }
  const Value* find(const std::string& key) const;  // nullptr when absent
  const Value& get(const std::string& key) const;   // throws naming the key and the file
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo& tensor(const std::string& name) const;  // throws naming it
  std::string tensor_data(const std::string& name) const;   // the tensor's bytes
  uint64_t data_offset() const { return data_offset_; }

 private:
  std::string path_, bytes_;
  uint32_t version_ = 0;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, Value>> kv_;
  std::vector<TensorInfo> tensors_;
};

}  // namespace lmtune::gguf
