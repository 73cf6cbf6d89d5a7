// A .gguf file of arbitrary bytes read by gguf::Reader (header, metadata of every value type,
// tensor infos, alignment), then every key looked up and every tensor's bytes fetched.
#include "core/error.h"
#include "fuzz_target.h"
#include "io/gguf.h"

LMTUNE_FUZZ_TARGET(gguf) {
  static const std::string path = lmtune::fuzz::scratch_dir("gguf") + "/model.gguf";
  lmtune::fuzz::write_file(path, {reinterpret_cast<const char*>(data), size});
  try {
    lmtune::gguf::Reader r(path);
    volatile size_t sink = r.version() + r.data_offset();
    for (const auto& [key, value] : r.kv()) sink = sink + r.get(key).arr.size() + value.s.size();
    for (const lmtune::gguf::TensorInfo& t : r.tensors()) {
      sink = sink + r.tensor(t.name).nbytes + lmtune::gguf::tensor_bytes(t.type, t.dims);
      sink = sink + r.tensor_data(t.name).size();
    }
  } catch (const lmtune::Error&) {
  }
  return 0;
}
