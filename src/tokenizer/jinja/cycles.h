// Reference cycles of a render: a template can make values that hold themselves (a list appended
// to itself, a namespace stored in its own attribute, a bound method kept in its own list), which
// shared pointers alone never free. Containers made while a CycleCollector lives on the thread are
// tracked; when it ends (after the render's evaluator and context), those reachable only from
// each other are emptied, so they are freed. Values keep Python's semantics during the render.
#pragma once
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace lmtune::jinja {

// What a tracked payload holds: Values in a List, a Dict's entries, or a bound method's self.
enum class Payload : uint8_t { List, Dict, Function };

class CycleCollector {
 public:
  CycleCollector();
  ~CycleCollector();  // collects; never throws
  CycleCollector(const CycleCollector&) = delete;
  CycleCollector& operator=(const CycleCollector&) = delete;

 private:
  friend void track_payload(const std::shared_ptr<void>& p, Payload kind);
  void collect() noexcept;

  std::vector<std::pair<std::weak_ptr<void>, Payload>> tracked_;
  size_t prune_at_ = 1024;  // expired entries are dropped when the list reaches this size
  CycleCollector* outer_ = nullptr;
};

// Called by Value's factories: tracks p in the thread's innermost collector, if any.
void track_payload(const std::shared_ptr<void>& p, Payload kind);

// List and Dict payloads alive in the process (tests check that a render frees what it made).
int64_t live_containers();

}  // namespace lmtune::jinja
