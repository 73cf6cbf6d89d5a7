// Hugging Face safetensors: a validating, zero-copy mmap reader (one file or a sharded folder with
// model.safetensors.index.json) and an atomic writer. Every malformed file is refused with an
// lmtune::Error naming the file and the tensor; nothing in a file can make the reader read out of range.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace lmtune {

struct SafetensorsInfo {
  std::string file_dtype;   // the header's dtype string: "BF16", "F64", ...
  bool supported = false;   // false: file_dtype has no lmtune DType (F64, BOOL, F8_*...); get() refuses
  DType dtype = DType::u8;  // meaningful only when supported
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte range [begin, end) within the data section (after the header)
};

// One .safetensors file, mmap'd MAP_PRIVATE: the file is never modified. A write through a tensor
// lands in a private copy-on-write page (or faults, where the kernel refused a writable private map
// and the read-only fallback was taken). Const methods are safe to call from several threads.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return path_; }
  // Names in header order (for files we wrote, the order given to save_safetensors).
  const std::vector<std::string>& names() const { return names_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const SafetensorsInfo& info(const std::string& name) const;  // throws naming the file if absent
  // A CPU tensor borrowing the mapping (no copy); it keeps the mapping alive after this object dies.
  // A tensor whose address is not a multiple of its element size (a writer that did not pad the
  // header to 8 bytes, e.g. MLX) is copied into aligned memory instead.
  Tensor get(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }  // __metadata__
  uint64_t data_offset() const { return data_offset_; }                             // file offset of the data section
  uint64_t file_size() const { return file_size_; }
  // Replaces tensor `name` (n, ...) by n tensors parts[i] (...), its slices along the first axis
  // (byte ranges of the same mapping: no copy), in its place in names(). Used to read a layout that
  // stacks per-item tensors into one (MLX's switch_mlp experts). Throws naming the tensor when its
  // first axis is not parts.size() long or a part's name is taken.
  void split_first_axis(const std::string& name, const std::vector<std::string>& parts);
  // The same tensor under another name, in its place in names().
  void rename(const std::string& name, const std::string& to);
  // Leaves tensor `name` out of names() and lookups.
  void drop(const std::string& name);

 private:
  std::string path_;
  std::shared_ptr<Storage> map_;  // the whole file; its owner munmaps
  uint64_t file_size_ = 0, data_offset_ = 0;
  std::vector<std::string> names_;
  std::unordered_map<std::string, SafetensorsInfo> index_;
  std::map<std::string, std::string> metadata_;
};

// A model folder: model.safetensors.index.json and the shards its weight_map names; else
// model.safetensors; else every *.safetensors in the folder (sorted by file name). A tensor name
// found in two files is an error naming both.
class SafetensorsModel {
 public:
  explicit SafetensorsModel(const std::string& folder);

  const std::string& folder() const { return folder_; }
  const std::vector<std::string>& names() const { return names_; }  // shard by shard, header order
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const SafetensorsInfo& info(const std::string& name) const;
  Tensor get(const std::string& name) const;
  const SafetensorsFile& file_of(const std::string& name) const;
  // SafetensorsFile::split_first_axis on the file holding `name`.
  void split_first_axis(const std::string& name, const std::vector<std::string>& parts);
  // Presents tensor `name` as `to` (a checkpoint's prefix stripped); throws when `to` is taken.
  void rename(const std::string& name, const std::string& to);
  // Leaves tensor `name` out of names() and lookups (a part of the checkpoint the model does not use).
  void drop(const std::string& name);
  const std::vector<SafetensorsFile>& files() const { return files_; }
  // The index's "metadata" object (e.g. total_size), values as JSON text; empty without an index.
  const std::map<std::string, std::string>& index_metadata() const { return index_metadata_; }

 private:
  size_t file_index(const std::string& name) const;
  void add_file(const std::string& path);

  std::string folder_;
  std::vector<SafetensorsFile> files_;
  std::vector<std::string> names_;
  std::unordered_map<std::string, size_t> where_;  // name -> index in files_
  std::map<std::string, std::string> index_metadata_;
};

// Every tensor of one file, in header order (zero-copy, as SafetensorsFile::get).
std::vector<std::pair<std::string, Tensor>> load_safetensors(const std::string& path);

// Writes CPU tensors with their names and __metadata__, atomically (io/atomic_file.h). The header
// lists tensors in the given order; the data is laid out in a stable sort by element size, largest
// first, so every tensor is aligned to its element size (the header is padded with spaces to a
// multiple of 8, as Hugging Face's writer does). Names must be unique and not "__metadata__".
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// A tensor of a file written by save_safetensors_streamed, its data to come.
struct TensorEntry {
  std::string name;
  Shape shape;
  DType dtype;
  size_t nbytes() const;
};
// Writes a file whose tensors come one at a time, so that only one is held: produce(i), called for
// i = 0, 1, ... in order, returns a CPU tensor of entries[i]'s shape and dtype. Header and data in the
// entries' order (each tensor must start at a multiple of its element size: give the entries from the
// largest element size down); atomic, as save_safetensors, whose file it equals for the same order.
void save_safetensors_streamed(const std::string& path, const std::vector<TensorEntry>& entries,
                               const std::function<Tensor(size_t)>& produce,
                               const std::map<std::string, std::string>& metadata = {});

// The safetensors dtype string of an lmtune dtype ("F32", "BF16", ...).
const char* safetensors_dtype_name(DType dt);

}  // namespace lmtune
