// Bounds on what one template may make the interpreter do: chat templates arrive with models
// from strangers, so nesting, recursion, loops and built values are capped; an exceeded bound
// fails with "[jinja] line L, column C: ..." instead of a stack overflow, a hang or an OOM.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/error.h"

namespace lmtune::jinja {

// Parse time: nesting of an expression tree (parentheses, operator chains, `not not ...`) and of
// statement blocks. The real chat templates we test stay under 20 of either.
inline constexpr int kMaxNesting = 256;
// Render time: macro calls in progress at once (jinja2 itself stops near 200, at Python's
// recursion limit), and statement + expression evaluation depth across macro calls.
inline constexpr int kMaxMacroDepth = 200;
inline constexpr int kMaxEvalDepth = 2000;  // ~1 MB of stack in a release build
// Render time, per render: for-loop iterations in total, and macro calls in total.
inline constexpr int64_t kMaxLoopIterations = 1'000'000;
inline constexpr int64_t kMaxMacroCalls = 1'000'000;
// Values nested in values (printing, JSON, comparison, a context's JSON): deeper is refused, and a
// list that contains itself is caught by the same bound.
inline constexpr int kMaxValueDepth = 512;
// Any one string (the output included) and any one list, tuple or dict the template builds.
inline constexpr size_t kMaxStringBytes = size_t(64) << 20;
inline constexpr size_t kMaxItems = 10'000'000;
// Bytes of strings and list slots built by operators, filters and calls in one render, so a
// loop cannot copy a growing value quadratically for hours.
inline constexpr int64_t kMaxBuiltBytes = int64_t(1) << 30;

// Fails before building a string of `bytes` bytes when that exceeds kMaxStringBytes.
inline void check_string_size(double bytes, const char* what) {
  if (bytes > double(kMaxStringBytes))
    fail(what, " would build a string of ", int64_t(bytes), " bytes, over the limit of ", kMaxStringBytes, " bytes");
}
inline void check_item_count(double items, const char* what) {
  if (items > double(kMaxItems))
    fail(what, " would build ", int64_t(items), " items, over the limit of ", kMaxItems, " items");
}

}  // namespace lmtune::jinja
