// GGUF v3 writer and reader (see gguf.h). Layout: "GGUF", u32 version, u64 n_tensors, u64 n_kv;
// the key/values (u64-length string key, u32 type, value); the tensor infos (name, u32 n_dims,
// u64 ne[n_dims] innermost first, u32 ggml type, u64 offset); zero padding to the alignment; the data.
#include "io/gguf.h"

#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <set>

#include "core/error.h"
#include "io/atomic_file.h"

namespace lmtune::gguf {

namespace {

constexpr uint32_t kVersion = 3;
constexpr uint64_t kDefaultAlignment = 32;

template <typename T>
void put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // x86-64 / aarch64 Linux are little endian, as GGUF is
  out.append(b, sizeof(T));
}

void put_str(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}

void put_scalar(std::string& out, ValueType t, const Value& v) {
  switch (t) {
    case ValueType::u8: put<uint8_t>(out, uint8_t(v.u)); break;
    case ValueType::i8: put<int8_t>(out, int8_t(v.i)); break;
    case ValueType::u16: put<uint16_t>(out, uint16_t(v.u)); break;
    case ValueType::i16: put<int16_t>(out, int16_t(v.i)); break;
    case ValueType::u32: put<uint32_t>(out, uint32_t(v.u)); break;
    case ValueType::i32: put<int32_t>(out, int32_t(v.i)); break;
    case ValueType::f32: put<float>(out, float(v.f)); break;
    case ValueType::boolean: put<uint8_t>(out, v.u ? 1 : 0); break;
    case ValueType::string: put_str(out, v.s); break;
    case ValueType::u64: put<uint64_t>(out, v.u); break;
    case ValueType::i64: put<int64_t>(out, v.i); break;
    case ValueType::f64: put<double>(out, v.f); break;
    case ValueType::array: fail("[gguf] nested arrays are not supported");
  }
}

uint64_t pad_to(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

bool known_tensor_type(uint32_t t) {
  return t == 0 || t == 1 || t == 2 || t == 6 || t == 7 || t == 8 || t == 12 || t == 13 || t == 14 || t == 30;
}

}  // namespace

const char* value_type_name(ValueType t) {
  static const char* kNames[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                 "bool", "string", "array", "u64", "i64", "f64"};
  return uint32_t(t) < 13 ? kNames[uint32_t(t)] : "unknown";
}

const char* tensor_type_name(TensorType t) {
  switch (t) {
    case TensorType::f32: return "F32";
    case TensorType::f16: return "F16";
    case TensorType::q4_0: return "Q4_0";
    case TensorType::q5_0: return "Q5_0";
    case TensorType::q5_1: return "Q5_1";
    case TensorType::q8_0: return "Q8_0";
    case TensorType::q4_k: return "Q4_K";
    case TensorType::q5_k: return "Q5_K";
    case TensorType::q6_k: return "Q6_K";
    case TensorType::bf16: return "BF16";
  }
  return "unknown";
}

int64_t block_elems(TensorType t) {
  switch (t) {
    case TensorType::f32:
    case TensorType::f16:
    case TensorType::bf16: return 1;
    case TensorType::q4_0:
    case TensorType::q5_0:
    case TensorType::q5_1:
    case TensorType::q8_0: return 32;
    case TensorType::q4_k:
    case TensorType::q5_k:
    case TensorType::q6_k: return 256;
  }
  return 1;
}

uint64_t block_bytes(TensorType t) {
  switch (t) {
    case TensorType::f32: return 4;
    case TensorType::f16:
    case TensorType::bf16: return 2;
    case TensorType::q4_0: return 2 + 16;                 // f16 d, 32 nibbles
    case TensorType::q5_0: return 2 + 4 + 16;             // f16 d, 32 fifth bits, 32 nibbles
    case TensorType::q5_1: return 2 + 2 + 4 + 16;         // f16 d and m, fifth bits, nibbles
    case TensorType::q8_0: return 2 + 32;                 // f16 d, 32 int8
    case TensorType::q4_k: return 2 + 2 + 12 + 128;       // f16 d and dmin, 8 6-bit scale / min pairs, nibbles
    case TensorType::q5_k: return 2 + 2 + 12 + 32 + 128;  // + 256 fifth bits
    case TensorType::q6_k: return 128 + 64 + 16 + 2;      // low nibbles, high 2 bits, int8 scales, f16 d
  }
  return 0;
}

uint64_t tensor_bytes(TensorType t, const std::vector<int64_t>& dims) {
  LMT_CHECK(!dims.empty(), "[gguf] a tensor needs at least one dimension");
  uint64_t n = 1;
  for (int64_t d : dims) {
    LMT_CHECK(d > 0, "[gguf] dimension ", d, " is not positive");
    n *= uint64_t(d);
  }
  const int64_t row = dims.back();
  LMT_CHECK(row % block_elems(t) == 0, "[gguf] a row of ", row, " elements is not a multiple of ", tensor_type_name(t),
            "'s block of ", block_elems(t));
  return n / uint64_t(block_elems(t)) * block_bytes(t);
}

Value Value::u32(uint32_t v) {
  Value x;
  x.type = ValueType::u32;
  x.u = v;
  return x;
}
Value Value::i32(int32_t v) {
  Value x;
  x.type = ValueType::i32;
  x.i = v;
  return x;
}
Value Value::u64(uint64_t v) {
  Value x;
  x.type = ValueType::u64;
  x.u = v;
  return x;
}
Value Value::f32(float v) {
  Value x;
  x.type = ValueType::f32;
  x.f = v;
  return x;
}
Value Value::boolean(bool v) {
  Value x;
  x.type = ValueType::boolean;
  x.u = v;
  return x;
}
Value Value::str(std::string v) {
  Value x;
  x.type = ValueType::string;
  x.s = std::move(v);
  return x;
}

Value Value::strings(const std::vector<std::string>& v) {
  Value x;
  x.type = ValueType::array;
  x.elem = ValueType::string;
  x.arr.reserve(v.size());
  for (const auto& s : v) x.arr.push_back(str(s));
  return x;
}

Value Value::f32s(const std::vector<float>& v) {
  Value x;
  x.type = ValueType::array;
  x.elem = ValueType::f32;
  for (float f : v) x.arr.push_back(f32(f));
  return x;
}

Value Value::i32s(const std::vector<int32_t>& v) {
  Value x;
  x.type = ValueType::array;
  x.elem = ValueType::i32;
  for (int32_t i : v) x.arr.push_back(i32(i));
  return x;
}

// ---------------------------------------------------------------------------------------- writer

void Writer::set(const std::string& key, Value v) {
  for (const auto& [k, _] : kv_) LMT_CHECK(k != key, "[gguf] metadata key ", key, " set twice");
  if (v.type == ValueType::array)
    for (const Value& e : v.arr)
      LMT_CHECK(e.type == v.elem, "[gguf] ", key, ": an array of ", value_type_name(v.elem), " holds a ",
                value_type_name(e.type));
  kv_.emplace_back(key, std::move(v));
}

void Writer::add_tensor(const std::string& name, TensorType type, std::vector<int64_t> dims,
                        std::function<std::string()> produce) {
  LMT_CHECK(!name.empty() && name.size() < 64, "[gguf] tensor name '", name,
            "' must have 1 to 63 bytes (ggml's limit)");
  for (const auto& t : tensors_) LMT_CHECK(t.name != name, "[gguf] tensor ", name, " added twice");
  LMT_CHECK(dims.size() <= 4, "[gguf] tensor ", name, " has ", dims.size(), " dimensions (ggml allows 4)");
  TensorInfo info;
  info.name = name;
  info.type = type;
  info.nbytes = tensor_bytes(type, dims);
  info.dims = std::move(dims);
  const uint64_t a = alignment();
  info.offset = tensors_.empty() ? 0 : pad_to(tensors_.back().offset + tensors_.back().nbytes, a);
  tensors_.push_back(std::move(info));
  producers_.push_back(std::move(produce));
}

void Writer::add_tensor(const std::string& name, TensorType type, std::vector<int64_t> dims, std::string bytes) {
  auto shared = std::make_shared<std::string>(std::move(bytes));
  add_tensor(name, type, std::move(dims), [shared] { return *shared; });
}

uint64_t Writer::alignment() const {
  for (const auto& [k, v] : kv_)
    if (k == "general.alignment") {
      LMT_CHECK(v.type == ValueType::u32 && v.u > 0 && (v.u & (v.u - 1)) == 0,
                "[gguf] general.alignment must be a u32 power of two");
      return v.u;
    }
  return kDefaultAlignment;
}

void Writer::write(const std::string& path) const {
  std::string head;
  head += "GGUF";
  put<uint32_t>(head, kVersion);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, kv_.size());
  for (const auto& [k, v] : kv_) {
    put_str(head, k);
    put<uint32_t>(head, uint32_t(v.type));
    if (v.type == ValueType::array) {
      put<uint32_t>(head, uint32_t(v.elem));
      put<uint64_t>(head, v.arr.size());
      for (const Value& e : v.arr) put_scalar(head, v.elem, e);
    } else {
      put_scalar(head, v.type, v);
    }
  }
  for (const auto& t : tensors_) {
    put_str(head, t.name);
    put<uint32_t>(head, uint32_t(t.dims.size()));
    for (auto it = t.dims.rbegin(); it != t.dims.rend(); ++it) put<uint64_t>(head, uint64_t(*it));
    put<uint32_t>(head, uint32_t(t.type));
    put<uint64_t>(head, t.offset);
  }
  const uint64_t a = alignment();
  head.resize(pad_to(head.size(), a), '\0');

  AtomicFile f(path);
  f.write(head.data(), head.size());
  uint64_t at = 0;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const TensorInfo& t = tensors_[i];
    if (t.offset > at) {
      std::string zeros(t.offset - at, '\0');
      f.write(zeros.data(), zeros.size());
      at = t.offset;
    }
    std::string bytes = producers_[i]();
    LMT_CHECK(bytes.size() == t.nbytes, "[gguf] ", path, ": tensor ", t.name, " produced ", bytes.size(),
              " bytes, expected ", t.nbytes);
    f.write(bytes.data(), bytes.size());
    at += bytes.size();
  }
  f.commit();
}

// ---------------------------------------------------------------------------------------- reader

namespace {

struct Cursor {
  const std::string& b;
  const std::string& path;
  uint64_t at = 0;

  void need(uint64_t n, const char* what) {
    if (n > b.size() || at > b.size() - n)
      fail("[gguf] ", path, ": truncated at byte ", at, " reading ", what, " (", n, " bytes, file has ", b.size(), ")");
  }
  template <typename T>
  T get(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, b.data() + at, sizeof(T));
    at += sizeof(T);
    return v;
  }
  std::string str(const char* what) {
    const uint64_t n = get<uint64_t>(what);
    need(n, what);
    std::string s = b.substr(at, n);
    at += n;
    return s;
  }
};

Value read_scalar(Cursor& c, ValueType t, const std::string& key) {
  Value v;
  v.type = t;
  switch (t) {
    case ValueType::u8: v.u = c.get<uint8_t>("u8"); break;
    case ValueType::i8: v.i = c.get<int8_t>("i8"); break;
    case ValueType::u16: v.u = c.get<uint16_t>("u16"); break;
    case ValueType::i16: v.i = c.get<int16_t>("i16"); break;
    case ValueType::u32: v.u = c.get<uint32_t>("u32"); break;
    case ValueType::i32: v.i = c.get<int32_t>("i32"); break;
    case ValueType::f32: v.f = c.get<float>("f32"); break;
    case ValueType::boolean: {
      const uint8_t b = c.get<uint8_t>("bool");
      LMT_CHECK(b <= 1, "[gguf] ", c.path, ": ", key, ": bool value ", int(b));
      v.u = b;
      break;
    }
    case ValueType::string: v.s = c.str("string"); break;
    case ValueType::u64: v.u = c.get<uint64_t>("u64"); break;
    case ValueType::i64: v.i = c.get<int64_t>("i64"); break;
    case ValueType::f64: v.f = c.get<double>("f64"); break;
    default: fail("[gguf] ", c.path, ": ", key, ": value type ", uint32_t(t), " is not a scalar type");
  }
  return v;
}

}  // namespace

Reader::Reader(const std::string& path) : path_(path) {
  std::ifstream in(path, std::ios::binary);
  LMT_CHECK(in.good(), "[gguf] cannot open ", path);
  bytes_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  Cursor c{bytes_, path_};
  c.need(4, "the magic");
  LMT_CHECK(bytes_.compare(0, 4, "GGUF") == 0, "[gguf] ", path, ": not a GGUF file (no GGUF magic)");
  c.at = 4;
  version_ = c.get<uint32_t>("the version");
  LMT_CHECK(version_ == 2 || version_ == 3, "[gguf] ", path, ": version ", version_, " (2 or 3 supported)");
  const uint64_t n_tensors = c.get<uint64_t>("the tensor count");
  const uint64_t n_kv = c.get<uint64_t>("the key/value count");
  // Each entry takes at least 8 bytes, so a count beyond the file's size is a damaged file.
  LMT_CHECK(n_kv <= bytes_.size() / 8 && n_tensors <= bytes_.size() / 8, "[gguf] ", path, ": counts ", n_kv, " / ",
            n_tensors, " exceed the file size");
  std::set<std::string> keys;
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.str("a key");
    LMT_CHECK(keys.insert(key).second, "[gguf] ", path, ": duplicate key ", key);
    const uint32_t t = c.get<uint32_t>("a value type");
    LMT_CHECK(t <= 12, "[gguf] ", path, ": ", key, ": unknown value type ", t);
    Value v;
    if (ValueType(t) == ValueType::array) {
      v.type = ValueType::array;
      const uint32_t e = c.get<uint32_t>("an array type");
      LMT_CHECK(e <= 12 && e != uint32_t(ValueType::array), "[gguf] ", path, ": ", key, ": array element type ", e);
      v.elem = ValueType(e);
      const uint64_t n = c.get<uint64_t>("an array length");
      LMT_CHECK(n <= bytes_.size(), "[gguf] ", path, ": ", key, ": array length ", n, " exceeds the file size");
      v.arr.reserve(n);
      for (uint64_t k = 0; k < n; ++k) v.arr.push_back(read_scalar(c, v.elem, key));
    } else {
      v = read_scalar(c, ValueType(t), key);
    }
    kv_.emplace_back(std::move(key), std::move(v));
  }
  uint64_t align = kDefaultAlignment;
  if (const Value* a = find("general.alignment")) {
    LMT_CHECK(a->type == ValueType::u32 && a->u > 0 && (a->u & (a->u - 1)) == 0, "[gguf] ", path,
              ": general.alignment is not a u32 power of two");
    align = a->u;
  }
  std::set<std::string> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    t.name = c.str("a tensor name");
    LMT_CHECK(names.insert(t.name).second, "[gguf] ", path, ": duplicate tensor ", t.name);
    const uint32_t nd = c.get<uint32_t>("a dimension count");
    LMT_CHECK(nd >= 1 && nd <= 4, "[gguf] ", path, ": tensor ", t.name, " has ", nd, " dimensions");
    t.dims.resize(nd);
    for (uint32_t d = 0; d < nd; ++d) {
      const uint64_t ne = c.get<uint64_t>("a dimension");
      LMT_CHECK(ne > 0 && ne < (uint64_t(1) << 40), "[gguf] ", path, ": tensor ", t.name, " dimension ", ne);
      t.dims[nd - 1 - d] = int64_t(ne);
    }
    const uint32_t type = c.get<uint32_t>("a tensor type");
    LMT_CHECK(known_tensor_type(type), "[gguf] ", path, ": tensor ", t.name, " has ggml type ", type,
              " (lmtune reads F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)");
    t.type = TensorType(type);
    t.offset = c.get<uint64_t>("a tensor offset");
    LMT_CHECK(t.offset % align == 0, "[gguf] ", path, ": tensor ", t.name, " offset ", t.offset, " is not aligned to ",
              align);
    t.nbytes = tensor_bytes(t.type, t.dims);
    tensors_.push_back(std::move(t));
  }
  data_offset_ = pad_to(c.at, align);
  for (const TensorInfo& t : tensors_)
    LMT_CHECK(data_offset_ <= bytes_.size() && t.offset <= bytes_.size() - data_offset_ &&
                  t.nbytes <= bytes_.size() - data_offset_ - t.offset,
              "[gguf] ", path, ": tensor ", t.name, " data [", t.offset, ", +", t.nbytes,
              ") lies past the end of the file");
}

const Value* Reader::find(const std::string& key) const {
  for (const auto& [k, v] : kv_)
    if (k == key) return &v;
  return nullptr;
}

const Value& Reader::get(const std::string& key) const {
  const Value* v = find(key);
  LMT_CHECK(v, "[gguf] ", path_, ": no metadata key ", key);
  return *v;
}

const TensorInfo& Reader::tensor(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return t;
  fail("[gguf] ", path_, ": no tensor ", name);
}

std::string Reader::tensor_data(const std::string& name) const {
  const TensorInfo& t = tensor(name);
  return bytes_.substr(data_offset_ + t.offset, t.nbytes);
}

}  // namespace lmtune::gguf
