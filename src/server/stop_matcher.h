// StopMatcher: OpenAI's `stop` strings over streamed text. Text that could still be the start of a
// stop string is held back; once a stop string appears, the text before it is the last released
// and the stop string itself is never emitted.
#pragma once
#include <string>
#include <vector>

namespace lmtune::server {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);  // non-empty strings
  // Adds a piece of text; returns what is safe to emit now (empty once stopped()).
  std::string push(const std::string& piece);
  // The held-back rest when generation ended without a stop string.
  std::string finish();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;  // text not emitted yet: a possible start of a stop string
  bool stopped_ = false;
};

}  // namespace lmtune::server
