// The files of `lmtune convert` (see convert_io.h): Python-exact JSON, streamed safetensors
// shards, the staged output folder and the progress bar.
#include "convert_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "io/hub_http.h"
#include "io/safetensors.h"
#include "tokenizer/jinja/value.h"

namespace fs = std::filesystem;

namespace lmtune::cli::convert {

// --- JSON as Python prints it ---

std::string python_json(const nlohmann::ordered_json& j) {
  // json.dumps(j, indent=4) with its defaults (ensure_ascii, "," and ": "): the chat templates'
  // tojson already writes exactly that.
  jinja::JsonOptions opt;
  opt.ensure_ascii = true;
  opt.indent = 4;
  opt.item_sep = ",";
  opt.key_sep = ": ";
  return jinja::to_json(jinja::Value::from_json(j), opt);
}

// --- Shards ---

uint64_t TensorEntry::nbytes() const { return uint64_t(numel_of(shape)) * dtype_size(dtype); }

ShardWriter::ShardWriter(std::string path, std::vector<TensorEntry> entries,
                         const std::map<std::string, std::string>& metadata)
    : path_(std::move(path)), entries_(std::move(entries)), out_(path_) {
  data_order_.resize(entries_.size());
  for (size_t i = 0; i < entries_.size(); ++i) {
    data_order_[i] = i;
    LMT_CHECK(index_.emplace(entries_[i].name, i).second, "[convert] ", path_, ": tensor '", entries_[i].name,
              "' is given twice");
  }
  std::stable_sort(data_order_.begin(), data_order_.end(),
                   [&](size_t a, size_t b) { return dtype_size(entries_[a].dtype) > dtype_size(entries_[b].dtype); });
  std::vector<uint64_t> begin(entries_.size());
  uint64_t offset = 0;
  for (size_t i : data_order_) {
    begin[i] = offset;
    offset += entries_[i].nbytes();
  }
  // The header keeps the entries' order (nlohmann's json would sort the keys).
  std::string header = "{";
  if (!metadata.empty()) header += "\"__metadata__\":" + nlohmann::json(metadata).dump();
  for (size_t i = 0; i < entries_.size(); ++i) {
    const TensorEntry& e = entries_[i];
    if (header.size() > 1) header += ',';
    header += nlohmann::json(e.name).dump() + ":{\"dtype\":\"" + safetensors_dtype_name(e.dtype) + "\",\"shape\":[";
    for (size_t d = 0; d < e.shape.size(); ++d) header += str_cat(d ? "," : "", e.shape[d]);
    header += str_cat("],\"data_offsets\":[", begin[i], ",", begin[i] + e.nbytes(), "]}");
  }
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');  // aligns the data section
  uint64_t header_len = header.size();
  out_.write(&header_len, 8);
  out_.write(header.data(), header.size());
  held_.resize(entries_.size());
  seen_.assign(entries_.size(), false);
}

uint64_t ShardWriter::put(const std::string& name, const Tensor& t) {
  auto it = index_.find(name);
  LMT_CHECK(it != index_.end(), "[convert] ", path_, ": tensor '", name, "' is not in this shard");
  size_t i = it->second;
  const TensorEntry& e = entries_[i];
  LMT_CHECK(!seen_[i], "[convert] ", path_, ": tensor '", name, "' is written twice");
  if (t.device() != Device::cpu || t.dtype() != e.dtype || t.shape() != e.shape) {
    std::string want = str_cat(dtype_name(e.dtype), " (");
    for (size_t d = 0; d < e.shape.size(); ++d) want += str_cat(d ? ", " : "", e.shape[d]);
    fail("[convert] ", path_, ": tensor '", name, "' is ", t.describe(), ", expected ", want, ") cpu");
  }
  seen_[i] = true;
  held_[i] = t;
  uint64_t before = drained_bytes_;
  drain();
  return drained_bytes_ - before;
}

void ShardWriter::drain() {
  while (next_ < data_order_.size() && held_[data_order_[next_]].defined()) {
    Tensor& t = held_[data_order_[next_]];
    out_.write(t.raw(), t.nbytes());
    drained_bytes_ += t.nbytes();
    t = Tensor();  // drops the data (or the mapping's reference)
    ++next_;
  }
}

void ShardWriter::commit() {
  for (size_t i = 0; i < entries_.size(); ++i)
    LMT_CHECK(seen_[i], "[convert] ", path_, ": tensor '", entries_[i].name, "' was never written");
  out_.commit();
}

// --- The staged folder ---

StagedFolder::StagedFolder(std::string final_path) : final_(std::move(final_path)) {
  while (final_.size() > 1 && final_.back() == '/') final_.pop_back();
  temp_ = str_cat(final_, ".tmp.", ::getpid());
  fs::path parent = fs::path(final_).parent_path();
  std::error_code ec;
  if (!parent.empty()) fs::create_directories(parent, ec);  // mlx-lm: mkdir(parents=True)
  LMT_CHECK(!ec, "[convert] cannot create the folder ", parent.string(), ": ", ec.message());
  fs::remove_all(temp_, ec);  // a stale folder of an earlier process with this pid
  LMT_CHECK(fs::create_directory(temp_, ec) && !ec, "[convert] cannot create the folder ", temp_, ": ",
            ec ? ec.message() : "it exists");
}

StagedFolder::~StagedFolder() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(temp_, ec);
}

void StagedFolder::commit() {
  // RENAME_NOREPLACE: a folder someone made at the final path since the start is never replaced
  // (plain rename would replace an empty one).
  int rc = ::renameat2(AT_FDCWD, temp_.c_str(), AT_FDCWD, final_.c_str(), RENAME_NOREPLACE);
  if (rc != 0 && (errno == EINVAL || errno == ENOSYS)) {  // a filesystem without the flag
    LMT_CHECK(!fs::exists(final_), "Cannot save to the path ", final_, " as it already exists.");
    rc = std::rename(temp_.c_str(), final_.c_str());
  }
  if (rc != 0) {
    int err = errno;
    LMT_CHECK(err != EEXIST && err != ENOTEMPTY, "Cannot save to the path ", final_,
              " as it already exists (it appeared while converting; the output is left in ", temp_, ").");
    fail("[convert] cannot rename ", temp_, " to ", final_, ": ", std::strerror(err));
  }
  committed_ = true;
  std::string parent = fs::path(final_).parent_path().string();
  int fd = ::open(parent.empty() ? "." : parent.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);  // the rename itself reaches the disk
    ::close(fd);
  }
}

void copy_file(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  LMT_CHECK(in, "[convert] cannot open ", from);
  std::ostringstream ss;
  ss << in.rdbuf();
  LMT_CHECK(!in.bad(), "[convert] cannot read ", from);
  write_file_atomic(to, ss.str());
}

// --- Progress ---

namespace {
double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
}  // namespace

Progress::Progress(uint64_t total_bytes) : total_(total_bytes), tty_(::isatty(STDERR_FILENO)), t0_(now_s()) {}

void Progress::add(uint64_t bytes, const std::string& what) {
  done_ += bytes;
  what_ = what;
  draw(false);
}

void Progress::draw(bool force) {
  if (!tty_) return;
  double t = now_s();
  if (!force && last_ >= 0 && t - last_ < 0.1) return;
  last_ = t;
  constexpr int kWidth = 24;
  double frac = total_ ? std::min(1.0, double(done_) / double(total_)) : 1.0;
  int fill = int(kWidth * frac);
  double rate = t > t0_ ? double(done_) / (t - t0_) : 0.0;
  std::string eta = rate > 0 && done_ < total_ ? str_cat(int64_t(double(total_ - done_) / rate), "s") : "0s";
  std::fprintf(stderr, "\r[convert] %3d%% |%s%s| %s/%s ETA %s %-.40s\033[K", int(100 * frac),
               std::string(size_t(fill), '#').c_str(), std::string(size_t(kWidth - fill), ' ').c_str(),
               hub_detail::human_bytes(done_).c_str(), hub_detail::human_bytes(total_).c_str(), eta.c_str(),
               what_.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

Progress::~Progress() {
  if (drawn_) std::fputc('\n', stderr);  // an error message after a failure starts on its own line
}

void Progress::done() {
  if (!tty_) return;
  what_.clear();
  draw(true);
  std::fputc('\n', stderr);
  drawn_ = false;
}

}  // namespace lmtune::cli::convert
