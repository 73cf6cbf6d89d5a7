#include "core/tensor.h"

#include <cstring>
#include <sstream>

#include "core/allocator.h"
#include "core/error.h"

namespace lmtune {

int64_t numel_of(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ")";
  return os.str();
}

Storage::Storage(Device d, size_t nbytes) : device_(d), data_(allocator(d).allocate(nbytes)), nbytes_(nbytes) {}

Storage::Storage(Device d, void* data, size_t nbytes, std::shared_ptr<void> owner)
    : device_(d), data_(data), nbytes_(nbytes), owner_(std::move(owner)) {
  if (!owner_) fail("[Storage] borrowed memory needs an owner");
}

Storage::~Storage() {
  if (!owner_ && !released_) allocator(device_).release(data_, nbytes_);
}

void Storage::release() {
  if (released_) return;
  if (owner_)
    owner_.reset();
  else
    allocator(device_).release(data_, nbytes_);
  data_ = nullptr;
  released_ = true;
}

void Storage::restore() {
  if (!released_) return;
  data_ = allocator(device_).allocate(nbytes_);
  released_ = false;
}

Tensor Tensor::empty(const Shape& shape, DType dt, Device d) {
  for (int64_t s : shape) LMT_CHECK(s >= 0, "[Tensor::empty] negative dimension in ", shape_str(shape));
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dt;
  t.storage_ = std::make_shared<Storage>(d, t.nbytes());
  return t;
}

Tensor Tensor::zeros_cpu(const Shape& shape, DType dt) {
  Tensor t = empty(shape, dt, Device::cpu);
  std::memset(t.raw(), 0, t.nbytes());
  return t;
}

Tensor Tensor::from_f32(const std::vector<float>& v, const Shape& shape) {
  LMT_CHECK(int64_t(v.size()) == numel_of(shape), "[Tensor::from_f32] ", v.size(), " values for shape ",
            shape_str(shape));
  Tensor t = empty(shape, DType::f32);
  if (!v.empty()) std::memcpy(t.raw(), v.data(), v.size() * 4);  // an empty vector's data() may be null
  return t;
}

Tensor Tensor::from_i32(const std::vector<int32_t>& v, const Shape& shape) {
  LMT_CHECK(int64_t(v.size()) == numel_of(shape), "[Tensor::from_i32] ", v.size(), " values for shape ",
            shape_str(shape));
  Tensor t = empty(shape, DType::i32);
  if (!v.empty()) std::memcpy(t.raw(), v.data(), v.size() * 4);  // an empty vector's data() may be null
  return t;
}

Tensor Tensor::borrow(std::shared_ptr<Storage> st, size_t offset, const Shape& shape, DType dt) {
  Tensor t;
  t.storage_ = std::move(st);
  t.offset_ = offset;
  t.shape_ = shape;
  t.dtype_ = dt;
  LMT_CHECK(offset + t.nbytes() <= t.storage_->nbytes(), "[Tensor::borrow] view ", shape_str(shape), " at offset ",
            offset, " exceeds storage of ", t.storage_->nbytes(), " bytes");
  return t;
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  int j = i < 0 ? i + n : i;
  LMT_CHECK(j >= 0 && j < n, "[Tensor::dim] index ", i, " out of range for ", shape_str(shape_));
  return shape_[j];
}

Tensor Tensor::reshape(const Shape& shape) const {
  Shape s = shape;
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      LMT_CHECK(infer < 0, "[reshape] more than one -1 in ", shape_str(shape));
      infer = int(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    LMT_CHECK(known > 0 && numel() % known == 0, "[reshape] cannot reshape ", shape_str(shape_), " to ",
              shape_str(shape));
    s[infer] = numel() / known;
  }
  LMT_CHECK(numel_of(s) == numel(), "[reshape] cannot reshape ", shape_str(shape_), " to ", shape_str(shape));
  Tensor t = *this;
  t.shape_ = s;
  t.ag_.reset();
  return t;
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  LMT_CHECK(ndim() >= 1 && begin >= 0 && begin <= end && end <= shape_[0], "[slice_rows] [", begin, ", ", end,
            ") out of range for ", shape_str(shape_));
  Tensor t = *this;
  int64_t row = numel() / (shape_[0] ? shape_[0] : 1);
  t.offset_ = offset_ + size_t(begin * row) * dtype_size(dtype_);
  t.shape_[0] = end - begin;
  t.ag_.reset();
  return t;
}

Tensor Tensor::detach() const {
  Tensor t = *this;
  t.ag_.reset();
  return t;
}

void Tensor::check_host_access() const {
  LMT_CHECK(defined(), "[Tensor::data] undefined tensor");
  LMT_CHECK(!storage_->released(), "[Tensor::data] the memory of ", describe(),
            " is released (a sharded weight outside its block)");
  LMT_CHECK(device() == Device::cpu, "[Tensor::data] host access to a ", device_name(device()),
            " tensor; copy it to the cpu first");
}

std::vector<float> Tensor::to_f32_vector() const {
  check_host_access();
  std::vector<float> out(static_cast<size_t>(numel()));
  const void* p = raw();
  switch (dtype_) {
    case DType::f32: std::memcpy(out.data(), p, out.size() * 4); break;
    case DType::bf16:
      for (size_t i = 0; i < out.size(); ++i) out[i] = bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
      break;
    case DType::f16:
      for (size_t i = 0; i < out.size(); ++i) out[i] = f16_to_f32(static_cast<const uint16_t*>(p)[i]);
      break;
    case DType::i32:
      for (size_t i = 0; i < out.size(); ++i) out[i] = float(static_cast<const int32_t*>(p)[i]);
      break;
    default: fail("[to_f32_vector] unsupported dtype ", dtype_name(dtype_));
  }
  return out;
}

std::string Tensor::describe() const {
  return str_cat(dtype_name(dtype_), " ", shape_str(shape_), " ", device_name(device()));
}

}  // namespace lmtune
