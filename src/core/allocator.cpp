#include "core/allocator.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>

#include "core/error.h"
#include "core/runtime_config.h"
#include "core/sanitizer.h"

namespace lmtune {
namespace {

constexpr bool kMapLarge = !LMTUNE_ASAN;  // ASan watches malloc'd blocks only: keep them all there

// Blocks of 64 KiB and more are mapped and unmapped directly, so that a block the cache gives back
// leaves the process. Through malloc they stayed in its heap: glibc raises its mmap threshold to
// the largest block freed, and the heap's holes kept a second 10,000-token generation 75 MiB above
// the first (bench/NOTES.md, "Memory that stays flat").
struct CpuMemory final : DeviceMemory {
  static constexpr size_t kMapBytes = size_t(64) << 10;
  std::mutex mu;
  std::unordered_map<void*, size_t> mapped;

  void* raw_alloc(size_t n) override {
    if (kMapLarge && n >= kMapBytes) {
      void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) fail("[allocator] cpu: out of memory mapping ", n, " bytes");
      std::lock_guard<std::mutex> lock(mu);
      mapped.emplace(p, n);
      return p;
    }
    void* p = std::aligned_alloc(64, n);
    if (!p) fail("[allocator] cpu: out of memory allocating ", n, " bytes");
    return p;
  }
  void raw_free(void* p) override {
    if (kMapLarge) {
      std::unique_lock<std::mutex> lock(mu);
      auto it = mapped.find(p);
      if (it != mapped.end()) {
        size_t n = it->second;
        mapped.erase(it);
        lock.unlock();
        ::munmap(p, n);
        return;
      }
    }
    std::free(p);
  }
};

DeviceMemory* g_memory[2] = {nullptr, nullptr};

DeviceMemory& memory_of(Device d) {
  static CpuMemory cpu;
  if (d == Device::cpu) return cpu;
  DeviceMemory* m = g_memory[int(d)];
  if (!m) fail("[allocator] no memory registered for device ", device_name(d));
  return *m;
}

}  // namespace

void register_device_memory(Device d, DeviceMemory* mem) { g_memory[int(d)] = mem; }

size_t CachingAllocator::round_size(size_t n) {
  if (n == 0) return 64;
  if (n <= (size_t(1) << 20)) return (n + 511) & ~size_t(511);
  // Above 1 MiB: round to 1/8 of the power of two below, bounding waste at 12.5%.
  size_t p = 1;
  while (p * 2 <= n) p *= 2;
  size_t step = p / 8;
  return (n + step - 1) / step * step;
}

void CachingAllocator::evict_for(size_t size) {
  constexpr size_t kSlack = size_t(32) << 20;
  const size_t in_use = std::max(high_water_, current_ + size);
  const size_t bound = in_use + in_use / 4 + kSlack;
  while (!lru_.empty() && current_ + cached_ + size > bound) {
    const Block b = lru_.front();
    auto [lo, hi] = free_.equal_range(b.nbytes);
    for (auto it = lo; it != hi; ++it) {
      if (it->second == lru_.begin()) {
        free_.erase(it);
        break;
      }
    }
    lru_.pop_front();
    cached_ -= b.nbytes;
    memory_of(device_).raw_free(b.p);
  }
}

void* CachingAllocator::allocate(size_t nbytes) {
  size_t size = round_size(nbytes);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = free_.find(size);
  void* p;
  if (it != free_.end()) {
    p = it->second->p;
    lru_.erase(it->second);
    free_.erase(it);
    cached_ -= size;
  } else {
    // Not while a CUDA graph is captured: freeing device memory would synchronize the stream.
    if (!holding_ && bounded_) evict_for(size);
    try {
      p = memory_of(device_).raw_alloc(size);
    } catch (const Error&) {
      // Out of memory: give the cache back and try once more.
      for (const Block& b : lru_) memory_of(device_).raw_free(b.p);
      lru_.clear();
      free_.clear();
      cached_ = 0;
      p = memory_of(device_).raw_alloc(size);
    }
  }
  current_ += size;
  if (current_ > peak_) peak_ = current_;
  if (current_ > high_water_) high_water_ = current_;
  return p;
}

void CachingAllocator::release(void* p, size_t nbytes) {
  if (!p) return;
  size_t size = round_size(nbytes);
  std::lock_guard<std::mutex> lock(mu_);
  if (holding_) {  // still counted as in use: the graph being captured owns it
    held_.push_back({p, nbytes});
    return;
  }
  current_ -= size;
  lru_.push_back({p, size});
  free_.emplace(size, std::prev(lru_.end()));
  cached_ += size;
}

void CachingAllocator::begin_hold() {
  std::lock_guard<std::mutex> lock(mu_);
  LMT_CHECK(!holding_, "[allocator] a hold is already open on ", device_name(device_));
  holding_ = true;
}

std::vector<CachingAllocator::Block> CachingAllocator::end_hold() {
  std::lock_guard<std::mutex> lock(mu_);
  holding_ = false;
  std::vector<Block> out;
  out.swap(held_);
  return out;
}

void CachingAllocator::release_held(const std::vector<Block>& blocks) {
  for (const Block& b : blocks) release(b.p, b.nbytes);
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  for (const Block& b : lru_) memory_of(device_).raw_free(b.p);
  lru_.clear();
  free_.clear();
  cached_ = 0;
}

CachingAllocator::~CachingAllocator() {
  // Process exit: the device may already be torn down, so leave device blocks to the driver.
  if (device_ == Device::cpu) empty_cache();
}

CachingAllocator& allocator(Device d) {
  static CachingAllocator* cpu = new CachingAllocator(Device::cpu);
  static CachingAllocator* cuda = new CachingAllocator(Device::cuda, runtime_config().cuda_cache_bound);
  return d == Device::cpu ? *cpu : *cuda;
}

}  // namespace lmtune
