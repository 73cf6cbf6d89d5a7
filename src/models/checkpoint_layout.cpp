#include "models/checkpoint_layout.h"

#include <vector>

#include "io/safetensors.h"

namespace lmtune {

void read_stacked_experts(const ModelConfig& cfg, SafetensorsModel& files);  // models/moe.cpp

void read_checkpoint_layout(const ModelConfig& cfg, SafetensorsModel& files) {
  const std::string& prefix = cfg.checkpoint_prefix;
  if (!prefix.empty()) {
    const std::vector<std::string> names = files.names();
    for (const std::string& n : names) {
      if (n.rfind(prefix, 0) == 0)
        files.rename(n, n.substr(prefix.size()));
      else if (n.rfind("vision_tower.", 0) == 0 || n.rfind("multi_modal_projector.", 0) == 0)
        files.drop(n);
    }
  }
  read_stacked_experts(cfg, files);
}

}  // namespace lmtune
