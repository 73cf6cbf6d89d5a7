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

namespace fs = std::filesystem;

namespace lmtune::cli::convert {

// --- JSON as Python prints it ---

std::string python_float_repr(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);  // shortest round trip
  std::string s(buf, r.ptr);
  std::string sign;
  if (s[0] == '-') sign = "-", s.erase(0, 1);
  size_t e = s.find('e');
  std::string digits;
  for (size_t i = 0; i < e; ++i)
    if (s[i] != '.') digits += s[i];
  int decpt = std::stoi(s.substr(e + 1)) + 1;  // value = 0.DIGITS x 10^decpt
  int nd = int(digits.size());
  std::string out;
  if (decpt > -4 && decpt <= 16) {  // CPython's float_repr_style 'short': fixed notation in this range
    if (decpt <= 0)
      out = "0." + std::string(size_t(-decpt), '0') + digits;
    else if (decpt >= nd)
      out = digits + std::string(size_t(decpt - nd), '0') + ".0";
    else
      out = digits.substr(0, size_t(decpt)) + "." + digits.substr(size_t(decpt));
  } else {
    out = digits.substr(0, 1);
    if (nd > 1) out += "." + digits.substr(1);
    int x = decpt - 1;
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", x < 0 ? '-' : '+', std::abs(x));
    out += eb;
  }
  return sign + out;
}

namespace {

void append_u_escape(std::string& out, uint32_t unit) {
  char b[8];
  std::snprintf(b, sizeof b, "\\u%04x", unsigned(unit));
  out += b;
}

// json.dumps's ensure_ascii encoder: short escapes, \u00XX for controls and DEL, \uXXXX (a
// surrogate pair above U+FFFF) for every non-ASCII code point.
std::string python_string(const std::string& s) {
  std::string out = "\"";
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        case '\b': out += "\\b"; break;
        case '\f': out += "\\f"; break;
        default:
          if (c < 0x20 || c == 0x7f)
            append_u_escape(out, c);
          else
            out += char(c);
      }
      ++i;
      continue;
    }
    // nlohmann's parser has checked the UTF-8 of every string it read.
    int len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
    uint32_t cp = c & (len == 4 ? 0x07 : len == 3 ? 0x0f : 0x1f);
    for (int k = 1; k < len && i + size_t(k) < s.size(); ++k) cp = (cp << 6) | (uint32_t(s[i + size_t(k)]) & 0x3f);
    if (cp > 0xffff) {
      cp -= 0x10000;
      append_u_escape(out, 0xd800 + (cp >> 10));
      append_u_escape(out, 0xdc00 + (cp & 0x3ff));
    } else {
      append_u_escape(out, cp);
    }
    i += size_t(len);
  }
  return out + "\"";
}

void dump_value(const nlohmann::ordered_json& j, int level, std::string& out) {
  using T = nlohmann::ordered_json::value_t;
  switch (j.type()) {
    case T::null: out += "null"; return;
    case T::boolean: out += j.get<bool>() ? "true" : "false"; return;
    case T::number_integer: out += std::to_string(j.get<int64_t>()); return;
    case T::number_unsigned: out += std::to_string(j.get<uint64_t>()); return;
    case T::number_float: out += python_float_repr(j.get<double>()); return;
    case T::string: out += python_string(j.get<std::string>()); return;
    case T::object:
    case T::array: {
      bool obj = j.is_object();
      if (j.empty()) {
        out += obj ? "{}" : "[]";
        return;
      }
      std::string inner = "\n" + std::string(size_t(4 * (level + 1)), ' ');
      out += obj ? '{' : '[';
      bool first = true;
      for (auto it = j.begin(); it != j.end(); ++it) {
        out += first ? inner : "," + inner;
        first = false;
        if (obj) out += python_string(it.key()) + ": ";
        dump_value(*it, level + 1, out);
      }
      out += "\n" + std::string(size_t(4 * level), ' ') + (obj ? '}' : ']');
      return;
    }
    default: fail("[convert] a JSON value of type ", j.type_name(), " cannot be written");
  }
}

}  // namespace

std::string python_json(const nlohmann::ordered_json& j) {
  std::string out;
  dump_value(j, 0, out);
  return out;
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
