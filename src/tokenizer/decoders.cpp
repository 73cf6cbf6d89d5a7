// Decoders (ByteLevel Metaspace ByteFallback Fuse Strip Replace Sequence) working on token
// strings like Hugging Face's decode_chain, and the GPT-2 byte <-> unicode table.
#include <array>

#include "core/error.h"
#include "tokenizer/components.h"
#include "tokenizer/pattern.h"
#include "tokenizer/unicode.h"

namespace lmtune::tok {
namespace {

struct ByteTable {
  std::array<std::string, 256> to_char;
  std::array<int16_t, 512> to_byte;
  ByteTable() {
    to_byte.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      uint32_t cp = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + n++);
      append_utf8(to_char[b], cp);
      to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};

const ByteTable& table() {
  static const ByteTable t;
  return t;
}

class ByteLevelDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      size_t mark = bytes.size();
      size_t i = 0;
      bool ok = true;
      while (i < t.size()) {
        int b = unicode_to_byte(next_code_point(t, i));
        if (b < 0) {
          ok = false;
          break;
        }
        bytes += static_cast<char>(b);
      }
      if (!ok) {
        bytes.resize(mark);
        bytes += t;
      }
    }
    tokens.assign(1, utf8_lossy(bytes));
  }
};

class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(std::string rep, bool prepend) : rep_(std::move(rep)), prepend_(prepend) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      const std::string& t = tokens[i];
      size_t pos = 0;
      while (pos < t.size()) {
        if (t.compare(pos, rep_.size(), rep_) == 0) {
          if (!(i == 0 && prepend_)) out += ' ';
          pos += rep_.size();
        } else {
          out += t[pos++];
        }
      }
      tokens[i] = std::move(out);
    }
  }

 private:
  std::string rep_;
  bool prepend_;
};

// "<0xAB>" -> 0xAB, else -1.
int byte_token_value(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  int hi = hex(t[3]), lo = hex(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

class ByteFallbackDecoder : public Decoder {
 public:
  bool uses_byte_fallback() const override { return true; }
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string run;
    auto flush = [&] {
      if (run.empty()) return;
      if (find_invalid_utf8(run) == std::string_view::npos) {
        out.push_back(run);
      } else {
        for (size_t k = 0; k < run.size(); ++k) out.emplace_back("\xEF\xBF\xBD");
      }
      run.clear();
    };
    for (std::string& t : tokens) {
      int b = byte_token_value(t);
      if (b >= 0) {
        run += static_cast<char>(b);
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }
};

class FuseDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

class StripDecoder : public Decoder {
 public:
  StripDecoder(uint32_t content, size_t start, size_t stop) : content_(content), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      std::vector<uint32_t> cps;
      size_t i = 0;
      while (i < t.size()) cps.push_back(next_code_point(t, i));
      size_t b = 0, e = cps.size();
      for (size_t k = 0; k < start_ && k < cps.size() && cps[k] == content_; ++k) b = k + 1;
      for (size_t k = 0; k < stop_ && k < cps.size(); ++k) {
        size_t idx = cps.size() - k - 1;
        if (cps[idx] != content_) break;
        e = idx;
      }
      std::string out;
      for (size_t k = b; k < e; ++k) append_utf8(out, cps[k]);
      t = std::move(out);
    }
  }

 private:
  uint32_t content_;
  size_t start_, stop_;
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(Pattern p, std::string content) : p_(std::move(p)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) t = p_.replace_all(t, content_);
  }

 private:
  Pattern p_;
  std::string content_;
};

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> items) : items_(std::move(items)) {}
  bool uses_byte_fallback() const override {
    for (const auto& d : items_)
      if (d->uses_byte_fallback()) return true;
    return false;
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& d : items_) d->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> items_;
};

}  // namespace

const std::string& byte_to_unicode(unsigned char b) { return table().to_char[b]; }

int unicode_to_byte(uint32_t cp) { return cp < 512 ? table().to_byte[cp] : -1; }

std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j) {
  if (j.is_null()) return nullptr;
  std::string type = component_type(j, "decoder");
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    std::string rep = j.contains("replacement") ? j["replacement"].get<std::string>() : "\xE2\x96\x81";
    bool prepend = j.contains("prepend_scheme") && j["prepend_scheme"].is_string()
                       ? j["prepend_scheme"].get<std::string>() != "never"
                       : j.value("add_prefix_space", true);
    return std::make_unique<MetaspaceDecoder>(rep, prepend);
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    std::string c = j.at("content").get<std::string>();
    size_t i = 0;
    uint32_t cp = c.empty() ? 0 : next_code_point(c, i);
    return std::make_unique<StripDecoder>(cp, j.value("start", 0), j.value("stop", 0));
  }
  if (type == "Replace")
    return std::make_unique<ReplaceDecoder>(Pattern::from_json(j.at("pattern"), "Replace decoder"),
                                            j.at("content").get<std::string>());
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Decoder>> items;
    for (const auto& item : j.at("decoders"))
      if (auto d = make_decoder(item)) items.push_back(std::move(d));
    return std::make_unique<SequenceDecoder>(std::move(items));
  }
  fail("[tokenizer] unsupported decoder type ", type);
}

}  // namespace lmtune::tok
