#include "runtime_setup.h"

#include <algorithm>
#include <cstring>

#include "backend/backend.h"
#include "core/error.h"
#include "runtime/generate.h"
#include "train/adapters.h"

namespace lmtune::cli {

bool Args::next() {
  if (++i_ >= argc_) return false;
  std::string a = argv_[i_];
  inline_.reset();
  size_t eq = a.find('=');
  if (a.rfind("--", 0) == 0 && eq != std::string::npos) {
    inline_ = a.substr(eq + 1);
    a = a.substr(0, eq);
  }
  flag_ = a;
  return true;
}

bool Args::is(const char* name) const { return flag_ == name; }

std::string Args::value() {
  if (inline_) return *inline_;
  if (i_ + 1 >= argc_) throw UsageError("argument " + flag_ + ": expected one argument");
  return argv_[++i_];
}

std::vector<std::string> Args::values() {
  std::vector<std::string> out;
  if (inline_) out.push_back(*inline_);
  while (i_ + 1 < argc_ && !(argv_[i_ + 1][0] == '-' && argv_[i_ + 1][1] == '-')) out.push_back(argv_[++i_]);
  if (out.empty()) throw UsageError("argument " + flag_ + ": expected at least one argument");
  return out;
}

int64_t Args::int_value() {
  std::string v = value();
  try {
    size_t pos = 0;
    long long x = std::stoll(v, &pos);
    if (pos == v.size()) return x;
  } catch (const std::exception&) {
  }
  throw UsageError("argument " + flag_ + ": invalid int value: '" + v + "'");
}

double Args::float_value() {
  std::string v = value();
  try {
    size_t pos = 0;
    double x = std::stod(v, &pos);
    if (pos == v.size()) return x;
  } catch (const std::exception&) {
  }
  throw UsageError("argument " + flag_ + ": invalid float value: '" + v + "'");
}

bool Args::bool_value() {
  std::string v = value();
  std::transform(v.begin(), v.end(), v.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  if (v == "yes" || v == "true" || v == "t" || v == "y" || v == "1") return true;
  if (v == "no" || v == "false" || v == "f" || v == "n" || v == "0") return false;
  throw UsageError("argument " + flag_ + ": Boolean value expected, got '" + v + "'");
}

void Args::unknown() const { throw UsageError("unrecognized arguments: " + std::string(argv_[i_])); }

LoadedModel load_for_generation(const LoadOptions& o) {
  LoadedModel lm;
  lm.dir = resolve_model_dir(o.model);
  Device dev;
  if (o.device.empty()) {
    dev = cuda_available() ? Device::cuda : Device::cpu;
  } else if (o.device == "cpu") {
    dev = Device::cpu;
  } else if (o.device == "cuda") {
    LMT_CHECK(cuda_available(), "--device cuda: no CUDA device (or lmtune was built without CUDA)");
    dev = Device::cuda;
  } else {
    throw UsageError("argument --device: invalid choice: '" + o.device + "' (choose from 'cpu', 'cuda')");
  }
  std::string dt = o.dtype;
  if (dt.empty()) dt = ModelConfig::load(lm.dir).torch_dtype;
  DType dtype = DType::bf16;
  if (dt == "float32" || dt == "f32") {
    dtype = DType::f32;
  } else if (dt == "float16" || dt == "f16") {
    dtype = DType::f16;
  } else if (dt == "bfloat16" || dt == "bf16" || dt.empty()) {
    dtype = DType::bf16;
  } else if (!o.dtype.empty()) {
    throw UsageError("argument --dtype: invalid choice: '" + o.dtype +
                     "' (choose from 'float32', 'bfloat16', 'float16')");
  }
  lm.chat = std::make_unique<ChatTemplate>(ChatTemplate::load(lm.dir));
  lm.model = load_model(lm.dir, dev, dtype);
  if (!o.adapter_path.empty()) {
    train::load_adapters(*lm.model, o.adapter_path);
    lm.model->bake_masters();  // inference: full-FT weights in the model's dtype, no f32 copies kept
  }
  return lm;
}

bool read_load_flag(Args& a, LoadOptions& o) {
  if (a.is("--model")) o.model = a.value();
  else if (a.is("--adapter-path")) o.adapter_path = a.value();
  else if (a.is("--device")) o.device = a.value();
  else if (a.is("--dtype")) o.dtype = a.value();
  else return false;
  return true;
}

bool read_sampler_flag(Args& a, SamplerOptions& o) {
  if (a.is("--temp")) o.temp = float(a.float_value());
  else if (a.is("--top-p")) o.top_p = float(a.float_value());
  else if (a.is("--top-k")) o.top_k = int(a.int_value());
  else if (a.is("--min-p")) o.min_p = float(a.float_value());
  else if (a.is("--min-tokens-to-keep")) o.min_tokens_to_keep = int(a.int_value());
  else if (a.is("--xtc-probability")) o.xtc_probability = float(a.float_value());
  else if (a.is("--xtc-threshold")) o.xtc_threshold = float(a.float_value());
  else if (a.is("--repetition-penalty")) o.repetition_penalty = float(a.float_value());
  else if (a.is("--repetition-context-size")) o.repetition_context_size = int(a.int_value());
  else if (a.is("--presence-penalty")) o.presence_penalty = float(a.float_value());
  else if (a.is("--frequency-penalty")) o.frequency_penalty = float(a.float_value());
  else return false;
  return true;
}

}  // namespace lmtune::cli
