// Safetensors reading (validate the whole header, then mmap-borrow) and atomic writing. The
// validation follows Hugging Face's reference reader (safetensors/src/tensor.rs), plus duplicate keys.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <unordered_set>

#include "core/error.h"
#include "io/atomic_file.h"

namespace lmtune {

static_assert(std::endian::native == std::endian::little, "safetensors is little-endian; so is lmtune");

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// Hugging Face's reader refuses headers over 100 MB (MAX_HEADER_SIZE); so do we.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DtypeEntry {
  const char* name;
  size_t size;  // bytes per element; 0 = packed sub-byte type, refused at open
  bool supported;
  DType dtype;
};

// Every dtype the safetensors spec names. Unsupported ones with a whole-byte size still validate
// (so a file holding one F64 buffer opens), and get() refuses them by name.
constexpr DtypeEntry kDtypes[] = {
    {"F32", 4, true, DType::f32},     {"F16", 2, true, DType::f16},     {"BF16", 2, true, DType::bf16},
    {"I8", 1, true, DType::i8},       {"U8", 1, true, DType::u8},       {"I32", 4, true, DType::i32},
    {"U32", 4, true, DType::u32},     {"I64", 8, true, DType::i64},     {"BOOL", 1, false, DType::u8},
    {"F64", 8, false, DType::u8},     {"I16", 2, false, DType::u8},     {"U16", 2, false, DType::u8},
    {"U64", 8, false, DType::u8},     {"C64", 8, false, DType::u8},     {"F8_E4M3", 1, false, DType::u8},
    {"F8_E5M2", 1, false, DType::u8}, {"F8_E8M0", 1, false, DType::u8}, {"F4", 0, false, DType::u8},
    {"F6_E2M3", 0, false, DType::u8}, {"F6_E3M2", 0, false, DType::u8},
};

const DtypeEntry* find_dtype(const std::string& s) {
  for (const auto& e : kDtypes)
    if (s == e.name) return &e;
  return nullptr;
}

// Parses JSON and refuses a repeated key in any object: nlohmann keeps the last value silently, so
// two entries for one tensor would otherwise pass with one of them ignored. Also returns the
// top-level keys in document order (json's std::map sorts them; ordered_json is quadratic).
struct StrictJson {
  json value;
  std::vector<std::string> top_keys;
};

// A SAX pass that only watches keys. (nlohmann's parser-callback DOM builder would do this in one
// pass, but it rescans the parent object at every object end: 100k tensors took minutes.)
class KeyScanner : public json::json_sax_t {
 public:
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(json::number_integer_t) override { return true; }
  bool number_unsigned(json::number_unsigned_t) override { return true; }
  bool number_float(json::number_float_t, const json::string_t&) override { return true; }
  bool string(json::string_t&) override { return true; }
  bool binary(json::binary_t&) override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool start_object(std::size_t) override {
    frames_.emplace_back();
    return true;
  }
  bool end_object() override {
    frames_.pop_back();
    return true;
  }
  bool key(json::string_t& k) override {
    Frame& f = frames_.back();
    if (!f.keys.insert(k).second) {
      dup_key = k;
      dup_parent = frames_.size() > 1 ? frames_.front().last_key : "";
      return false;  // stops the parse
    }
    f.last_key = k;
    if (frames_.size() == 1) top_keys.push_back(k);
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    error = e.what();
    return false;
  }

  std::vector<std::string> top_keys;
  std::optional<std::string> dup_key;
  std::string dup_parent, error;

 private:
  struct Frame {
    std::unordered_set<std::string> keys;
    std::string last_key;
  };
  std::vector<Frame> frames_;
};

StrictJson parse_json_strict(const char* first, const char* last, const std::string& where, const char* what) {
  KeyScanner scan;
  bool ok = false;
  try {
    ok = json::sax_parse(first, last, &scan);
  } catch (const json::exception& e) {
    fail(where, what, " is not valid JSON: ", e.what());
  }
  if (scan.dup_key) {
    const bool header = std::strcmp(what, "header") == 0;
    if (scan.dup_parent.empty())
      fail(where, what, " has duplicate key '", *scan.dup_key, header ? "' (a tensor named twice)" : "'");
    if (header) fail(where, "tensor '", scan.dup_parent, "': duplicate key '", *scan.dup_key, "' in its entry");
    fail(where, what, " has duplicate key '", *scan.dup_key, "' inside '", scan.dup_parent, "'");
  }
  if (!ok) fail(where, what, " is not valid JSON: ", scan.error);
  StrictJson out;
  out.top_keys = std::move(scan.top_keys);
  try {
    out.value = json::parse(first, last);
  } catch (const json::exception& e) {
    fail(where, what, " is not valid JSON: ", e.what());
  }
  return out;
}

// A JSON value as a non-negative integer, or an error naming what it is.
uint64_t as_u64(const json& v, const std::string& where, const std::string& what) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) fail(where, what, " is negative: ", v.dump());
  fail(where, what, " is not a non-negative integer: ", v.dump());
}

SafetensorsInfo parse_entry(const std::string& name, const json& v, uint64_t data_len, const std::string& file) {
  const std::string where = str_cat(file, "tensor '", name, "': ");
  LMT_CHECK(v.is_object(), where, "entry is not a JSON object: ", v.dump());
  SafetensorsInfo info;
  auto it = v.find("dtype");
  LMT_CHECK(it != v.end(), where, "entry has no dtype");
  LMT_CHECK(it->is_string(), where, "dtype is not a string: ", it->dump());
  info.file_dtype = it->get<std::string>();
  const DtypeEntry* dt = find_dtype(info.file_dtype);
  LMT_CHECK(dt, where, "unknown dtype '", info.file_dtype, "'");
  LMT_CHECK(dt->size != 0, where, "dtype ", info.file_dtype, " (sub-byte packed) is not supported by lmtune");
  info.supported = dt->supported;
  info.dtype = dt->dtype;

  it = v.find("shape");
  LMT_CHECK(it != v.end(), where, "entry has no shape");
  LMT_CHECK(it->is_array(), where, "shape is not an array: ", it->dump());
  uint64_t numel = 1;
  for (size_t i = 0; i < it->size(); ++i) {
    uint64_t d = as_u64((*it)[i], where, str_cat("shape[", i, "]"));
    LMT_CHECK(d <= uint64_t(INT64_MAX), where, "shape[", i, "] = ", d, " is too large");
    info.shape.push_back(int64_t(d));
    LMT_CHECK(!__builtin_mul_overflow(numel, d, &numel), where, "element count of shape ", it->dump(),
              " overflows 64 bits");
  }
  uint64_t nbytes = 0;
  LMT_CHECK(numel <= uint64_t(INT64_MAX) && !__builtin_mul_overflow(numel, uint64_t(dt->size), &nbytes), where,
            "byte size of shape ", shape_str(info.shape), " in ", info.file_dtype, " overflows 64 bits");

  it = v.find("data_offsets");
  LMT_CHECK(it != v.end(), where, "entry has no data_offsets");
  LMT_CHECK(it->is_array() && it->size() == 2, where, "data_offsets is not an array of two integers: ", it->dump());
  info.begin = as_u64((*it)[0], where, "data_offsets[0]");
  info.end = as_u64((*it)[1], where, "data_offsets[1]");
  LMT_CHECK(info.begin <= info.end, where, "data_offsets begin ", info.begin, " > end ", info.end);
  LMT_CHECK(info.end <= data_len, where, "data_offsets end ", info.end, " is past the data section of ", data_len,
            " bytes");
  LMT_CHECK(info.end - info.begin == nbytes, where, "data_offsets [", info.begin, ", ", info.end, ") hold ",
            info.end - info.begin, " bytes but ", info.file_dtype, " ", shape_str(info.shape), " needs ", nbytes);
  return info;
}

// Like Hugging Face's reader (InvalidOffset, MetadataIncompleteBuffer): sorted by offset, the tensors
// must tile the data section exactly. No overlaps (one byte read as two tensors), no gaps and no
// trailing bytes (data no tensor accounts for).
void check_tiling(const std::unordered_map<std::string, SafetensorsInfo>& index, uint64_t data_len,
                  const std::string& file) {
  struct Range {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  ranges.reserve(index.size());
  for (const auto& [name, info] : index) ranges.push_back({info.begin, info.end, &name});
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return *a.name < *b.name;
  });
  uint64_t cursor = 0;
  const Range* prev = nullptr;
  for (const Range& r : ranges) {
    if (r.begin < cursor)
      fail(file, "tensors '", *prev->name, "' [", prev->begin, ", ", prev->end, ") and '", *r.name, "' [", r.begin,
           ", ", r.end, ") overlap");
    if (r.begin > cursor)
      fail(file, "bytes [", cursor, ", ", r.begin, ") of the data section belong to no tensor (a gap before '", *r.name,
           "')");
    cursor = r.end;
    prev = &r;
  }
  if (cursor != data_len)
    fail(file, "the data section has ", data_len - cursor, " trailing bytes after the last tensor (", data_len,
         " bytes, tensors cover ", cursor, ")");
}

}  // namespace

const char* safetensors_dtype_name(DType dt) {
  for (const auto& e : kDtypes)
    if (e.supported && e.dtype == dt) return e.name;
  fail("[safetensors] dtype ", dtype_name(dt), " has no safetensors name");
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const std::string where = str_cat("[safetensors] ", path, ": ");
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(where, "cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    fail(where, "cannot stat: ", std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(where, "not a regular file");
  }
  file_size_ = uint64_t(st.st_size);
  if (file_size_ < 8) {
    ::close(fd);
    fail(where, "file is ", file_size_, " bytes, too short for the 8-byte header length");
  }
  // Writable private mapping: a stray in-place write to a weight gets a copy-on-write page instead
  // of a segfault, and never reaches the file. MAP_NORESERVE keeps it out of the commit charge;
  // where the kernel still refuses (strict overcommit), fall back to a read-only mapping.
  void* base = ::mmap(nullptr, file_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
  if (base == MAP_FAILED) base = ::mmap(nullptr, file_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);
  if (base == MAP_FAILED) fail(where, "mmap of ", file_size_, " bytes failed: ", std::strerror(map_errno));
  size_t len = size_t(file_size_);
  std::shared_ptr<void> owner(base, [len](void* p) { ::munmap(p, len); });
  map_ = std::make_shared<Storage>(Device::cpu, base, len, owner);

  const char* bytes = static_cast<const char*>(base);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes, 8);
  LMT_CHECK(header_len <= file_size_ - 8, where, "header length ", header_len, " exceeds file size ", file_size_);
  LMT_CHECK(header_len <= kMaxHeaderBytes, where, "header length ", header_len, " exceeds the limit of ",
            kMaxHeaderBytes, " bytes");
  data_offset_ = 8 + header_len;
  const uint64_t data_len = file_size_ - data_offset_;

  StrictJson header = parse_json_strict(bytes + 8, bytes + 8 + header_len, where, "header");
  LMT_CHECK(header.value.is_object(), where, "header is not a JSON object but ", header.value.type_name());
  for (const std::string& name : header.top_keys) {
    const json& v = header.value.at(name);
    if (name == "__metadata__") {
      // Hugging Face's format: a string-to-string map; MLX writes null when there is none.
      if (v.is_null()) continue;
      LMT_CHECK(v.is_object(), where, "__metadata__ is not a JSON object: ", v.dump());
      for (const auto& [k, val] : v.items()) {
        LMT_CHECK(val.is_string(), where, "__metadata__ value of '", k, "' is not a string: ", val.dump());
        metadata_[k] = val.get<std::string>();
      }
      continue;
    }
    index_.emplace(name, parse_entry(name, v, data_len, where));
    names_.push_back(name);
  }
  check_tiling(index_, data_len, where);
}

const SafetensorsInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail("[safetensors] ", path_, ": no tensor named '", name, "'");
  return it->second;
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const SafetensorsInfo& inf = info(name);
  LMT_CHECK(inf.supported, "[safetensors] ", path_, ": tensor '", name, "' has dtype ", inf.file_dtype,
            ", which lmtune does not support");
  const uint64_t off = data_offset_ + inf.begin;
  const char* p = static_cast<const char*>(map_->data()) + off;
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(inf.dtype) != 0) {
    // Kernels may rely on natural alignment; copying costs little next to a misaligned load path.
    Tensor t = Tensor::empty(inf.shape, inf.dtype, Device::cpu);
    std::memcpy(t.raw(), p, t.nbytes());
    return t;
  }
  return Tensor::borrow(map_, size_t(off), inf.shape, inf.dtype);
}

std::vector<std::pair<std::string, Tensor>> load_safetensors(const std::string& path) {
  SafetensorsFile f(path);
  std::vector<std::pair<std::string, Tensor>> out;
  out.reserve(f.names().size());
  for (const std::string& n : f.names()) out.emplace_back(n, f.get(n));
  return out;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsModel

void SafetensorsFile::split_first_axis(const std::string& name, const std::vector<std::string>& parts) {
  const SafetensorsInfo whole = info(name);
  const uint64_t n = parts.size();
  LMT_CHECK(n > 0 && whole.shape.size() >= 2 && uint64_t(whole.shape[0]) == n, "[safetensors] ", path_, ": tensor '",
            name, "' has shape ", shape_str(whole.shape), "; expected ", n, " stacked tensors along its first axis");
  for (const std::string& p : parts)
    LMT_CHECK(!index_.count(p), "[safetensors] ", path_, ": tensor '", p,
              "' is stored both on its own and as a slice of '", name, "'");
  const uint64_t each = (whole.end - whole.begin) / n;
  auto at = names_.erase(std::find(names_.begin(), names_.end(), name));
  index_.erase(name);
  for (uint64_t i = 0; i < n; ++i) {
    SafetensorsInfo part = whole;
    part.shape.erase(part.shape.begin());
    part.begin = whole.begin + i * each, part.end = part.begin + each;
    index_.emplace(parts[i], part);
    at = names_.insert(at, parts[i]) + 1;
  }
}

void SafetensorsFile::rename(const std::string& name, const std::string& to) {
  const SafetensorsInfo i = info(name);
  LMT_CHECK(!index_.count(to), "[safetensors] ", path_, ": tensor '", name, "' would be read as '", to,
            "', which the file also holds");
  index_.erase(name);
  index_.emplace(to, i);
  *std::find(names_.begin(), names_.end(), name) = to;
}

void SafetensorsFile::drop(const std::string& name) {
  (void)info(name);
  index_.erase(name);
  names_.erase(std::find(names_.begin(), names_.end(), name));
}

void SafetensorsModel::rename(const std::string& name, const std::string& to) {
  const size_t fi = file_index(name);
  LMT_CHECK(!where_.count(to), "[safetensors] ", folder_, ": tensor '", name, "' would be read as '", to,
            "', which the checkpoint also holds");
  files_[fi].rename(name, to);
  where_.erase(name);
  where_.emplace(to, fi);
  *std::find(names_.begin(), names_.end(), name) = to;
}

void SafetensorsModel::drop(const std::string& name) {
  files_[file_index(name)].drop(name);
  where_.erase(name);
  names_.erase(std::find(names_.begin(), names_.end(), name));
}

void SafetensorsModel::split_first_axis(const std::string& name, const std::vector<std::string>& parts) {
  const size_t fi = file_index(name);
  for (const std::string& p : parts)
    LMT_CHECK(!where_.count(p), "[safetensors] ", folder_, ": tensor '", p, "' is stored both on its own (",
              files_[where_.at(p)].path(), ") and as a slice of '", name, "'");
  files_[fi].split_first_axis(name, parts);
  where_.erase(name);
  auto at = names_.erase(std::find(names_.begin(), names_.end(), name));
  for (const std::string& p : parts) {
    where_.emplace(p, fi);
    at = names_.insert(at, p) + 1;
  }
}

void SafetensorsModel::add_file(const std::string& path) {
  files_.emplace_back(path);
  const size_t fi = files_.size() - 1;
  for (const std::string& n : files_[fi].names()) {
    auto [it, inserted] = where_.emplace(n, fi);
    if (!inserted) fail("[safetensors] tensor '", n, "' is in both ", files_[it->second].path(), " and ", path);
    names_.push_back(n);
  }
}

SafetensorsModel::SafetensorsModel(const std::string& folder) : folder_(folder) {
  std::error_code ec;
  LMT_CHECK(fs::is_directory(folder, ec), "[safetensors] ", folder, ": not a folder");
  const fs::path dir(folder);
  const fs::path index_path = dir / "model.safetensors.index.json";
  if (fs::exists(index_path, ec)) {
    const std::string ip = index_path.string();
    const std::string where = str_cat("[safetensors] ", ip, ": ");
    std::ifstream in(index_path, std::ios::binary);
    LMT_CHECK(in, where, "cannot open");
    std::ostringstream ss;
    ss << in.rdbuf();
    LMT_CHECK(!in.bad(), where, "read failed");
    const std::string text = ss.str();
    StrictJson idx = parse_json_strict(text.data(), text.data() + text.size(), where, "index");
    LMT_CHECK(idx.value.is_object(), where, "not a JSON object");
    auto wm = idx.value.find("weight_map");
    LMT_CHECK(wm != idx.value.end() && wm->is_object(), where, "has no weight_map object");
    auto md = idx.value.find("metadata");
    if (md != idx.value.end() && md->is_object())
      for (const auto& [k, v] : md->items()) index_metadata_[k] = v.is_string() ? v.get<std::string>() : v.dump();

    std::map<std::string, std::string> shard_first_tensor;  // shard -> one tensor it should hold
    for (const auto& [tensor, shard] : wm->items()) {
      LMT_CHECK(shard.is_string(), where, "weight_map entry of tensor '", tensor, "' is not a string: ", shard.dump());
      const std::string s = shard.get<std::string>();
      // Shards live beside the index; a path could point anywhere on the disk.
      LMT_CHECK(!s.empty() && s != "." && s != ".." && s.find('/') == std::string::npos &&
                    s.find('\\') == std::string::npos,
                where, "tensor '", tensor, "': shard name '", s, "' is not a plain file name");
      shard_first_tensor.emplace(s, tensor);
    }
    std::map<std::string, size_t> shard_file;
    for (const auto& [s, tensor] : shard_first_tensor) {
      const fs::path sp = dir / s;
      LMT_CHECK(fs::exists(sp, ec), where, "shard ", s, " (holding tensor '", tensor, "') is missing");
      add_file(sp.string());
      shard_file[s] = files_.size() - 1;
    }
    // The index must tell the truth; tensors a shard holds beyond the index are still served.
    for (const auto& [tensor, shard] : wm->items()) {
      const SafetensorsFile& f = files_[shard_file.at(shard.get<std::string>())];
      LMT_CHECK(f.contains(tensor), where, "tensor '", tensor, "' is listed in shard ", f.path(),
                ", which does not contain it");
    }
    return;
  }
  const fs::path single = dir / "model.safetensors";
  if (fs::exists(single, ec)) {
    add_file(single.string());
    return;
  }
  std::vector<std::string> found;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().extension() == ".safetensors" && e.is_regular_file(ec)) found.push_back(e.path().string());
  LMT_CHECK(!ec, "[safetensors] ", folder, ": cannot list the folder: ", ec.message());
  LMT_CHECK(!found.empty(), "[safetensors] ", folder,
            ": no model.safetensors.index.json, model.safetensors or *.safetensors file");
  std::sort(found.begin(), found.end());
  for (const std::string& p : found) add_file(p);
}

size_t SafetensorsModel::file_index(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail("[safetensors] ", folder_, ": no tensor named '", name, "' in any file");
  return it->second;
}

const SafetensorsInfo& SafetensorsModel::info(const std::string& name) const {
  return files_[file_index(name)].info(name);
}
Tensor SafetensorsModel::get(const std::string& name) const { return files_[file_index(name)].get(name); }
const SafetensorsFile& SafetensorsModel::file_of(const std::string& name) const { return files_[file_index(name)]; }

// ---------------------------------------------------------------------------------------------
// Writer

namespace {

std::string json_string(const std::string& s, const std::string& where, const std::string& what) {
  try {
    return json(s).dump();
  } catch (const json::exception& e) {
    fail(where, what, " is not valid UTF-8: ", e.what());
  }
}

// The header of a file holding entries[i] at data bytes [begin[i], begin[i] + nbytes), listed in
// entries' order, padded with spaces to a multiple of 8; names checked (unique, not __metadata__).
std::string make_header(const std::vector<TensorEntry>& entries, const std::vector<uint64_t>& begin,
                        const std::map<std::string, std::string>& metadata, const std::string& where) {
  std::unordered_set<std::string> seen;
  for (const TensorEntry& e : entries) {
    LMT_CHECK(e.name != "__metadata__", where, "'__metadata__' is reserved and cannot name a tensor");
    LMT_CHECK(seen.insert(e.name).second, where, "tensor '", e.name, "' is given twice");
  }
  // Assembled by hand to keep the caller's order (json's map would sort it).
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) header += ',';
      first = false;
      header += json_string(k, where, str_cat("metadata key '", k, "'"));
      header += ':';
      header += json_string(v, where, str_cat("metadata value of '", k, "'"));
    }
    header += '}';
  }
  for (size_t i = 0; i < entries.size(); ++i) {
    const TensorEntry& e = entries[i];
    if (header.size() > 1) header += ',';
    header += json_string(e.name, where, str_cat("tensor name '", e.name, "'"));
    header += str_cat(":{\"dtype\":\"", safetensors_dtype_name(e.dtype), "\",\"shape\":[");
    for (size_t d = 0; d < e.shape.size(); ++d) header += str_cat(d ? "," : "", e.shape[d]);
    header += str_cat("],\"data_offsets\":[", begin[i], ",", begin[i] + e.nbytes(), "]}");
  }
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');
  LMT_CHECK(header.size() <= kMaxHeaderBytes, where, "header of ", header.size(), " bytes exceeds the limit of ",
            kMaxHeaderBytes, " bytes that readers accept");
  return header;
}

}  // namespace

size_t TensorEntry::nbytes() const { return size_t(numel_of(shape)) * dtype_size(dtype); }

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  const std::string where = str_cat("[save_safetensors] ", path, ": ");
  std::vector<TensorEntry> entries;
  for (const auto& [name, t] : tensors) {
    LMT_CHECK(t.defined(), where, "tensor '", name, "' is undefined");
    LMT_CHECK(t.device() == Device::cpu, where, "tensor '", name, "' is on ", device_name(t.device()),
              "; copy it to the cpu first");
    entries.push_back({name, t.shape(), t.dtype()});
  }
  // Data layout: largest element size first (stable), so with the header padded to 8 bytes every
  // tensor starts at a multiple of its element size, as in Hugging Face's writer.
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return dtype_size(tensors[a].second.dtype()) > dtype_size(tensors[b].second.dtype());
  });
  std::vector<uint64_t> begin(tensors.size());
  uint64_t offset = 0;
  for (size_t i : order) {
    begin[i] = offset;
    offset += tensors[i].second.nbytes();
  }
  const std::string header = make_header(entries, begin, metadata, where);
  AtomicFile out(path);  // its destructor removes the temp file if anything below throws
  const uint64_t header_len = header.size();
  out.write(&header_len, 8);
  out.write(header.data(), header.size());
  for (size_t i : order) out.write(tensors[i].second.raw(), tensors[i].second.nbytes());
  out.commit();
}

void save_safetensors_streamed(const std::string& path, const std::vector<TensorEntry>& entries,
                               const std::function<Tensor(size_t)>& produce,
                               const std::map<std::string, std::string>& metadata) {
  const std::string where = str_cat("[save_safetensors] ", path, ": ");
  std::vector<uint64_t> begin(entries.size());
  uint64_t offset = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    LMT_CHECK(offset % dtype_size(entries[i].dtype) == 0, where, "tensor '", entries[i].name, "' would start at byte ",
              offset, ", not a multiple of its element size: give the entries from the largest element size down");
    begin[i] = offset;
    offset += entries[i].nbytes();
  }
  const std::string header = make_header(entries, begin, metadata, where);
  AtomicFile out(path);
  const uint64_t header_len = header.size();
  out.write(&header_len, 8);
  out.write(header.data(), header.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    const Tensor t = produce(i);
    LMT_CHECK(t.defined() && t.device() == Device::cpu && t.shape() == entries[i].shape &&
                  t.dtype() == entries[i].dtype,
              where, "tensor '", entries[i].name, "' came as ", t.defined() ? t.describe() : "undefined", ", not ",
              dtype_name(entries[i].dtype), " ", shape_str(entries[i].shape), " on the cpu");
    out.write(t.raw(), t.nbytes());
  }
  out.commit();
}

}  // namespace lmtune
