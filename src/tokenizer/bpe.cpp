// Byte-pair encoding as Hugging Face's BPE model does it: rank-ordered merges over a linked list
// of symbols with a priority queue, byte_fallback, unk fusing, ignore_merges and a word cache.
#include <array>
#include <mutex>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/model.h"
#include "tokenizer/unicode.h"

namespace lmtune::tok {
namespace {

// (left id, right id) -> (rank, merged id), open addressing; a key and its value share a slot (one
// cache line to touch).
class PairMap {
 public:
  struct Value {
    int32_t rank, new_id;
  };
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    slots_.assign(cap, {kEmpty, {0, 0}});
  }
  void insert_or_assign(int32_t a, int32_t b, Value v) {
    uint64_t k = key(a, b);
    size_t i = slot(k);
    while (slots_[i].key != kEmpty && slots_[i].key != k) i = (i + 1) & (slots_.size() - 1);
    slots_[i] = {k, v};
  }
  const Value* find(int32_t a, int32_t b) const {
    uint64_t k = key(a, b);
    size_t i = slot(k);
    while (slots_[i].key != kEmpty) {
      if (slots_[i].key == k) return &slots_[i].value;
      i = (i + 1) & (slots_.size() - 1);
    }
    return nullptr;
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  struct Slot {
    uint64_t key;
    Value value;
  };
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  size_t slot(uint64_t k) const { return (k * 0x9E3779B97F4A7C15ull >> 17) & (slots_.size() - 1); }
  std::vector<Slot> slots_;
};

struct Symbol {
  int32_t id;
  int32_t prev, next;
  int32_t len;  // bytes; 0 once merged away
};

struct Merge {
  int32_t rank, pos, new_id;
  bool operator<(const Merge& o) const {  // priority_queue pops the smallest rank, then position
    return rank != o.rank ? rank > o.rank : pos > o.pos;
  }
};

class Bpe : public Model {
 public:
  Bpe(const nlohmann::json& j, const ModelTables* t) {
    if (t) {
      LMT_CHECK(t->vocab == ModelTables::kMap, "[tokenizer] BPE vocab must be an object");
      set_vocab(t->tokens, t->ids);
    } else {
      const auto& vocab = j.at("vocab");
      LMT_CHECK(vocab.is_object(), "[tokenizer] BPE vocab must be an object");
      vocab_.reserve(vocab.size());
      for (const auto& [tok, id] : vocab.items()) add_token(tok, token_id(id));
    }
    auto opt_string = [&](const char* k) {
      return j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : std::string();
    };
    unk_token_ = opt_string("unk_token");
    prefix_ = opt_string("continuing_subword_prefix");
    suffix_ = opt_string("end_of_word_suffix");
    byte_fallback_ = j.value("byte_fallback", false);
    fuse_unk_ = j.value("fuse_unk", false);
    ignore_merges_ = j.value("ignore_merges", false);
    LMT_CHECK(!j.contains("dropout") || j["dropout"].is_null() || j["dropout"].get<double>() == 0.0,
              "[tokenizer] BPE dropout is not supported");
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      byte_ids_[b] = vocab_.find(name);
    }
    if (t) {
      LMT_CHECK(t->has_merges, "[tokenizer] BPE model has no merges");
      add_merges(t->merges);
      return;
    }
    std::string merged;  // reused: no allocation per merge
    const auto& merges = j.at("merges");
    merges_.reserve(merges.size());
    int32_t rank = 0;
    for (const auto& m : merges) {
      if (m.is_string()) {
        const std::string& s = m.get_ref<const std::string&>();
        size_t sp = s.find(' ');
        LMT_CHECK(sp != std::string::npos, "[tokenizer] BPE merge \"", s, "\" is not two tokens");
        add_merge(std::string_view(s).substr(0, sp), std::string_view(s).substr(sp + 1), rank++, merged);
      } else {
        LMT_CHECK(m.is_array() && m.size() == 2, "[tokenizer] BPE merge ", m.dump(), " is not a pair");
        std::string a = m[0].get<std::string>(), b = m[1].get<std::string>();
        add_merge(a, b, rank++, merged);
      }
    }
  }

  void tokenize(std::string_view word, std::vector<int32_t>& out) const override {
    if (word.empty()) return;
    if (ignore_merges_) {
      int32_t id = vocab_.find(word);
      if (id >= 0) {
        out.push_back(id);
        return;
      }
    }
    {
      std::lock_guard<std::mutex> lock(cache_mu_);
      auto it = cache_.find(std::string(word));
      if (it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> ids;
    merge_word(word, ids);
    out.insert(out.end(), ids.begin(), ids.end());
    if (word.size() < 256) {
      std::lock_guard<std::mutex> lock(cache_mu_);
      if (cache_.size() < kCacheCapacity) cache_.emplace(std::string(word), std::move(ids));
    }
  }

 private:
  static constexpr size_t kCacheCapacity = 100000;

  // The merges of ModelTables (left, right, left, right, ...), a block at a time: the block's vocab
  // lookups (left, right and merged token of each) go to find_many together. An error here only sends
  // the load back to the DOM path (tokenizer.cpp build), whose add_merge names the problem.
  void add_merges(const StringList& pairs) {
    constexpr size_t kBlock = 1024;
    size_t n = pairs.size() / 2;
    merges_.reserve(n);
    std::string merged;  // the block's merged tokens, back to back
    std::vector<size_t> merged_end;
    std::vector<std::string_view> keys(3 * kBlock);
    std::vector<int32_t> ids(3 * kBlock);
    for (size_t first = 0; first < n; first += kBlock) {
      size_t m = std::min(kBlock, n - first);
      merged.clear();
      merged_end.clear();
      for (size_t k = 0; k < m; ++k) {
        std::string_view a = pairs[2 * (first + k)], b = pairs[2 * (first + k) + 1];
        merged.append(a);
        merged.append(b.substr(std::min(prefix_.size(), b.size())));
        merged_end.push_back(merged.size());
      }
      for (size_t k = 0; k < m; ++k) {
        size_t begin = k ? merged_end[k - 1] : 0;
        keys[3 * k] = pairs[2 * (first + k)];
        keys[3 * k + 1] = pairs[2 * (first + k) + 1];
        keys[3 * k + 2] = std::string_view(merged).substr(begin, merged_end[k] - begin);
      }
      vocab_.find_many(keys.data(), 3 * m, ids.data());
      for (size_t k = 0; k < m; ++k) {
        LMT_CHECK(ids[3 * k] >= 0 && ids[3 * k + 1] >= 0 && ids[3 * k + 2] >= 0, "[tokenizer] BPE merge \"",
                  keys[3 * k], " ", keys[3 * k + 1], "\" is not made of vocab tokens");
        merges_.insert_or_assign(ids[3 * k], ids[3 * k + 1], {static_cast<int32_t>(first + k), ids[3 * k + 2]});
      }
    }
  }

  void add_merge(std::string_view a, std::string_view b, int32_t rank, std::string& merged) {
    int32_t ia = vocab_.find(a), ib = vocab_.find(b);
    LMT_CHECK(ia >= 0 && ib >= 0, "[tokenizer] BPE merge \"", a, " ", b, "\" uses a token missing from the vocab");
    merged.assign(a);
    merged.append(b.substr(std::min(prefix_.size(), b.size())));
    int32_t inew = vocab_.find(merged);
    LMT_CHECK(inew >= 0, "[tokenizer] BPE merge \"", a, " ", b, "\" makes ", merged, ", missing from the vocab");
    merges_.insert_or_assign(ia, ib, {rank, inew});
  }

  void merge_word(std::string_view w, std::vector<int32_t>& ids) const {
    std::vector<Symbol> syms;
    syms.reserve(w.size());
    auto add = [&](int32_t id, int32_t len) {
      int32_t n = static_cast<int32_t>(syms.size());
      syms.push_back({id, n - 1, -1, len});
      if (n > 0) syms[n - 1].next = n;
    };
    int32_t unk_id = -1, unk_len = 0;  // pending unknown run
    std::string s;
    size_t i = 0;
    while (i < w.size()) {
      size_t b = i;
      i += utf8_len(static_cast<unsigned char>(w[i]));
      if (i > w.size()) i = w.size();
      int32_t byte_len = static_cast<int32_t>(i - b);
      s.assign(w.data() + b, i - b);
      if (b != 0 && !prefix_.empty()) s.insert(0, prefix_);
      if (i == w.size() && !suffix_.empty()) s += suffix_;
      int32_t id = vocab_.find(s);
      if (id >= 0) {
        if (unk_id >= 0) {
          add(unk_id, unk_len);
          unk_id = -1;
        }
        add(id, byte_len);
        continue;
      }
      if (byte_fallback_) {
        bool all = true;
        for (unsigned char c : s) all = all && byte_ids_[c] >= 0;
        if (all) {
          for (unsigned char c : s) add(byte_ids_[c], 1);
          continue;
        }
      }
      if (!unk_token_.empty()) {
        int32_t uid = vocab_.find(unk_token_);
        LMT_CHECK(uid >= 0, "[tokenizer] BPE unk_token ", unk_token_, " is not in the vocab");
        if (unk_id >= 0 && fuse_unk_) {
          unk_len += byte_len;
        } else {
          if (unk_id >= 0) add(unk_id, unk_len);
          unk_id = uid;
          unk_len = byte_len;
        }
      }
    }
    if (unk_id >= 0) add(unk_id, unk_len);

    std::priority_queue<Merge> queue;
    for (size_t k = 0; k + 1 < syms.size(); ++k)
      if (const auto* m = merges_.find(syms[k].id, syms[k + 1].id))
        queue.push({m->rank, static_cast<int32_t>(k), m->new_id});
    while (!queue.empty()) {
      Merge top = queue.top();
      queue.pop();
      Symbol& cur = syms[top.pos];
      if (cur.len == 0 || cur.next < 0) continue;
      int32_t next_pos = cur.next;
      Symbol right = syms[next_pos];
      const auto* m = merges_.find(cur.id, right.id);
      if (!m || m->new_id != top.new_id) continue;  // stale entry
      cur.id = top.new_id;
      cur.len += right.len;
      cur.next = right.next;
      syms[next_pos].len = 0;
      if (right.next >= 0) syms[right.next].prev = top.pos;
      if (cur.prev >= 0)
        if (const auto* pm = merges_.find(syms[cur.prev].id, cur.id)) queue.push({pm->rank, cur.prev, pm->new_id});
      if (cur.next >= 0)
        if (const auto* nm = merges_.find(cur.id, syms[cur.next].id)) queue.push({nm->rank, top.pos, nm->new_id});
    }
    for (const Symbol& sym : syms)
      if (sym.len != 0) ids.push_back(sym.id);
  }

  PairMap merges_;
  std::string unk_token_, prefix_, suffix_;
  bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;
  std::array<int32_t, 256> byte_ids_{};
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace

std::unique_ptr<Model> make_bpe(const nlohmann::json& j, const ModelTables* t) { return std::make_unique<Bpe>(j, t); }

}  // namespace lmtune::tok
