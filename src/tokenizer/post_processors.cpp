// Post-processors: TemplateProcessing, ByteLevel (ids unchanged), Roberta/Bert, Sequence.
#include "core/error.h"
#include "tokenizer/components.h"

namespace lmtune::tok {
namespace {

// A single-sequence template: each item is either the sequence (empty ids) or special ids.
class Template : public PostProcessor {
 public:
  struct Item {
    bool is_sequence;
    std::vector<int32_t> ids;
  };
  explicit Template(std::vector<Item> items) : items_(std::move(items)) {}
  void process(std::vector<int32_t>& ids, bool add_special) const override {
    if (!add_special) return;
    std::vector<int32_t> out;
    out.reserve(ids.size() + 4);
    for (const Item& it : items_) {
      if (it.is_sequence)
        out.insert(out.end(), ids.begin(), ids.end());
      else
        out.insert(out.end(), it.ids.begin(), it.ids.end());
    }
    ids = std::move(out);
  }

 private:
  std::vector<Item> items_;
};

class NoOp : public PostProcessor {
 public:
  void process(std::vector<int32_t>&, bool) const override {}
};

class Sequence : public PostProcessor {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PostProcessor>> items) : items_(std::move(items)) {}
  void process(std::vector<int32_t>& ids, bool add_special) const override {
    for (const auto& p : items_) p->process(ids, add_special);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> items_;
};

std::unique_ptr<PostProcessor> make_template(const nlohmann::json& j) {
  std::vector<Template::Item> items;
  const auto& specials = j.contains("special_tokens") ? j["special_tokens"] : nlohmann::json::object();
  for (const auto& piece : j.at("single")) {
    if (piece.contains("Sequence")) {
      items.push_back({true, {}});
    } else if (piece.contains("SpecialToken")) {
      std::string id = piece["SpecialToken"].at("id").get<std::string>();
      LMT_CHECK(specials.contains(id), "[tokenizer] TemplateProcessing: special token ", id,
                " is missing from special_tokens");
      items.push_back({false, specials[id].at("ids").get<std::vector<int32_t>>()});
    } else {
      fail("[tokenizer] TemplateProcessing: unsupported template piece ", piece.dump());
    }
  }
  return std::make_unique<Template>(std::move(items));
}

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const nlohmann::json& j) {
  if (j.is_null()) return nullptr;
  std::string type = component_type(j, "post_processor");
  if (type == "TemplateProcessing") return make_template(j);
  if (type == "ByteLevel") return std::make_unique<NoOp>();
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    std::vector<Template::Item> items;
    items.push_back({false, {j.at("cls").at(1).get<int32_t>()}});
    items.push_back({true, {}});
    items.push_back({false, {j.at("sep").at(1).get<int32_t>()}});
    return std::make_unique<Template>(std::move(items));
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PostProcessor>> items;
    for (const auto& item : j.at("processors"))
      if (auto p = make_post_processor(item)) items.push_back(std::move(p));
    return std::make_unique<Sequence>(std::move(items));
  }
  fail("[tokenizer] unsupported post_processor type ", type);
}

}  // namespace lmtune::tok
