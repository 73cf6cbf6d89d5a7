#include "runtime/batch_graph.h"

#include "backend/backend.h"
#include "core/error.h"
#include "core/runtime_config.h"
#include "ops/ops.h"

namespace lmtune {

BatchGraph::BatchGraph(Model& model, int64_t n) : model_(model), n_(n) {
  LMT_CHECK(n >= 2 && n <= kMaxRows, "[batch_graph] ", n, " sequences (2 to ", kMaxRows, ")");
  ids_ = ops::zeros({1, n}, DType::i32, model.device());
}

BatchGraph::~BatchGraph() {
  try {
    drop();
  } catch (...) {  // a failing CUDA context at exit: nothing more to give back
  }
}

bool BatchGraph::usable(const Model& model, const std::vector<DenseKVCache*>& caches) {
  if (!backend(model.device()).has_graphs() || !runtime_config().cuda_graph) return false;
  if (model.config().rope.type == "longrope") return false;  // its frequencies switch at a position
  if (model.config().n_expert > 0) return false;             // routing reads the choices back to the host
  if (model.config().attn_logit_softcap > 0) return false;   // the batched rows' kernels do not cap
  if (caches.size() < 2 || int64_t(caches.size()) > kMaxRows) return false;
  for (const DenseKVCache* c : caches)
    if (!c || c->rotating() || c->quantization().enabled() || c->position()) return false;
  return true;
}

void BatchGraph::drop() {
  Backend& be = backend(model_.device());
  if (graph_) be.graph_free(graph_);
  graph_ = nullptr;
  logits_ = Tensor();
  be.synchronize();  // no replay may still use the blocks given back here
  allocator(model_.device()).release_held(held_);
  held_.clear();
}

void BatchGraph::record(const std::vector<DenseKVCache*>& caches) {
  drop();
  const Device dev = model_.device();
  Backend& be = backend(dev);
  CachingAllocator& alloc = allocator(dev);
  std::vector<int64_t> offsets;
  std::vector<PackedSequence> seqs;
  for (DenseKVCache* c : caches) {
    offsets.push_back(c->offset());
    c->reserve(c->offset() + 1);  // no cache may grow (allocate, copy) inside the capture
    seqs.push_back({1, c});
  }
  // Whatever happens, the hold ends and the caches are as they were (the capture advanced each by
  // a token it did not run).
  auto restore = [&] {
    held_ = alloc.end_hold();
    for (size_t i = 0; i < caches.size(); ++i) caches[i]->trim_to(offsets[i]);
  };
  alloc.begin_hold();
  be.graph_begin();
  be.graph_track_rows();
  bool capturing = true;
  try {
    Tensor lg = model_.forward_packed(ids_, seqs);  // recorded, not run
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
  ++recordings_;
  // Every layer's rows went through the two tracked launches (rope + append, attention), in order.
  const size_t want = size_t(2 * model_.config().n_layer), got = be.graph_rows(graph_);
  if (got != want) {
    drop();
    fail("[batch_graph] the recorded step has ", got, " rows launches, not ", want,
         " (a layer's decoding rows took another path)");
  }
}

bool BatchGraph::set_rows(const std::vector<DenseKVCache*>& caches) {
  Backend& be = backend(model_.device());
  const DType dt = model_.dtype();
  for (int64_t layer = 0; layer < model_.config().n_layer; ++layer) {
    Backend::DecodeRows rows;
    rows.n = int(n_);
    for (int64_t i = 0; i < n_; ++i) {
      Tensor k, v;
      LMT_CHECK(caches[size_t(i)]->decode_planes(layer, dt, k, v), "[batch_graph] sequence ", i,
                "'s cache has no decoding planes for layer ", layer);
      rows.row[i] = int32_t(i), rows.pos[i] = int32_t(caches[size_t(i)]->offset());
      rows.k[i] = k.raw(), rows.v[i] = v.raw();
    }
    if (!be.graph_set_rows(graph_, size_t(2 * layer), rows) || !be.graph_set_rows(graph_, size_t(2 * layer + 1), rows))
      return false;
  }
  return true;
}

std::vector<float> BatchGraph::step(const std::vector<int32_t>& ids, const std::vector<DenseKVCache*>& caches) {
  LMT_CHECK(int64_t(ids.size()) == n_ && int64_t(caches.size()) == n_, "[batch_graph] ", ids.size(), " ids and ",
            caches.size(), " caches for a step of ", n_);
  const int64_t V = model_.config().n_vocab;
  for (size_t i = 0; i < caches.size(); ++i) {
    LMT_CHECK(ids[i] >= 0 && ids[i] < V, "[batch_graph] token ", ids[i], " is outside the vocabulary of ", V);
    LMT_CHECK(caches[i]->offset() < INT32_MAX, "[batch_graph] position ", caches[i]->offset(), " does not fit an i32");
  }
  if (!graph_) record(caches);
  if (!set_rows(caches)) {  // a recorded attention split the keys for other positions
    record(caches);
    LMT_CHECK(set_rows(caches), "[batch_graph] a fresh recording refused its own rows");
  }
  Backend& be = backend(model_.device());
  be.copy_h2d(ids_.raw(), ids.data(), ids.size() * sizeof(int32_t));
  be.graph_launch(graph_);
  for (DenseKVCache* c : caches) c->advance(1);
  ++replays_;
  return ops::to(logits_, Device::cpu, DType::f32).to_f32_vector();
}

}  // namespace lmtune
