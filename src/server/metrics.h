// Server metrics in Prometheus' text exposition format: request counts by endpoint and status,
// prompt / completion tokens, client disconnects, timeouts, requests in flight, and histograms of
// request latency and time to first token; with the batching engine's stats also the sequences
// running and waiting and the batch sizes. Thread-safe.
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "runtime/batch_engine.h"

namespace lmtune::server {

class Metrics {
 public:
  void request_started();
  // status: the HTTP status; for a finished generation also its tokens and timings (ttft < 0: none).
  void request_finished(const std::string& endpoint, int status, double seconds);
  void generation_finished(int64_t prompt_tokens, int64_t completion_tokens, double ttft_s, bool cancelled,
                           bool timed_out);
  std::string render() const;
  // The same, then the engine's gauges (lmtune_sequences_{running,prefilling,waiting}), step counters
  // the histogram of sequences per step (lmtune_batch_size) and the prompt cache's counters and gauges.
  std::string render(const BatchStats& batch, uint64_t model_switches = 0) const;

 private:
  struct Histogram {
    std::vector<double> bounds;
    std::vector<uint64_t> counts;  // per bucket, not cumulative
    double sum = 0;
    uint64_t count = 0;
    void observe(double v);
    void render(std::string& out, const std::string& name, const std::string& help) const;
  };
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  uint64_t prompt_tokens_ = 0, completion_tokens_ = 0, cancelled_ = 0, timed_out_ = 0;
  int64_t in_flight_ = 0;
  Histogram latency_{{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}, {}, 0, 0};
  Histogram ttft_{{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}, {}, 0, 0};
};

}  // namespace lmtune::server
