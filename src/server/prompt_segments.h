// mlx-lm's segments of a chat prompt (its server's prompt-cache entries): the system prompt, the user
// content, and a short tail that opens the model's thinking. The cache is kept at the end of every
// segment but the last, so that another conversation with the same system prompt, or the next turn of
// this one (whose render drops the thinking tail), starts from a kept state.
#pragma once
#include <cstdint>
#include <vector>

namespace lmtune {
class Tokenizer;
}

namespace lmtune::server {

// The tokens that open thinking, as mlx-lm infers them from the vocabulary: one of the single-token
// pairs <think>/</think>, <longcat_think>/</longcat_think>, <|think:start|>/<|think:end|> (both of a pair
// in the vocabulary), or <|channel>thought where <|channel> and <channel|> are; empty for none.
std::vector<int32_t> think_start_ids(const Tokenizer& tok);

// Where a prompt's segments end, ascending, the prompt's own end left out. system_head: the leading
// system messages rendered before an empty user message (empty when the chat has none); the system
// segment ends where it and ids first differ. think: think_start_ids; the thinking tail starts at its
// last occurrence that begins in the prompt's final 11 tokens.
std::vector<int64_t> segment_ends(const std::vector<int32_t>& ids, const std::vector<int32_t>& system_head,
                                  const std::vector<int32_t>& think);

}  // namespace lmtune::server
