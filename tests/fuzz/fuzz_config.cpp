// config.json of arbitrary bytes to a ModelConfig (every family of models/registry.cpp, the
// rope_scaling variants, mlx-lm's "quantization" section), then the rotary frequencies it implies.
#include "core/error.h"
#include "fuzz_target.h"
#include "models/config.h"

LMTUNE_FUZZ_TARGET(config) {
  try {
    lmtune::ModelConfig cfg =
        lmtune::ModelConfig::from_json_text(std::string(reinterpret_cast<const char*>(data), size), "config.json");
    volatile size_t sink = lmtune::rope_inv_freq(cfg).size() + cfg.quantization.layers.size();
    (void)sink;
  } catch (const lmtune::Error&) {
  }
  return 0;
}
