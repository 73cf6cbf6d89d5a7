// The server's prompt cache: KV caches of finished sequences kept under the tokens they hold
// (prompt + generated ids, minus the last one, which was never fed), so that a new prompt sharing
// a prefix with one of them starts from a copy of that prefix and prefills only the rest. Bounded
// by entries and bytes, least recently used first out. Used from the batching engine's thread only:
// no locking. Lookup is a scan over the entries (their count is --prompt-cache-size, 10 by default).
// Each entry also carries a key naming the weights that made it (the server's model folder and
// adapters): a lookup only sees entries of its own key, so caches never cross models or adapters;
// the bounds hold over every key together.
#pragma once
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "runtime/kv_cache.h"

namespace lmtune {

struct PromptCacheLimits {
  int64_t max_entries = 10;  // 0: no cache (nothing is stored, every lookup misses)
  int64_t max_bytes = 0;     // 0: no byte bound
};

class PromptCache {
 public:
  explicit PromptCache(PromptCacheLimits limits);

  struct Hit {
    std::unique_ptr<DenseKVCache> cache;  // null on a miss
    int64_t tokens = 0;                   // the prompt's first `tokens` ids are in cache
  };
  // The entry sharing the longest prefix with prompt (ties: the most recently used), its cache
  // copied (DenseKVCache::copy_prefix) up to that prefix, at most prompt.size() - 1 tokens: the
  // last prompt token is always fed, its logits choose the first generated token. The entry
  // becomes the most recently used. A miss when no entry of `key` shares a first token.
  Hit lookup(const std::vector<int32_t>& prompt, const std::string& key = {});

  // Keeps cache (holding exactly tokens.size() tokens) under tokens, as the most recently used.
  // An entry whose tokens are a prefix of these is dropped (this one serves every prompt it did,
  // at least as far); if these tokens are a prefix of (or equal to) an entry's, that entry is
  // kept and marked used instead and cache is discarded. A cache over max_bytes alone is
  // discarded. Then the least recently used entries go until both bounds hold. Entries of other
  // keys are neither dropped nor kept instead (only evicted for the bounds).
  // A checkpoint (mlx-lm's segment entries: the cache at the end of a chat's system prompt, kept
  // while the request is still running) is never dropped for a longer entry that covers it, and
  // goes for the bounds only after every other entry: a system prompt shared by conversations
  // stays reusable however their other entries come and go.
  void insert(std::vector<int32_t> tokens, std::unique_ptr<DenseKVCache> cache, const std::string& key = {},
              bool checkpoint = false);

  // True when an entry of key holds exactly tokens; it becomes the most recently used (and a
  // checkpoint, with checkpoint): what insert would do, without the copy of a cache to discard.
  bool touch(const std::vector<int32_t>& tokens, const std::string& key, bool checkpoint);

  bool enabled() const { return limits_.max_entries > 0; }
  int64_t entries() const { return int64_t(entries_.size()); }
  int64_t bytes() const { return bytes_; }
  uint64_t evictions() const { return evictions_; }
  // The entries' token sequences, most recently used first (for tests and logs).
  std::vector<std::vector<int32_t>> keys() const;

 private:
  struct Entry {
    std::vector<int32_t> tokens;
    std::string key;
    std::unique_ptr<DenseKVCache> cache;
    int64_t bytes = 0;
    bool checkpoint = false;
  };
  void evict();
  PromptCacheLimits limits_;
  std::list<Entry> entries_;  // most recently used first
  int64_t bytes_ = 0;
  uint64_t evictions_ = 0;
};

// mlx-lm's size strings for --prompt-cache-bytes: a number with an optional unit B, KB, MB, GB or
// TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), case-insensitive, e.g. "2GB",
// "512MiB", "1.5gb", "1000". Throws Error naming the text otherwise.
int64_t parse_size(const std::string& text);

}  // namespace lmtune
