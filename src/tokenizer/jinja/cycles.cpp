// The render's cycle collector (cycles.h): trial deletion over the tracked payloads, as CPython's
// gc does it. A payload whose owners are not all other tracked payloads is held from outside and
// stays, with everything it reaches; the rest only hold each other and are emptied.
#include "tokenizer/jinja/cycles.h"

#include <unordered_map>

#include "tokenizer/jinja/value.h"

namespace lmtune::jinja {

namespace {
thread_local CycleCollector* current = nullptr;
}  // namespace

CycleCollector::CycleCollector() : outer_(current) { current = this; }

CycleCollector::~CycleCollector() {
  current = outer_;
  collect();
}

void track_payload(const std::shared_ptr<void>& p, Payload kind) {
  CycleCollector* c = current;
  if (!c || !p) return;
  c->tracked_.emplace_back(p, kind);
  if (c->tracked_.size() >= c->prune_at_) {
    std::erase_if(c->tracked_, [](const auto& t) { return t.first.expired(); });
    c->prune_at_ = std::max<size_t>(1024, 2 * c->tracked_.size());
  }
}

void CycleCollector::collect() noexcept {
  try {
    std::vector<std::shared_ptr<void>> objs;  // holds every live payload until the end
    std::vector<Payload> kinds;
    std::unordered_map<const void*, size_t> index;
    for (auto& [w, k] : tracked_) {
      std::shared_ptr<void> s = w.lock();
      if (!s || index.count(s.get())) continue;
      index.emplace(s.get(), objs.size());
      objs.push_back(std::move(s));
      kinds.push_back(k);
    }
    tracked_.clear();
    tracked_.shrink_to_fit();
    const size_t n = objs.size();
    auto each_child = [&](size_t i, auto&& f) {
      switch (kinds[i]) {
        case Payload::List:
          for (const Value& v : *static_cast<List*>(objs[i].get())) f(v);
          break;
        case Payload::Dict:
          for (const auto& kv : static_cast<Dict*>(objs[i].get())->entries) f(kv.second);
          break;
        case Payload::Function: f(static_cast<Function*>(objs[i].get())->self); break;
      }
    };
    auto find = [&](const Value& v) -> size_t {
      if (!v.ptr) return n;
      auto it = index.find(v.ptr.get());
      return it == index.end() ? n : it->second;
    };
    // Owners from outside the tracked set: all owners, less objs' own, less tracked parents.
    std::vector<long> outside(n);
    for (size_t i = 0; i < n; ++i) outside[i] = objs[i].use_count() - 1;
    for (size_t i = 0; i < n; ++i)
      each_child(i, [&](const Value& v) {
        if (size_t j = find(v); j < n) --outside[j];
      });
    std::vector<char> reached(n, 0);
    std::vector<size_t> stack;
    for (size_t i = 0; i < n; ++i)
      if (outside[i] > 0) reached[i] = 1, stack.push_back(i);
    while (!stack.empty()) {
      size_t i = stack.back();
      stack.pop_back();
      each_child(i, [&](const Value& v) {
        size_t j = find(v);
        if (j < n && !reached[j]) reached[j] = 1, stack.push_back(j);
      });
    }
    // Emptying one garbage payload frees nothing yet (objs holds them all); objs going out of
    // scope then frees them, nested ones through value.cpp's queued deleters.
    for (size_t i = 0; i < n; ++i) {
      if (reached[i]) continue;
      switch (kinds[i]) {
        case Payload::List: static_cast<List*>(objs[i].get())->clear(); break;
        case Payload::Dict: static_cast<Dict*>(objs[i].get())->entries.clear(); break;
        case Payload::Function: static_cast<Function*>(objs[i].get())->self = Value(); break;
      }
    }
  } catch (...) {
    // Out of memory while collecting: the cycles stay allocated, as they did before.
  }
}

}  // namespace lmtune::jinja
