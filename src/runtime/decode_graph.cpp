#include "runtime/decode_graph.h"

#include "backend/backend.h"
#include "core/error.h"
#include "core/runtime_config.h"
#include "ops/ops.h"

namespace lmtune {

DecodeGraph::DecodeGraph(Model& model, DenseKVCache& cache) : model_(model), cache_(cache) {
  LMT_CHECK(usable(model, cache), "[decode_graph] not available for this model and cache on ",
            device_name(model.device()));
  io_ = ops::zeros({2}, DType::i32, model.device());
  ids_ = io_.slice_rows(0, 1).reshape({1, 1});
  pos_ = io_.slice_rows(1, 2);
}

DecodeGraph::~DecodeGraph() {
  try {
    drop();
  } catch (...) {  // a failing CUDA context at exit: nothing more to give back
  }
}

bool DecodeGraph::usable(const Model& model, const DenseKVCache& cache) {
  // A quantized cache (--kv-bits) changes its buffers mid-run and quantizes on the host's schedule:
  // decoded eagerly.
  // longrope switches its frequencies at a position (models/decoder.h): decoded eagerly. So are
  // mixtures of experts, whose routing reads the router's choices back to the host.
  return backend(model.device()).has_graphs() && !cache.rotating() && !cache.quantization().enabled() &&
         runtime_config().cuda_graph && model.config().rope.type != "longrope" && model.config().n_expert == 0;
}

void DecodeGraph::drop() {
  Backend& be = backend(model_.device());
  if (graph_) be.graph_free(graph_);
  graph_ = nullptr;
  logits_ = Tensor();
  be.synchronize();  // no replay may still use the blocks given back here
  allocator(model_.device()).release_held(held_);
  held_.clear();
  capacity_ = -1;
}

void DecodeGraph::record() {
  drop();
  const Device dev = model_.device();
  Backend& be = backend(dev);
  CachingAllocator& alloc = allocator(dev);
  const int64_t offset = cache_.offset();
  cache_.bind_position(pos_);
  // Whatever happens, the hold ends and the cache is as it was (recording advanced it by a token
  // that was never fed).
  auto restore = [&] {
    held_ = alloc.end_hold();
    cache_.unbind_position();
    cache_.trim_to(offset);
  };
  alloc.begin_hold();
  be.graph_begin();
  bool capturing = true;
  try {
    Tensor lg = model_.forward(ids_, cache_, true);  // recorded, not run
    logits_ = ops::to(lg, dev, DType::f32);
    capturing = false;
    graph_ = be.graph_end();
  } catch (...) {
    if (capturing) {
      try {
        be.graph_free(be.graph_end());
      } catch (...) {  // the capture was already invalid: the original error says why
      }
    }
    restore();
    logits_ = Tensor();
    throw;
  }
  restore();
  capacity_ = cache_.capacity();
  ++recordings_;
}

std::vector<float> DecodeGraph::step(int32_t token) {
  const int64_t pos = cache_.offset();
  LMT_CHECK(token >= 0 && token < model_.config().n_vocab, "[decode_graph] token ", token,
            " is outside the vocabulary of ", model_.config().n_vocab);
  LMT_CHECK(pos < INT32_MAX, "[decode_graph] position ", pos, " does not fit an i32");
  cache_.reserve(pos + 1);
  if (!graph_ || capacity_ != cache_.capacity()) record();
  Backend& be = backend(model_.device());
  const int32_t host[2] = {token, int32_t(pos)};
  be.copy_h2d(io_.raw(), host, sizeof(host));
  be.graph_launch(graph_);
  cache_.advance(1);
  return ops::to(logits_, Device::cpu, DType::f32).to_f32_vector();
}

}  // namespace lmtune
