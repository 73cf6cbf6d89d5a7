#include "server/prompt_segments.h"

#include <algorithm>
#include <string>

#include "tokenizer/tokenizer.h"

namespace lmtune::server {

std::vector<int32_t> think_start_ids(const Tokenizer& tok) {
  static const char* kPairs[][2] = {
      {"<think>", "</think>"}, {"<longcat_think>", "</longcat_think>"}, {"<|think:start|>", "<|think:end|>"}};
  for (const auto& pair : kPairs) {
    const int32_t open = tok.token_to_id(pair[0]);
    if (open >= 0 && tok.token_to_id(pair[1]) >= 0) return {open};
  }
  if (tok.token_to_id("<|channel>") >= 0 && tok.token_to_id("<channel|>") >= 0)
    return tok.encode("<|channel>thought", false);
  return {};
}

std::vector<int64_t> segment_ends(const std::vector<int32_t>& ids, const std::vector<int32_t>& system_head,
                                  const std::vector<int32_t>& think) {
  const int64_t n = int64_t(ids.size());
  int64_t sys_end = 0;
  if (!system_head.empty()) {
    const size_t common = std::min(system_head.size(), ids.size());
    sys_end = std::mismatch(system_head.begin(), system_head.begin() + int64_t(common), ids.begin()).first -
              system_head.begin();
  }
  int64_t tail_start = n;
  const int64_t k = int64_t(think.size());
  if (k > 0)
    for (int64_t i = n - k; i >= std::max<int64_t>(0, n - 11); --i)
      if (std::equal(think.begin(), think.end(), ids.begin() + i)) {
        tail_start = i;
        break;
      }
  std::vector<int64_t> ends;
  if (sys_end > 0 && sys_end < n) ends.push_back(sys_end);
  if (tail_start > sys_end && tail_start < n) ends.push_back(tail_start);
  return ends;
}

}  // namespace lmtune::server
