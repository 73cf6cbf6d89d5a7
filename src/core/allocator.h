// Caching allocator per device: freed blocks are kept in size buckets and reused; it
// tracks current and peak bytes, which the CLI prints as "Peak mem". The cache is bounded: when
// a request finds no block of its size, the least recently freed blocks go back to the device
// until what is in use plus what is cached fits in 1.25 x the most ever in use + 32 MiB. A loop
// of fixed shapes reuses its blocks and never evicts; sizes that keep changing (a KV cache grown
// 256 entries at a time, attention over a longer prefix each step) no longer pile up forever.
#pragma once
#include <cstddef>
#include <list>
#include <map>
#include <mutex>
#include <vector>

#include "core/dtype.h"

namespace lmtune {

// Raw memory of one device; the CPU's lives in core, CUDA's is registered by its backend.
struct DeviceMemory {
  virtual ~DeviceMemory() = default;
  virtual void* raw_alloc(size_t nbytes) = 0;
  virtual void raw_free(void* p) = 0;
};

void register_device_memory(Device d, DeviceMemory* mem);

class CachingAllocator {
 public:
  // bounded: the cache is kept within 1.25 x the most bytes ever in use + 32 MiB (evict_for). The
  // process-wide allocators: always on the CPU, on CUDA with LMTUNE_CUDA_CACHE_BOUND=1.
  explicit CachingAllocator(Device d, bool bounded = true) : device_(d), bounded_(bounded) {}
  ~CachingAllocator();
  void* allocate(size_t nbytes);
  void release(void* p, size_t nbytes);
  void empty_cache();  // return cached blocks to the device
  size_t current_bytes() const { return current_; }
  size_t peak_bytes() const { return peak_; }
  size_t cached_bytes() const { return cached_; }
  void reset_peak() { peak_ = current_; }
  static size_t round_size(size_t nbytes);

  // While a hold is open, a released block is set aside instead of going back to the cache, so
  // every block handed out during the hold stays distinct and untouched by anyone else until
  // release_held: a CUDA graph being captured keeps its intermediates at fixed addresses that
  // each replay writes again. Blocks still owned by tensors at end_hold are released as usual.
  struct Block {
    void* p;
    size_t nbytes;
  };
  void begin_hold();
  std::vector<Block> end_hold();
  void release_held(const std::vector<Block>& blocks);

 private:
  void evict_for(size_t size);  // under mu_: frees the oldest cached blocks past the bound

  Device device_;
  bool bounded_;
  std::mutex mu_;
  std::list<Block> lru_;                                    // cached blocks, least recently freed first
  std::multimap<size_t, std::list<Block>::iterator> free_;  // rounded size -> its entry in lru_
  bool holding_ = false;
  std::vector<Block> held_;
  size_t current_ = 0, peak_ = 0, cached_ = 0;
  size_t high_water_ = 0;  // the most bytes ever in use (reset_peak leaves it): the cache's bound
};

CachingAllocator& allocator(Device d);

}  // namespace lmtune
