// What generate, chat and benchmark share: a tiny flag reader with mlx-lm's value rules, and
// loading a model folder with its tokenizer on the chosen device and dtype.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "models/model.h"
#include "runtime/sampler.h"
#include "tokenizer/chat_template.h"

namespace lmtune::cli {

// argv walker: `--flag value` and `--flag=value`; a usage error throws UsageError.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Args {
 public:
  Args(int argc, char** argv) : argc_(argc), argv_(argv) {}
  bool next();                          // advances to the next argument; false at the end
  bool is(const char* name) const;      // the current argument is this flag (or name=...)
  bool is(const char* a, const char* b) const { return is(a) || is(b); }
  const std::string& flag() const { return flag_; }
  std::string value();                  // the flag's value (the next argument or after '=')
  std::vector<std::string> values();    // one or more values up to the next --flag (nargs='+')
  int64_t int_value();
  double float_value();
  bool bool_value();                    // mlx-lm's str2bool: yes/true/t/y/1, no/false/f/n/0
  [[noreturn]] void unknown() const;

 private:
  int argc_;
  char** argv_;
  int i_ = 0;
  std::string flag_;
  std::optional<std::string> inline_;
};

struct LoadOptions {
  std::string model;
  std::string adapter_path;
  std::string device;  // "" = cuda when available, else cpu
  std::string dtype;   // "" = the config's torch_dtype on CUDA (bf16 when unset); the CPU uses f32
};

struct LoadedModel {
  std::string dir;
  std::unique_ptr<Model> model;
  std::unique_ptr<ChatTemplate> chat;  // the tokenizer and its chat templates
};

LoadedModel load_for_generation(const LoadOptions& o);

// Flags the commands share. Each returns true when the current flag was one of its own (and
// reads its value), so a command's loop reads `else if (read_load_flag(a, lo)) {}`.
bool read_load_flag(Args& a, LoadOptions& o);        // --model --adapter-path --device --dtype
bool read_sampler_flag(Args& a, SamplerOptions& o);  // --temp --top-p --top-k --min-p --xtc-* ...

}  // namespace lmtune::cli
