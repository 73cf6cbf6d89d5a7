// Tensor: shape, dtype, device and reference-counted storage. Always contiguous and
// row-major in PyTorch's dimension order; a view only shares storage at a byte offset.
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace lmtune {

using Shape = std::vector<int64_t>;
int64_t numel_of(const Shape& s);
std::string shape_str(const Shape& s);  // "(2, 3, 4)"

// Device memory owned by the caching allocator, or borrowed (an mmap) and kept alive by owner.
class Storage {
 public:
  Storage(Device d, size_t nbytes);                                           // allocates
  Storage(Device d, void* data, size_t nbytes, std::shared_ptr<void> owner);  // borrows
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

  // Sharded training (train/sharding.h) frees a weight's memory between the uses of its block and
  // keeps the object, so that every tensor on it (the model's, the autograd leaf's) sees the memory
  // come back: release() frees it (a borrowed one is let go), restore() allocates nbytes again
  // (contents undefined until written). A released storage must not be read.
  void release();
  void restore();
  bool released() const { return released_; }

 private:
  Device device_;
  void* data_;
  size_t nbytes_;
  std::shared_ptr<void> owner_;  // null when the allocator owns data_
  bool released_ = false;
};

struct AutogradMeta;  // defined by autograd/; core only carries the slot

class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(const Shape& shape, DType dt, Device d = Device::cpu);
  // CPU only; the ops layer offers device-generic fills.
  static Tensor zeros_cpu(const Shape& shape, DType dt = DType::f32);
  static Tensor from_f32(const std::vector<float>& v, const Shape& shape);
  static Tensor from_i32(const std::vector<int32_t>& v, const Shape& shape);
  static Tensor borrow(std::shared_ptr<Storage> st, size_t offset, const Shape& shape, DType dt);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const;  // negative i counts from the end
  int ndim() const { return int(shape_.size()); }
  int64_t numel() const { return numel_of(shape_); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::cpu; }
  bool is_cuda() const { return device() == Device::cuda; }

  void* raw() const { return static_cast<char*>(storage_->data()) + offset_; }
  template <typename T>
  T* data() const {
    check_host_access();
    return static_cast<T*>(raw());
  }

  // Views sharing storage (no copy).
  Tensor reshape(const Shape& shape) const;             // one dim may be -1
  Tensor slice_rows(int64_t begin, int64_t end) const;  // along dim 0
  Tensor detach() const;                                // same data, no autograd history

  std::vector<float> to_f32_vector() const;  // CPU tensors of any float dtype
  std::string describe() const;              // "bf16 (2, 3) cuda"

  const std::shared_ptr<AutogradMeta>& ag() const { return ag_; }
  void set_ag(std::shared_ptr<AutogradMeta> m) { ag_ = std::move(m); }
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  bool same_storage(const Tensor& o) const { return storage_ == o.storage_ && offset_ == o.offset_; }

 private:
  void check_host_access() const;
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;
  Shape shape_;
  DType dtype_ = DType::f32;
  std::shared_ptr<AutogradMeta> ag_;
};

}  // namespace lmtune
