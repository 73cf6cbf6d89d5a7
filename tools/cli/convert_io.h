// The files `lmtune convert` writes, as mlx_lm.convert writes them: JSON as Python's json.dump
// prints it (indent 4, ASCII escapes, float repr), safetensors shards streamed tensor by tensor, and
// the whole output folder staged under a temporary name and renamed into place at the end.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "io/atomic_file.h"

namespace lmtune::cli::convert {

// json.dump(j, indent=4) with Python's defaults (ensure_ascii, ", " / ": " separators, no newline
// at the end); object keys keep j's order (ordered_json), as Python's dicts do.
std::string python_json(const nlohmann::ordered_json& j);

// A tensor of an output shard: its name, dtype and shape are known before its data.
struct TensorEntry {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  uint64_t nbytes() const;
};

// One safetensors file written as its tensors arrive. The header lists `entries` in the given
// order; the data section holds them largest element size first (stable), as save_safetensors
// lays it out, so every tensor is aligned. put() writes a tensor at once when the data section
// has reached it and holds it in memory until then otherwise.
class ShardWriter {
 public:
  ShardWriter(std::string path, std::vector<TensorEntry> entries, const std::map<std::string, std::string>& metadata);
  // t: a CPU tensor with the entry's dtype and shape. Returns the bytes written by this call.
  uint64_t put(const std::string& name, const Tensor& t);
  void commit();  // every entry put; fsync + rename into place (io/atomic_file.h)

 private:
  void drain();  // writes held tensors whose turn has come
  std::string path_;
  std::vector<TensorEntry> entries_;
  std::unordered_map<std::string, size_t> index_;  // name -> entry
  std::vector<size_t> data_order_;                 // entries in data-section order
  size_t next_ = 0;                                // position in data_order_ to write next
  std::vector<Tensor> held_;                       // by entry; defined while waiting for its turn
  std::vector<bool> seen_;
  uint64_t drained_bytes_ = 0;
  AtomicFile out_;
};

// The output folder under construction: files go to "<final>.tmp.<pid>", and commit() renames
// that folder to `final`, refusing to replace anything that appeared there meanwhile. The
// destructor removes the temporary folder unless commit() succeeded, so a failed conversion
// leaves nothing under the final name (and after a crash, only the .tmp.<pid> folder).
class StagedFolder {
 public:
  explicit StagedFolder(std::string final_path);
  ~StagedFolder();
  StagedFolder(const StagedFolder&) = delete;
  StagedFolder& operator=(const StagedFolder&) = delete;

  std::string file(const std::string& name) const { return temp_ + "/" + name; }
  const std::string& temp_path() const { return temp_; }
  void commit();

 private:
  std::string final_, temp_;
  bool committed_ = false;
};

// Copies a small file byte for byte (atomically, io/atomic_file.h).
void copy_file(const std::string& from, const std::string& to);

// A progress bar on stderr, redrawn in place at most 10 times a second; silent unless stderr
// is a terminal (mlx-lm prints none; lmtune's lora draws its bar the same way).
class Progress {
 public:
  explicit Progress(uint64_t total_bytes);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  void add(uint64_t bytes, const std::string& what);
  void done();  // ends the bar's line

 private:
  void draw(bool force);
  uint64_t total_, done_ = 0;
  std::string what_;
  bool tty_, drawn_ = false;
  double t0_, last_ = -1;
};

}  // namespace lmtune::cli::convert
