// The one table of model families: config.json's model_type -> the family's config parser, its
// model builder and its golden cases. The config loader, the model factory and the golden tests
// (tests/golden, tests/ref/make_golden.py) all read it; a new family is a file and a row here.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "models/config.h"

namespace lmtune {

class Model;

struct ModelFamily {
  const char* model_type;
  // Sets the family's fields of c after the shared ones (models/config.cpp) were read.
  void (*parse)(const ConfigReader& r, ModelConfig& c);
  std::unique_ptr<Model> (*build)(const ModelConfig& c);
  // Folders that tests/ref/make_golden.py writes for this family (its CASES keys); each is
  // compared with transformers on the CPU (f32) and on CUDA (bf16).
  std::vector<const char*> golden_cases;
};

const std::vector<ModelFamily>& model_families();
// The row for model_type; throws naming the source and listing the supported types.
const ModelFamily& model_family(const std::string& model_type, const std::string& source);

}  // namespace lmtune
