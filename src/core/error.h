// Errors are exceptions carrying the function and the offending value; caught only at
// the CLI, HTTP and test boundaries.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace lmtune {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

namespace detail {
inline void format_into(std::ostringstream&) {}
template <typename T, typename... Rest>
void format_into(std::ostringstream& os, const T& v, const Rest&... rest) {
  os << v;
  format_into(os, rest...);
}
}  // namespace detail

// Concatenates its arguments with operator<< into one message string.
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  detail::format_into(os, args...);
  return os.str();
}

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(str_cat(args...));
}

}  // namespace lmtune

// LMT_CHECK(cond, "[op] message ", value) throws lmtune::Error when cond is false.
#define LMT_CHECK(cond, ...)                  \
  do {                                        \
    if (!(cond)) ::lmtune::fail(__VA_ARGS__); \
  } while (0)
