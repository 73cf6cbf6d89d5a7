// A sharded folder's model.safetensors.index.json of arbitrary bytes, beside two valid shards
// (model-00001-of-00002: a, b; model-00002-of-00002: c): SafetensorsModel opens it, then every
// tensor it lists is looked up and borrowed.
#include "core/error.h"
#include "fuzz_target.h"
#include "io/safetensors.h"

namespace {

std::string make_folder() {
  using lmtune::Shape;
  using lmtune::Tensor;
  std::string dir = lmtune::fuzz::scratch_dir("safetensors_index");
  lmtune::save_safetensors(dir + "/model-00001-of-00002.safetensors",
                           {{"a", Tensor::from_f32({1, 2, 3, 4}, Shape{2, 2})}, {"b", Tensor::from_i32({7}, Shape{1})}},
                           {{"format", "pt"}});
  lmtune::save_safetensors(dir + "/model-00002-of-00002.safetensors", {{"c", Tensor::from_f32({5, 6}, Shape{2})}});
  return dir;
}

}  // namespace

LMTUNE_FUZZ_TARGET(safetensors_index) {
  static const std::string dir = make_folder();
  lmtune::fuzz::write_file(dir + "/model.safetensors.index.json", {reinterpret_cast<const char*>(data), size});
  try {
    lmtune::SafetensorsModel m(dir);
    volatile size_t sink = m.index_metadata().size();
    for (const std::string& name : m.names()) {
      lmtune::Tensor t = m.get(name);
      sink = sink + t.nbytes() + m.file_of(name).names().size();
    }
  } catch (const lmtune::Error&) {
  }
  return 0;
}
