// Unigram (SentencePiece) model: Viterbi best path over a byte trie of the pieces, unknown
// characters fused into one unk, optional byte fallback; mirrors Hugging Face's encode_optimized.
#include <algorithm>
#include <mutex>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/model.h"
#include "tokenizer/unicode.h"

namespace lmtune::tok {
namespace {

constexpr double kUnkPenalty = 10.0;

class Unigram : public Model {
 public:
  Unigram(const nlohmann::json& j, const ModelTables* t) {
    nodes_.push_back({});
    size_t n_vocab = 0;
    if (t) {
      LMT_CHECK(t->vocab == ModelTables::kList, "[tokenizer] Unigram vocab must be a list of [piece, score]");
      n_vocab = t->tokens.size();
      vocab_.reserve(n_vocab);
      scores_.reserve(n_vocab);
      for (size_t id = 0; id < n_vocab; ++id) add_piece(std::string(t->tokens[id]), t->scores[id], id);
    } else {
      const auto& vocab = j.at("vocab");
      LMT_CHECK(vocab.is_array(), "[tokenizer] Unigram vocab must be a list of [piece, score]");
      n_vocab = vocab.size();
      vocab_.reserve(n_vocab);
      scores_.reserve(n_vocab);
      for (size_t id = 0; id < n_vocab; ++id) {
        const auto& e = vocab[id];
        LMT_CHECK(e.is_array() && e.size() == 2, "[tokenizer] Unigram vocab entry ", id, " is not [piece, score]");
        std::string piece = e[0].get<std::string>();
        add_piece(piece, e[1].get<double>(), id);
      }
    }
    double min_score = scores_.empty() ? 0.0 : *std::min_element(scores_.begin(), scores_.end());
    unk_score_ = min_score - kUnkPenalty;
    unk_id_ = j.contains("unk_id") && j["unk_id"].is_number() ? j["unk_id"].get<int32_t>() : -1;
    LMT_CHECK(unk_id_ < static_cast<int32_t>(n_vocab), "[tokenizer] Unigram unk_id ", unk_id_,
              " is outside the vocab of ", n_vocab);
    byte_fallback_ = j.value("byte_fallback", false);
  }

  void tokenize(std::string_view s, std::vector<int32_t>& out) const override {
    if (s.empty()) return;
    {
      std::lock_guard<std::mutex> lock(cache_mu_);
      auto it = cache_.find(std::string(s));
      if (it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> ids;
    encode(s, ids);
    out.insert(out.end(), ids.begin(), ids.end());
    if (s.size() < 256) {
      std::lock_guard<std::mutex> lock(cache_mu_);
      if (cache_.size() < 100000) cache_.emplace(std::string(s), std::move(ids));
    }
  }

 private:
  struct Node {
    int32_t id = -1;
    std::unordered_map<unsigned char, int32_t> kids;
  };
  struct Best {
    double score = 0;
    int32_t start = -1, id = -1;
  };

  void add_piece(const std::string& piece, double score, size_t id) {
    add_token(piece, static_cast<int32_t>(id));
    scores_.push_back(score);
    insert_trie(piece, static_cast<int32_t>(id));
  }

  void insert_trie(const std::string& piece, int32_t id) {
    int32_t n = 0;
    for (unsigned char c : piece) {
      auto it = nodes_[n].kids.find(c);
      if (it == nodes_[n].kids.end()) {
        nodes_.push_back({});
        int32_t child = static_cast<int32_t>(nodes_.size() - 1);
        nodes_[n].kids.emplace(c, child);
        n = child;
      } else {
        n = it->second;
      }
    }
    if (nodes_[n].id < 0) nodes_[n].id = id;
  }

  void encode(std::string_view s, std::vector<int32_t>& ids) const {
    size_t size = s.size();
    std::vector<Best> best(size + 1);
    size_t start = 0;
    while (start < size) {
      double here = best[start].score;
      size_t mblen = std::min(utf8_len(static_cast<unsigned char>(s[start])), size - start);
      bool single = false;
      int32_t n = 0;
      for (size_t k = start; k < size; ++k) {
        auto it = nodes_[n].kids.find(static_cast<unsigned char>(s[k]));
        if (it == nodes_[n].kids.end()) break;
        n = it->second;
        if (nodes_[n].id < 0) continue;
        size_t end = k + 1;
        int32_t id = vocab_.find(s.substr(start, end - start));  // the map's id wins for duplicates
        double cand = scores_[id] + here;
        Best& t = best[end];
        if (t.start < 0 || cand > t.score) t = {cand, static_cast<int32_t>(start), id};
        if (end - start == mblen) single = true;
      }
      if (!single) {
        LMT_CHECK(unk_id_ >= 0, "[tokenizer] Unigram: no piece covers ", std::string(s.substr(start, mblen)),
                  " and the model has no unk_id");
        Best& t = best[start + mblen];
        double cand = unk_score_ + here;
        if (t.start < 0 || cand > t.score) t = {cand, static_cast<int32_t>(start), unk_id_};
      }
      start += mblen;
    }
    std::vector<std::string_view> pieces;
    size_t end = size, unk_end = 0;
    bool in_unk = false;
    while (end > 0) {
      const Best& node = best[end];
      size_t b = static_cast<size_t>(node.start);
      if (unk_id_ >= 0 && node.id == unk_id_) {
        if (!in_unk) unk_end = end;
        in_unk = true;
      } else {
        if (in_unk) pieces.push_back(s.substr(end, unk_end - end));
        in_unk = false;
        pieces.push_back(s.substr(b, end - b));
      }
      end = b;
    }
    if (in_unk) pieces.push_back(s.substr(0, unk_end));
    for (auto it = pieces.rbegin(); it != pieces.rend(); ++it) {
      int32_t id = vocab_.find(*it);
      if (id >= 0) {
        ids.push_back(id);
        continue;
      }
      if (byte_fallback_) {
        std::vector<int32_t> bytes;
        for (unsigned char c : *it) {
          char name[8];
          std::snprintf(name, sizeof(name), "<0x%02X>", c);
          int32_t bid = vocab_.find(name);
          if (bid < 0) break;
          bytes.push_back(bid);
        }
        if (bytes.size() == it->size()) {
          ids.insert(ids.end(), bytes.begin(), bytes.end());
          continue;
        }
      }
      LMT_CHECK(unk_id_ >= 0, "[tokenizer] Unigram: ", std::string(*it), " is unknown and the model has no unk_id");
      ids.push_back(unk_id_);
    }
  }

  std::vector<double> scores_;
  std::vector<Node> nodes_;
  double unk_score_ = 0;
  int32_t unk_id_ = -1;
  bool byte_fallback_ = false;
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace

std::unique_ptr<Model> make_unigram(const nlohmann::json& j, const ModelTables* t) {
  return std::make_unique<Unigram>(j, t);
}

}  // namespace lmtune::tok
