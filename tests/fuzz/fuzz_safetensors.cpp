// A .safetensors file of arbitrary bytes: the header parsed and every tensor's range checked by
// SafetensorsFile; each supported tensor borrowed with get() and its first and last bytes read.
#include "core/error.h"
#include "fuzz_target.h"
#include "io/safetensors.h"

LMTUNE_FUZZ_TARGET(safetensors) {
  static const std::string path = lmtune::fuzz::scratch_dir("safetensors") + "/model.safetensors";
  lmtune::fuzz::write_file(path, {reinterpret_cast<const char*>(data), size});
  try {
    lmtune::SafetensorsFile f(path);
    volatile uint8_t sink = 0;
    for (const std::string& name : f.names()) {
      const lmtune::SafetensorsInfo& info = f.info(name);
      if (!info.supported) continue;
      lmtune::Tensor t = f.get(name);
      if (t.nbytes() > 0) {
        const auto* p = static_cast<const uint8_t*>(t.raw());
        sink = sink ^ p[0] ^ p[t.nbytes() - 1];
      }
    }
    for (const auto& [k, v] : f.metadata()) sink = sink ^ static_cast<uint8_t>(k.size() + v.size());
  } catch (const lmtune::Error&) {
  }
  return 0;
}
