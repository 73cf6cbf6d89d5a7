// The prompt cache's list: a lookup scans every entry for its common prefix with the prompt; an
// insert drops the entries it covers (or is covered by one), then evicts from the least recently
// used end.
#include "runtime/prompt_cache.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <string>

#include "core/error.h"

namespace lmtune {

namespace {

int64_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return int64_t(i);
}

}  // namespace

PromptCache::PromptCache(PromptCacheLimits limits) : limits_(limits) {
  LMT_CHECK(limits_.max_entries >= 0 && limits_.max_bytes >= 0, "[prompt_cache] negative bounds: ", limits_.max_entries,
            " entries, ", limits_.max_bytes, " bytes");
}

PromptCache::Hit PromptCache::lookup(const std::vector<int32_t>& prompt, const std::string& key) {
  const int64_t usable = int64_t(prompt.size()) - 1;
  auto best = entries_.end();
  int64_t best_len = 0;
  for (auto it = entries_.begin(); it != entries_.end() && usable > 0; ++it) {
    if (it->key != key) continue;
    const int64_t n = std::min(common_prefix(it->tokens, prompt), usable);
    if (n > best_len) best = it, best_len = n;  // strictly longer: ties keep the more recent
  }
  if (best == entries_.end()) return {};
  entries_.splice(entries_.begin(), entries_, best);
  return {best->cache->copy_prefix(best_len), best_len};
}

void PromptCache::insert(std::vector<int32_t> tokens, std::unique_ptr<DenseKVCache> cache, const std::string& key,
                         bool checkpoint) {
  if (!enabled() || tokens.empty() || !cache) return;
  LMT_CHECK(cache->offset() == int64_t(tokens.size()), "[prompt_cache] a cache holding ", cache->offset(),
            " tokens stored under ", tokens.size());
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->key != key) {
      ++it;
      continue;
    }
    const int64_t n = common_prefix(it->tokens, tokens);
    // Already covered: keep the older, longer (or equal) entry; a checkpoint only by an equal one.
    if (n == int64_t(tokens.size()) && (!checkpoint || n == int64_t(it->tokens.size()))) {
      it->checkpoint = it->checkpoint || checkpoint;
      entries_.splice(entries_.begin(), entries_, it);
      return;
    }
    if (n == int64_t(it->tokens.size()) && !it->checkpoint) {  // the new entry covers this one
      bytes_ -= it->bytes;
      it = entries_.erase(it);
      continue;
    }
    ++it;
  }
  const int64_t b = int64_t(cache->nbytes());
  if (limits_.max_bytes > 0 && b > limits_.max_bytes) return;
  entries_.push_front({std::move(tokens), key, std::move(cache), b, checkpoint});
  bytes_ += b;
  evict();
}

bool PromptCache::touch(const std::vector<int32_t>& tokens, const std::string& key, bool checkpoint) {
  for (auto it = entries_.begin(); it != entries_.end(); ++it)
    if (it->key == key && it->tokens == tokens) {
      it->checkpoint = it->checkpoint || checkpoint;
      entries_.splice(entries_.begin(), entries_, it);
      return true;
    }
  return false;
}

void PromptCache::evict() {
  while (!entries_.empty() &&
         (int64_t(entries_.size()) > limits_.max_entries || (limits_.max_bytes > 0 && bytes_ > limits_.max_bytes))) {
    // The least recently used entry that is no checkpoint, else the least recently used checkpoint.
    auto victim = std::prev(entries_.end());
    for (auto it = entries_.rbegin(); it != entries_.rend(); ++it)
      if (!it->checkpoint) {
        victim = std::prev(it.base());
        break;
      }
    bytes_ -= victim->bytes;
    entries_.erase(victim);
    ++evictions_;
  }
}

std::vector<std::vector<int32_t>> PromptCache::keys() const {
  std::vector<std::vector<int32_t>> out;
  for (const Entry& e : entries_) out.push_back(e.tokens);
  return out;
}

int64_t parse_size(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  std::string unit = text.substr(i);
  for (char& c : unit) c = char(std::toupper(static_cast<unsigned char>(c)));
  double number = 0;
  bool ok = i > 0 && std::count(text.begin(), text.begin() + long(i), '.') <= 1 && text[0] != '.';
  if (ok) number = std::stod(text.substr(0, i));
  double scale = 0;
  const char* units[] = {"", "B", "KB", "MB", "GB", "TB", "KIB", "MIB", "GIB", "TIB"};
  const double scales[] = {1, 1, 1e3, 1e6, 1e9, 1e12, 1024.0, 1048576.0, 1073741824.0, 1099511627776.0};
  for (size_t u = 0; u < std::size(units); ++u)
    if (unit == units[u]) scale = scales[u];
  const double bytes = number * scale;
  LMT_CHECK(ok && scale > 0 && bytes < 9.2e18, "[prompt_cache] '", text,
            "' is not a size (a number with an optional unit: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)");
  return int64_t(std::llround(bytes));
}

}  // namespace lmtune
