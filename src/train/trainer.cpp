#include "train/trainer.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "autograd/functions.h"
#include "autograd/tape.h"
#include "core/allocator.h"
#include "core/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "io/write_points.h"
#include "ops/ops.h"
#include "train/adapters.h"
#include "train/data_parallel.h"
#include "train/grad_buckets.h"
#include "train/run_files.h"
#include "train/sharding.h"

namespace lmtune::train {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

const uint64_t kValSeedSalt = 0x76616c6964ull;  // "valid": the fixed validation order

std::vector<std::vector<size_t>> fixed_subset(const Dataset& ds, int64_t batch_size, int64_t num_batches,
                                              uint64_t seed) {
  auto groups = length_sorted_batches(ds, batch_size);
  auto order = batch_order(groups.size(), seed ^ kValSeedSalt, 0);
  size_t n = num_batches < 0 ? groups.size() : std::min(groups.size(), size_t(num_batches));
  std::vector<std::vector<size_t>> out;
  for (size_t i = 0; i < n; ++i) out.push_back(groups[order[i]]);
  return out;
}

// Everything beyond the weights that a resumed run needs to continue exactly.
struct LoopState {
  int64_t iteration = 0;  // last completed iteration
  // The adapters' dropout counter. They co-own it (nn::LoraAdapter::dropout_seed) because the model
  // outlives train(): a forward with dropout after it returns, or after it throws, still draws.
  std::shared_ptr<uint64_t> dropout_seed = std::make_shared<uint64_t>(0);
  int64_t trained_tokens = 0;
  double report_loss = 0;  // sums since the last report
  int64_t report_tokens = 0, report_steps = 0;
  double best_val = -1;
  int64_t best_iter = 0, evals_since_best = 0;
};

json to_json(const LoopState& s) {
  return {{"iteration", s.iteration},     {"dropout_seed", *s.dropout_seed},  {"trained_tokens", s.trained_tokens},
          {"report_loss", s.report_loss}, {"report_tokens", s.report_tokens}, {"report_steps", s.report_steps},
          {"best_val_loss", s.best_val},  {"best_iteration", s.best_iter},    {"evals_since_best", s.evals_since_best}};
}

// trainer_state.json's fields, each of its JSON type, or an error naming the file and the key
// (never nlohmann's bare "type must be number, but is string").
struct StateReader {
  const json& j;
  const std::string& path;
  std::string prefix;  // "" or "loop."

  const json& at(const char* key) const {
    LMT_CHECK(j.is_object() && j.contains(key), "[train] --resume: ", path, ": missing key '", prefix, key, "'");
    return j[key];
  }
  [[noreturn]] void bad(const char* key, const char* want) const {
    fail("[train] --resume: ", path, ": key '", prefix, key, "' must be ", want, ", got ", at(key).dump());
  }
  int64_t i64(const char* key) const {
    const json& v = at(key);
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)))
      bad(key, "an integer");
    return v.get<int64_t>();
  }
  int64_t count(const char* key) const {  // an integer >= 0
    int64_t v = i64(key);
    if (v < 0) bad(key, "an integer >= 0");
    return v;
  }
  uint64_t u64(const char* key) const {
    const json& v = at(key);
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0)) bad(key, "an integer >= 0");
    return v.get<uint64_t>();
  }
  double num(const char* key) const {
    const json& v = at(key);
    if (!v.is_number()) bad(key, "a number");
    return v.get<double>();
  }
  std::string str(const char* key) const {
    const json& v = at(key);
    if (!v.is_string()) bad(key, "a string");
    return v.get<std::string>();
  }
  StateReader object(const char* key) const {
    if (!at(key).is_object()) bad(key, "an object");
    return {at(key), path, prefix + key + "."};
  }
};

// In place: s.dropout_seed keeps its identity (the adapters hold it), only its value is restored.
void read_state(const StateReader& r, LoopState& s) {
  s.iteration = r.count("iteration");
  *s.dropout_seed = r.u64("dropout_seed");
  s.trained_tokens = r.count("trained_tokens");
  s.report_loss = r.num("report_loss");
  s.report_tokens = r.count("report_tokens");
  s.report_steps = r.count("report_steps");
  s.best_val = r.num("best_val_loss");
  s.best_iter = r.count("best_iteration");
  s.evals_since_best = r.count("evals_since_best");
}

// A checkpoint's optimizer.safetensors: "state.<parameter>.<slot>" (Optimizer::state) and
// "grad.<parameter>" (gradients accumulated since the last update, mid grad-accumulation).
const std::string kStatePrefix = "state.", kGradPrefix = "grad.";
// The one tensor of the files that had neither, before empty files were written.
const std::string kLegacyPlaceholder = "empty";

struct OptimizerFile {
  // As the file holds them (CPU, read in place from its mapping): the caller copies what it keeps.
  std::map<std::string, Tensor> state;  // by "<parameter>.<slot>"
  std::map<std::string, Tensor> grads;  // by parameter
};

// Every tensor must name a trainable parameter of this model under a known prefix: a file from
// another model, adapter layout or lmtune version is refused here, naming it, rather than later
// as a shape mismatch or never (a state slot of an unknown parameter would be kept silently).
OptimizerFile read_optimizer_file(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& params) {
  std::map<std::string, Shape> shapes;
  for (const auto& [name, p] : params) shapes[name] = p.shape();
  auto starts = [](const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; };
  OptimizerFile f;
  for (auto& [key, t] : load_safetensors(path)) {
    if (key == kLegacyPlaceholder) continue;
    if (starts(key, kGradPrefix)) {
      std::string name = key.substr(kGradPrefix.size());
      auto it = shapes.find(name);
      LMT_CHECK(it != shapes.end(), "[train] --resume: ", path, ": '", key, "' is the gradient of '", name,
                "', which is not a trainable parameter of this model");
      LMT_CHECK(t.shape() == it->second, "[train] --resume: ", path, ": '", key, "' is ", t.describe(),
                "; the parameter is ", shape_str(it->second));
      f.grads[name] = t;
    } else if (starts(key, kStatePrefix)) {
      std::string slot = key.substr(kStatePrefix.size());
      size_t dot = slot.rfind('.');
      LMT_CHECK(dot != std::string::npos && shapes.count(slot.substr(0, dot)), "[train] --resume: ", path, ": '", key,
                "' is not the state of a trainable parameter of this model (state.<parameter>.<slot>)");
      f.state[slot] = t;
    } else {
      fail("[train] --resume: ", path, ": unknown tensor '", key, "' (expected ", kStatePrefix,
           "<parameter>.<slot> or ", kGradPrefix, "<parameter>)");
    }
  }
  return f;
}

// The first trainable parameter holding NaN or Inf, or "" (x * 0 is 0 for every finite x).
std::string first_non_finite(const std::vector<std::pair<std::string, Tensor>>& params) {
  ag::NoGradGuard ng;
  for (const auto& [name, p] : params)
    if (!std::isfinite(ops::item(ops::sum_all(ops::scale(p.detach(), 0.f))))) return name;
  return {};
}

// Training stops on a loss or a parameter that is not finite, before anything is saved from it:
// NaN adapters would otherwise be written, and every later step would stay NaN.
[[noreturn]] void stop_not_finite(int64_t it, const std::string& what, const std::string& adapter_dir) {
  fail("[train] iteration ", it, ": ", what, "; training stopped before saving anything from it (the files already in ",
       adapter_dir,
       " are those of the last finite step). Likely causes: NaN or Inf in the model's weights, a learning rate "
       "too high, or an overflow in 16-bit weights (try --dtype float32 or a lower --learning-rate)");
}

std::string iter_name(int64_t it) {
  char b[32];
  std::snprintf(b, sizeof b, "%07lld", (long long)it);
  return b;
}

void copy_file_atomic(const fs::path& from, const fs::path& to) {
  std::ifstream f(from, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  write_file_atomic(to.string(), s.str());
}

std::string clock_str(double s) {
  int64_t t = int64_t(std::llround(std::max(0.0, s)));
  char b[32];
  if (t >= 3600)
    std::snprintf(b, sizeof b, "%lld:%02lld:%02lld", (long long)(t / 3600), (long long)(t / 60 % 60),
                  (long long)(t % 60));
  else
    std::snprintf(b, sizeof b, "%02lld:%02lld", (long long)(t / 60), (long long)(t % 60));
  return b;
}

// A tqdm-style bar redrawn in place on stderr: " 45%|#########      | 45/100 [00:12<00:15, 3.61it/s,
// loss 2.345]". The rate and ETA come from the wall time since this run started (validation
// included, so the ETA holds); it is cleared before every report line so the lines stay clean.
class Progress {
 public:
  Progress(bool on, int64_t total, int64_t start) : on_(on), total_(total), start_it_(start), t0_(Clock::now()) {}
  void set_loss(double l) { loss_ = l; }
  void update(int64_t it) {
    if (!on_) return;
    auto now = Clock::now();
    if (drawn_ && it < total_ && std::chrono::duration<double>(now - last_).count() < 0.1) return;
    last_ = now;
    double el = seconds_since(t0_);
    int64_t done = it - start_it_;
    double rate = done > 0 && el > 0 ? double(done) / el : 0;
    char r[48];
    if (rate <= 0)
      std::snprintf(r, sizeof r, "?it/s");
    else if (rate >= 1)
      std::snprintf(r, sizeof r, "%.2fit/s", rate);
    else
      std::snprintf(r, sizeof r, "%.2fs/it", 1 / rate);
    std::string eta = rate > 0 ? clock_str(double(total_ - it) / rate) : "?";
    char loss[48] = "";
    if (loss_ >= 0) std::snprintf(loss, sizeof loss, ", loss %.3f", loss_);
    char tb[192];
    std::snprintf(tb, sizeof tb, " %lld/%lld [%s<%s, %s%s]", (long long)it, (long long)total_, clock_str(el).c_str(),
                  eta.c_str(), r, loss);
    std::string tail = tb;
    int pct = int(100.0 * double(it) / double(std::max<int64_t>(total_, 1)));
    int width = std::max(10, std::min(40, terminal_columns() - 1 - 5 - 2 - int(tail.size())));
    int fill = int(double(width) * double(it) / double(std::max<int64_t>(total_, 1)));
    fill = std::clamp(fill, 0, width);
    std::fprintf(stderr, "\r%3d%%|%s%s|%s\x1b[K", pct, std::string(size_t(fill), '#').c_str(),
                 std::string(size_t(width - fill), ' ').c_str(), tail.c_str());
    std::fflush(stderr);
    drawn_ = true;
  }
  void clear() {
    if (!on_ || !drawn_) return;
    std::fprintf(stderr, "\r\x1b[K");
    std::fflush(stderr);
    drawn_ = false;
  }

 private:
  static int terminal_columns() {
    winsize ws{};
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
    return 80;
  }
  bool on_;
  int64_t total_, start_it_;
  Clock::time_point t0_, last_;
  bool drawn_ = false;
  double loss_ = -1;
};

}  // namespace

double evaluate(Model& model, const Dataset& ds, int64_t batch_size, int64_t num_batches, int64_t max_seq_length,
                uint64_t seed, dist::Comm* comm) {
  ag::NoGradGuard ng;
  double total = 0;
  int64_t ntok = 0;
  for (const auto& g : fixed_subset(ds, batch_size, num_batches, seed)) {
    const std::vector<size_t> share = rank_share(g, comm);
    Batch b;
    if (!share.empty()) b = make_batch(ds, share, max_seq_length);
    if (b.n_tokens == 0) {
      // Sharded weights: the others' forward gathers them, with this rank's slices.
      if (comm && model.block_hooks()) model.block_hooks()->idle_forward();
      continue;
    }
    double l = ops::item(model.loss(b.inputs, b.targets));
    total += l * double(b.n_tokens);
    ntok += b.n_tokens;
  }
  double mean = ntok > 0 ? total / double(ntok) : 0.0;
  if (comm) std::tie(mean, ntok) = all_reduce_mean(comm, mean, ntok);
  LMT_CHECK(ntok > 0, "[evaluate] no supervised tokens in ", ds.path.empty() ? "the data" : ds.path);
  return mean;
}

void write_loss_svg(const std::string& metrics_jsonl, const std::string& svg_path) {
  std::vector<std::pair<double, double>> tr, va;
  std::ifstream f(metrics_jsonl);
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded()) continue;
    if (j.contains("train_loss")) tr.push_back({j["iteration"], j["train_loss"]});
    if (j.contains("val_loss")) va.push_back({j["iteration"], j["val_loss"]});
  }
  double x0 = 0, x1 = 1, y0 = 1e300, y1 = -1e300;
  for (const auto* v : {&tr, &va})
    for (auto [x, y] : *v) x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
  if (y0 > y1) y0 = 0, y1 = 1;
  if (y1 - y0 < 1e-9) y1 = y0 + 1;
  const double W = 640, H = 400, L = 60, R = 20, T = 30, B = 50;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return H - B - (y - y0) / (y1 - y0) * (H - T - B); };
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" "
    << "font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << W / 2 << "\" y=\"18\" text-anchor=\"middle\">loss (lmtune lora)</text>\n"
    << "<line x1=\"" << L << "\" y1=\"" << H - B << "\" x2=\"" << W - R << "\" y2=\"" << H - B
    << "\" stroke=\"black\"/>\n"
    << "<line x1=\"" << L << "\" y1=\"" << T << "\" x2=\"" << L << "\" y2=\"" << H - B << "\" stroke=\"black\"/>\n";
  for (int i = 0; i <= 4; ++i) {
    double y = y0 + (y1 - y0) * i / 4, x = x0 + (x1 - x0) * i / 4;
    s << "<text x=\"" << L - 5 << "\" y=\"" << py(y) + 4 << "\" text-anchor=\"end\">" << std::round(y * 1000) / 1000
      << "</text>\n<text x=\"" << px(x) << "\" y=\"" << H - B + 16 << "\" text-anchor=\"middle\">" << std::llround(x)
      << "</text>\n";
  }
  s << "<text x=\"" << W / 2 << "\" y=\"" << H - 10 << "\" text-anchor=\"middle\">iteration</text>\n";
  auto poly = [&](const std::vector<std::pair<double, double>>& v, const char* color, const char* name, int k) {
    if (v.empty()) return;
    s << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"2\" points=\"";
    for (auto [x, y] : v) s << px(x) << "," << py(y) << " ";
    s << "\"/>\n<text x=\"" << W - R - 90 << "\" y=\"" << T + 16 * k << "\" fill=\"" << color << "\">" << name
      << "</text>\n";
  };
  poly(tr, "#1f77b4", "train loss", 1);
  poly(va, "#d62728", "val loss", 2);
  s << "</svg>\n";
  write_file_atomic(svg_path, s.str());
}

TrainResult train(Model& model, Optimizer& opt, const Schedule& lr, const Dataset& train_set, const Dataset& valid_set,
                  const TrainingArgs& args, std::FILE* out) {
  LMT_CHECK(args.grad_accumulation_steps >= 1, "grad_accumulation_steps must be at least 1");
  LMT_CHECK(args.steps_per_report >= 1 && args.steps_per_eval >= 1 && args.save_every >= 1,
            "steps_per_report, steps_per_eval and save_every must be at least 1");
  const auto params = trainable_parameters(model);
  LMT_CHECK(!params.empty(), "[train] the model has no trainable parameters");
  dist::Comm* comm = args.comm && args.comm->world() > 1 ? args.comm : nullptr;
  const bool root = !comm || comm->rank() == 0;  // the one that writes files
  LMT_CHECK(!comm || args.batch_size % comm->world() == 0, "[train] --batch-size ", args.batch_size,
            " is not divisible by WORLD_SIZE ", comm ? comm->world() : 1,
            ": each rank takes batch_size / WORLD_SIZE rows of every batch, as mlx-lm's trainer");
  ShardedWeights* const sharded = args.sharded;
  model.set_grad_checkpoint(args.grad_checkpoint || sharded);  // sharding frees a block's weights after it
  // Unpacked: groups of batch_size examples. Packed: groups of batch_size rows of examples.
  std::vector<std::vector<size_t>> groups;
  std::vector<PackedGroup> packed;
  if (args.pack)
    packed = packed_batches(train_set, args.batch_size, args.max_seq_length);
  else
    groups = length_sorted_batches(train_set, args.batch_size);
  const int64_t nb = int64_t(args.pack ? packed.size() : groups.size());
  if (args.pack) {
    size_t rows = 0;
    for (const PackedGroup& g : packed) rows += g.size();
    std::fprintf(out, "Packed %zu examples into %zu rows of up to %lld tokens (%lld batches)\n", train_set.size(), rows,
                 (long long)args.max_seq_length, (long long)nb);
  }
  const int64_t iters = args.epochs > 0 ? args.epochs * nb : args.iters;
  std::vector<std::vector<size_t>> val_groups;
  if (!valid_set.empty()) val_groups = fixed_subset(valid_set, args.batch_size, args.val_batches, args.seed);

  fs::path dir(args.adapter_path);
  if (root) {
    fs::create_directories(dir);
    for (const std::string& f : remove_stale_temp_files(dir.string()))
      std::fprintf(out, "Removed %s, left by an interrupted save\n", f.c_str());
  }
  const std::string adapter_file = (dir / "adapters.safetensors").string();
  const fs::path metrics_path = dir / "metrics.jsonl";

  LoopState st;
  *st.dropout_seed = args.seed * 0x2545F4914F6CDD1Dull + 7;
  for (auto& [name, a] : model.adapters()) a.dropout_seed = st.dropout_seed;
  std::string metrics_text;
  std::optional<OptimizerFile> resumed;
  int64_t resumed_step = 0;
  if (!args.resume.empty()) {
    fs::path ck(args.resume);
    LMT_CHECK(
        fs::exists(ck / "trainer_state.json"), "[train] --resume ", args.resume,
        " is not a checkpoint folder (no trainer_state.json; checkpoints are written to ADAPTER_PATH/checkpoints/)");
    const std::string state_path = (ck / "trainer_state.json").string();
    json j;
    try {
      j = json::parse(std::ifstream(state_path));
    } catch (const json::exception& e) {
      fail("[train] --resume: ", state_path, " is not valid JSON: ", e.what());
    }
    const StateReader r{j, state_path, ""};
    const int64_t ck_batch = r.i64("batch_size");
    const uint64_t ck_seed = r.u64("seed");
    LMT_CHECK(ck_batch == args.batch_size && ck_seed == args.seed,
              "[train] --resume: the checkpoint was made with batch_size ", ck_batch, " and seed ", ck_seed,
              "; this run has ", args.batch_size, " and ", args.seed);
    const bool ck_pack = j.value("pack", false);  // absent in checkpoints made before --pack
    LMT_CHECK(ck_pack == args.pack, "[train] --resume: the checkpoint was made ", ck_pack ? "with" : "without",
              " --pack; this run is ", args.pack ? "packed" : "not packed", " (the batches would differ)");
    // Checkpoints before the optimizer was recorded have no "optimizer" key.
    LMT_CHECK(!j.contains("optimizer") || r.str("optimizer") == opt.name(), "[train] --resume: ", args.resume,
              " holds the state of optimizer ", j.value("optimizer", ""), "; this run uses ", opt.name());
    read_state(r.object("loop"), st);
    // A checkpoint at or past the last iteration has nothing left to run: say so instead of
    // rewriting the final adapters unchanged.
    LMT_CHECK(st.iteration<iters, "[train] --resume ", args.resume, " is at iteration ", st.iteration,
                           ", and this run ends at iteration ", iters, args.epochs> 0
                  ? " (--epochs)"
                  : " (--iters)",
              ": nothing left to train; raise ", args.epochs > 0 ? "--epochs" : "--iters",
              " to continue training from it");
    resumed_step = r.count("optimizer_step");
    const std::string weights_file = (ck / "adapters.safetensors").string();
    if (sharded)  // the blocks' weights are freed: each rank takes its slices of the file's
      sharded->assign(read_adapter_weights(model, weights_file));
    else
      load_adapter_weights(model, weights_file);
    resumed = read_optimizer_file((ck / "optimizer.safetensors").string(), params);
    if (fs::exists(ck / "metrics.jsonl")) {
      std::ifstream f(ck / "metrics.jsonl");
      std::stringstream s;
      s << f.rdbuf();
      metrics_text = s.str();
    }
    std::fprintf(out, "Resuming from %s at iteration %lld\n", args.resume.c_str(), (long long)st.iteration);
  }
  // Sharded: the blocks' weights are whole only inside their blocks (params' tensors are those, their
  // memory released), and the optimizer updates this rank's slices (train_params); else train_params
  // are the parameters themselves.
  const auto& train_params = sharded ? sharded->parameters() : params;
  auto is_sliced = [&](const std::string& name) { return sharded && sharded->is_sharded(name); };
  if (resumed) {
    // A checkpoint holds whole tensors, whatever the world size that wrote it: a sharded run copies
    // only its slices out of the file's mapping. Gradients accumulated before the save are the group's
    // sum: each rank takes its slice of a sharded weight's, rank 0 alone the rest.
    const Device dev = model.device();
    auto keep = [&](const std::string& name, const Tensor& t, DType dt) {
      return ops::to(is_sliced(name) ? sharded->slice_of(name, t) : ops::clone(t), dev, dt);
    };
    std::map<std::string, Tensor> state;
    for (auto& [key, t] : resumed->state) state[key] = keep(key.substr(0, key.rfind('.')), t, t.dtype());
    opt.set_state(state, resumed_step);
    for (auto& [name, p] : train_params) {
      auto g = resumed->grads.find(name);
      if (g != resumed->grads.end() && (root || is_sliced(name))) p.ag()->grad = keep(name, g->second, DType::f32);
    }
    resumed.reset();
  }
  // Writes the trained weights to each path (rank 0); sharded weights are gathered whole for it.
  auto save_weights = [&](std::initializer_list<std::string> paths) {
    if (sharded && model.config().n_expert == 0) {  // streamed, one weight whole at a time
      std::vector<ShardedWeights::FileTensor> ts;
      for (const auto& [name, p] : train_params) ts.push_back({name, name, p.detach()});
      sharded->write_whole(*paths.begin(), ts, root);
      if (root)
        for (auto p = paths.begin() + 1; p != paths.end(); ++p) copy_file_atomic(*paths.begin(), *p);
    } else if (sharded) {  // a mixture's experts are stacked in the file: all whole on rank 0
      std::vector<std::pair<std::string, Tensor>> host = sharded->host_copies(root);
      if (root)
        for (const std::string& p : paths) save_adapter_tensors(p, model.config(), host);
    } else if (root) {
      for (const std::string& p : paths) save_adapter_weights(p, model);
    }
  };
  // Data parallel: each step's sums start during backward (train/grad_buckets.h).
  std::unique_ptr<GradientBuckets> buckets;
  if (comm && !sharded && GradientBuckets::enabled())
    buckets = std::make_unique<GradientBuckets>(*comm, args.device_comm, params);
  // The group's sums of the gradients not summed yet (data parallel: all; sharded: the whole weights').
  auto sum_gradients = [&] {
    if (sharded)
      sharded->sum_whole_gradients();
    else if (comm)
      all_reduce_gradients(*comm, args.device_comm, params);
  };

  std::optional<MetricsLog> metrics;
  if (root) metrics.emplace(metrics_path.string(), metrics_text);

  auto save_checkpoint = [&](int64_t it) {
    // Mid-accumulation, the checkpoint keeps the group's gradient sum so far: rank 0 holds it from
    // here on and the others start again from zero, so the next sum counts each share once.
    if (comm && it % args.grad_accumulation_steps != 0) {
      sum_gradients();
      if (!root)
        for (auto& [name, p] : train_params)
          if (!is_sliced(name)) ag::zero_grad(p);
    }
    if (!root && !sharded) return;  // a sharded run's files are written by all: they gather
    fs::path cks = dir / "checkpoints", tmp = cks / (".tmp-" + iter_name(it)), fin = cks / iter_name(it);
    struct RemoveUnlessRenamed {
      fs::path p;  // empty on the ranks that write nothing
      bool done = false;
      ~RemoveUnlessRenamed() {
        std::error_code ec;
        if (!done && !p.empty()) fs::remove_all(p, ec);
      }
    } tmp_guard{root ? tmp : fs::path()};
    if (root) {
      fs::remove_all(tmp);
      fs::create_directories(tmp);
      write_point("folder-created", tmp.string());
    }
    save_weights({(tmp / "adapters.safetensors").string()});
    // Whole tensors in the file whatever the world size (a sharded run's slices gathered one at a
    // time, on every rank), so that any number of processes can resume from it. It may hold none
    // (SGD without momentum, between updates): a file with no tensors, no placeholder.
    std::vector<ShardedWeights::FileTensor> os;
    for (auto& [key, t] : opt.state()) os.push_back({kStatePrefix + key, key.substr(0, key.rfind('.')), t});
    for (auto& [name, p] : train_params)
      if (p.ag() && p.ag()->grad.defined()) os.push_back({kGradPrefix + name, name, p.ag()->grad});
    const std::string opt_file = (tmp / "optimizer.safetensors").string();
    if (sharded) {
      sharded->write_whole(opt_file, os, root);
    } else {
      std::vector<std::pair<std::string, Tensor>> host;
      for (const auto& f : os) host.push_back({f.key, ops::to(f.t, Device::cpu, DType::f32)});
      save_safetensors(opt_file, host);
    }
    if (!root) return;
    if (fs::exists(dir / "adapter_config.json"))
      copy_file_atomic(dir / "adapter_config.json", tmp / "adapter_config.json");
    copy_file_atomic(metrics_path, tmp / "metrics.jsonl");
    json j = {{"iteration", it},
              {"optimizer", opt.name()},
              {"optimizer_step", opt.step()},
              {"batch_size", args.batch_size},
              {"seed", args.seed},
              {"iters", iters},
              {"pack", args.pack},
              {"loop", to_json(st)}};
    write_file_atomic((tmp / "trainer_state.json").string(), j.dump(2) + "\n");
    fs::remove_all(fin);
    fs::rename(tmp, fin);
    tmp_guard.done = true;
    write_point("folder-renamed", fin.string());
  };

  // A finite loss can still give an Inf gradient (an overflow): what an update made is checked
  // before it is saved.
  auto check_parameters = [&](int64_t it) {
    std::string bad = first_non_finite(train_params);
    if (sharded && comm) {  // each rank sees its slices only: all stop, or none
      double any = bad.empty() ? 0 : 1;
      comm->all_reduce_sum(&any, 1);
      if (any > 0 && bad.empty()) bad = "(a slice on another rank)";
    }
    if (!bad.empty()) stop_not_finite(it, str_cat("parameter '", bad, "' is NaN or Inf"), dir.string());
  };

  TrainResult res;
  Progress bar(args.progress, iters, st.iteration);
  double train_time = 0;
  auto& alloc = allocator(model.device());
  std::fprintf(out, "Starting training..., iters: %lld\n", (long long)iters);
  std::fflush(out);
  write_points_begin_training();
  bar.update(st.iteration);
  int64_t it = st.iteration + 1;
  for (; it <= iters; ++it) {
    if (!val_groups.empty() && (it == 1 || it % args.steps_per_eval == 0 || it == iters)) {
      auto tic = Clock::now();
      double vl = evaluate(model, valid_set, args.batch_size, args.val_batches, args.max_seq_length, args.seed, comm);
      double vt = seconds_since(tic);
      if (!std::isfinite(vl)) stop_not_finite(it, str_cat("the validation loss is ", vl), dir.string());
      bar.clear();
      std::fprintf(out, "Iter %lld: Val loss %.3f, Val took %.3fs\n", (long long)it, vl, vt);
      if (metrics) metrics->append(json{{"iteration", it}, {"val_loss", vl}, {"val_time", vt}}.dump());
      if (st.best_val < 0 || vl < st.best_val) {
        st.best_val = vl;
        st.best_iter = it;
        st.evals_since_best = 0;
        save_weights({(dir / "best_adapters.safetensors").string()});
      } else {
        ++st.evals_since_best;
      }
      std::fflush(out);
      if (args.early_stop > 0 && st.evals_since_best >= args.early_stop) {
        std::fprintf(out,
                     "Iter %lld: Early stop: val loss has not improved for %lld evaluations (best %.3f at iter %lld)\n",
                     (long long)it, (long long)st.evals_since_best, st.best_val, (long long)st.best_iter);
        res.early_stopped = true;
        break;
      }
    }
    auto tic = Clock::now();
    int64_t g = it - 1;
    auto order = batch_order(size_t(nb), args.seed, g / nb);
    const size_t gi = order[size_t(g % nb)];
    // This rank's share of the batch (all of it on one process); a share may be empty (a packed
    // batch of fewer rows than ranks): the rank then only joins the sums.
    Batch b;
    Tensor loss;
    double local_loss = 0;
    if (args.pack) {
      const PackedGroup share = rank_share(packed[gi], comm);
      if (!share.empty()) b = make_packed_batch(train_set, share, args.max_seq_length);
    } else {
      const std::vector<size_t> share = rank_share(groups[gi], comm);
      if (!share.empty()) b = make_batch(train_set, share, args.max_seq_length);
    }
    if (b.inputs.defined()) {
      const PackedRows rows{b.positions, b.segments};
      loss = model.loss(ops::to(b.inputs, Device::cpu), b.targets, args.pack ? &rows : nullptr);
      local_loss = double(ops::item(loss));
    } else if (sharded) {
      sharded->idle_forward();
    }
    // With a group: the batch's token-weighted mean and its tokens, the same on every rank.
    const auto [loss_value, n_tokens] = all_reduce_mean(comm, local_loss, b.n_tokens);
    if (n_tokens > 0 && !std::isfinite(loss_value))
      stop_not_finite(it, str_cat("the training loss is ", loss_value), dir.string());
    // A share's mean loss weighted by its part of the batch's tokens: the group's summed gradients
    // are then those of the batch's mean.
    const bool updates = it % args.grad_accumulation_steps == 0;
    if (buckets && updates) buckets->arm();
    if (b.n_tokens > 0)
      ag::backward(comm ? ag::scale(loss, float(double(b.n_tokens) / double(n_tokens))) : loss);
    else if (sharded)
      sharded->idle_backward();
    st.report_loss += loss_value;
    st.report_tokens += n_tokens;
    st.report_steps += 1;
    if (updates) {
      if (buckets)
        buckets->finish();
      else
        sum_gradients();
      std::map<std::string, Tensor> grads;
      double sq = 0;
      for (auto& [name, p] : train_params) {
        const Tensor& gr = p.ag()->grad;
        if (!gr.defined()) continue;
        Tensor gg = args.grad_accumulation_steps > 1 ? ops::scale(gr, 1.f / float(args.grad_accumulation_steps)) : gr;
        if (args.grad_clip > 0 && !sharded) sq += double(ops::item(ops::sum_all(ops::mul(gg, gg))));
        grads[name] = gg;
      }
      if (args.grad_clip > 0 && sharded) sq = sharded->gradient_square_sum(grads);
      if (args.grad_clip > 0) {
        double norm = std::sqrt(sq);
        if (norm > args.grad_clip) {
          float c = float(args.grad_clip / (norm + 1e-6));
          for (auto& [name, gg] : grads) gg = ops::scale(gg, c);
        }
      }
      opt.update(train_params, grads);
      for (auto& [name, p] : train_params) ag::zero_grad(p);
    }
    train_time += seconds_since(tic);
    if (it % args.steps_per_report == 0 || it == iters) {
      double tl = st.report_loss / double(st.report_steps);
      double rate = lr(std::max<int64_t>(opt.step() - 1, 0));
      double it_sec = double(args.steps_per_report) / train_time;
      double tok_sec = double(st.report_tokens) / train_time;
      st.trained_tokens += st.report_tokens;
      double peak = double(alloc.peak_bytes()) / 1e9;
      bar.set_loss(tl);
      bar.clear();
      std::fprintf(out,
                   "Iter %lld: Train loss %.3f, Learning Rate %.3e, It/sec %.3f, Tokens/sec %.3f, Trained Tokens %lld, "
                   "Peak mem %.3f GB\n",
                   (long long)it, tl, rate, it_sec, tok_sec, (long long)st.trained_tokens, peak);
      std::fflush(out);
      if (metrics)
        metrics->append(json{
            {"iteration", it},
            {"train_loss", tl},
            {"learning_rate", rate},
            {"iterations_per_second", it_sec},
            {"tokens_per_second", tok_sec},
            {"trained_tokens", st.trained_tokens},
            {"peak_memory",
             peak}}.dump());
      st.report_loss = 0;
      st.report_tokens = 0;
      st.report_steps = 0;
      train_time = 0;
    }
    st.iteration = it;
    if (it % args.save_every == 0) {
      check_parameters(it);
      std::string ck = (dir / (iter_name(it) + "_adapters.safetensors")).string();
      save_weights({adapter_file, ck});
      // The last iteration's checkpoint is written after the run's final files (below).
      if (it < iters) save_checkpoint(it);
      bar.clear();
      std::fprintf(out, "Iter %lld: Saved adapter weights to %s and %s.\n", (long long)it, adapter_file.c_str(),
                   ck.c_str());
      std::fflush(out);
    }
    bar.update(it);
  }
  bar.clear();
  res.iterations = st.iteration;
  res.best_val_loss = st.best_val;
  res.best_iteration = st.best_iter;
  check_parameters(st.iteration);
  save_weights({adapter_file});
  if (root) write_loss_svg(metrics_path.string(), (dir / "loss.svg").string());
  // The final checkpoint is the run's last write: a run killed before it is resumed from the one
  // before and redoes the final files; one killed after it has nothing left to write.
  if (st.iteration > 0 && (st.iteration % args.save_every != 0 || st.iteration == iters)) save_checkpoint(st.iteration);
  std::fprintf(out, "Saved final weights to %s.\n", adapter_file.c_str());
  if (st.best_val >= 0)
    std::fprintf(out, "Best val loss %.3f at iter %lld: %s\n", st.best_val, (long long)st.best_iter,
                 (dir / "best_adapters.safetensors").string().c_str());
  std::fflush(out);
  return res;
}

}  // namespace lmtune::train
