// apply_chat_template as transformers 5 does it (tokenization_utils_base.py apply_chat_template,
// get_chat_template; utils/chat_template_utils.py render_jinja_template): same inputs, same text.
#include "tokenizer/chat_template.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

#include "core/error.h"
#include "tokenizer/jinja/jinja.h"

namespace lmtune {

using ojson = nlohmann::ordered_json;

struct ChatTemplate::Cache {
  std::mutex mu;
  std::map<std::string, jinja::Template> parsed;  // by template source
};

namespace {

// HF's named special tokens, in SPECIAL_TOKENS_ATTRIBUTES order.
const char* const kSpecialAttrs[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                     "pad_token", "cls_token", "mask_token"};

// Defaults of the tokenizer classes' __init__ that apply when the config leaves a token out
// (e.g. GemmaTokenizer's mask_token "<mask>"); classes not listed have none.
struct ClassDefaults {
  const char* cls;
  std::vector<std::pair<const char*, const char*>> tokens;
};
const ClassDefaults kClassDefaults[] = {
    {"LlamaTokenizer", {{"unk_token", "<unk>"}, {"bos_token", "<s>"}, {"eos_token", "</s>"}}},
    {"GemmaTokenizer",
     {{"unk_token", "<unk>"},
      {"bos_token", "<bos>"},
      {"eos_token", "<eos>"},
      {"pad_token", "<pad>"},
      {"mask_token", "<mask>"}}},
    {"Qwen2Tokenizer",
     {{"unk_token", "<|endoftext|>"}, {"eos_token", "<|endoftext|>"}, {"pad_token", "<|endoftext|>"}}},
};

// A config token is a string or an AddedToken object {"content": ...}; anything else is unset.
bool token_text(const ojson& v, std::string* out) {
  if (v.is_string()) {
    *out = v.get<std::string>();
    return true;
  }
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    *out = v["content"].get<std::string>();
    return true;
  }
  return false;
}

ojson special_tokens_from_config(const ojson& cfg) {
  ojson out = ojson::object();
  if (!cfg.is_object()) return out;
  std::string cls = cfg.contains("tokenizer_class") && cfg["tokenizer_class"].is_string()
                        ? cfg["tokenizer_class"].get<std::string>()
                        : "";
  if (cls.size() > 4 && cls.compare(cls.size() - 4, 4, "Fast") == 0) cls.resize(cls.size() - 4);
  const ClassDefaults* defaults = nullptr;
  for (const ClassDefaults& d : kClassDefaults)
    if (cls == d.cls) defaults = &d;
  for (const char* attr : kSpecialAttrs) {
    std::string text;
    if (cfg.contains(attr)) {
      if (token_text(cfg[attr], &text)) out[attr] = text;
      continue;  // an explicit null unsets the class default
    }
    if (defaults)
      for (const auto& [k, v] : defaults->tokens)
        if (std::string(k) == attr) out[attr] = v;
  }
  // A dict of extra_special_tokens names model-specific tokens (boi_token, image_token, ...).
  if (cfg.contains("extra_special_tokens") && cfg["extra_special_tokens"].is_object())
    for (auto it = cfg["extra_special_tokens"].begin(); it != cfg["extra_special_tokens"].end(); ++it) {
      std::string text;
      if (token_text(it.value(), &text)) out[it.key()] = text;
    }
  return out;
}

// Python's str.isspace over UTF-8: the code point starting at s[i] and its length, when a space.
size_t space_len(const std::string& s, size_t i) {
  unsigned char c = s[i];
  if ((c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20)) return 1;
  if (c == 0xc2 && i + 1 < s.size() && (s[i + 1] == '\x85' || s[i + 1] == '\xa0')) return 2;
  if (c < 0xe1 || i + 2 >= s.size()) return 0;
  uint32_t cp = ((c & 0x0f) << 12) | ((s[i + 1] & 0x3f) << 6) | (s[i + 2] & 0x3f);
  bool sp = cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f ||
            cp == 0x205f || cp == 0x3000;
  return sp ? 3 : 0;
}

size_t space_len_before(const std::string& s, size_t end) {
  for (size_t n = 1; n <= 3 && n <= end; ++n)
    if (space_len(s, end - n) == n) return n;
  return 0;
}

std::string py_rstrip(std::string s) {
  while (size_t n = space_len_before(s, s.size())) s.resize(s.size() - n);
  return s;
}

std::string py_strip(const std::string& s) {
  std::string r = py_rstrip(s);
  size_t i = 0;
  while (i < r.size())
    if (size_t n = space_len(r, i))
      i += n;
    else
      break;
  return r.substr(i);
}

const char* const kReasoningFields[] = {"reasoning_content", "thinking", "reasoning"};

bool is_reasoning_field(const std::string& f) {
  for (const char* r : kReasoningFields)
    if (f == r) return true;
  return false;
}

// _alias_reasoning_fields: {"thinking": r, **message, "reasoning_content": r}.
ojson alias_reasoning(const ojson& m) {
  const ojson* reasoning = nullptr;
  for (const char* k : kReasoningFields)
    if (m.contains(k) && !m[k].is_null()) {
      reasoning = &m[k];
      break;
    }
  if (!reasoning) return m;
  ojson out = ojson::object();
  out["thinking"] = *reasoning;
  for (auto it = m.begin(); it != m.end(); ++it) out[it.key()] = it.value();
  out["reasoning_content"] = *reasoning;
  return out;
}

std::string read_text(const std::string& path, bool* found) {
  std::ifstream f(path, std::ios::binary);
  *found = static_cast<bool>(f);
  if (!f) return "";
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

ChatTemplate ChatTemplate::load(const std::string& dir) {
  LMT_CHECK(std::filesystem::is_directory(dir), "[chat_template] model folder ", dir, " does not exist");
  Tokenizer t = Tokenizer::load(dir);
  bool found = false;
  std::string cfg = read_text(dir + "/tokenizer_config.json", &found);
  return ChatTemplate(std::move(t), cfg, dir);
}

ChatTemplate::ChatTemplate(Tokenizer tokenizer, const std::string& config_json, const std::string& source)
    : tokenizer_(std::move(tokenizer)), source_(source), cache_(std::make_shared<Cache>()) {
  if (config_json.empty()) return;
  ojson cfg;
  try {
    // added_tokens_decoder is not read here, and is most of a large config (Gemma 3's 6k tokens):
    // ordered_json inserts a member in linear time, so building it took ~0.1 s.
    cfg = ojson::parse(config_json, [](int depth, ojson::parse_event_t event, ojson& parsed) {
      return !(depth == 1 && event == ojson::parse_event_t::key && parsed == "added_tokens_decoder");
    });
  } catch (const nlohmann::json::exception& e) {
    fail("[chat_template] cannot parse ", source, "/tokenizer_config.json: ", e.what());
  }
  special_tokens_ = special_tokens_from_config(cfg);
}

const std::string& ChatTemplate::select_template(const ChatTemplateOptions& o) const {
  const auto& templates = tokenizer_.chat_templates();
  if (!o.chat_template.empty()) {
    auto it = templates.find(o.chat_template);
    return it != templates.end() ? it->second : o.chat_template;
  }
  LMT_CHECK(!templates.empty(),
            "[chat_template] cannot use chat template functions because tokenizer.chat_template is not set: ", source_,
            " has no chat template (no chat_template in its tokenizer_config.json and no chat_template.jinja), "
            "and no template was passed");
  if (!o.tools.is_null()) {
    auto it = templates.find("tool_use");
    if (it != templates.end()) return it->second;
  }
  auto it = templates.find("default");
  if (it == templates.end()) {
    std::string names;
    for (const auto& [k, v] : templates) names += (names.empty() ? "" : ", ") + k;
    fail("[chat_template] ", source_, " has several chat templates and none named 'default': pass one of [", names,
         "] as chat_template");
  }
  return it->second;
}

std::string ChatTemplate::render(const ojson& conversation, const ChatTemplateOptions& o) const {
  const std::string& source = select_template(o);
  LMT_CHECK(conversation.is_array(), "[chat_template] the conversation must be a list of messages, got ",
            conversation.type_name());
  LMT_CHECK(!conversation.empty(),
            "[chat_template] cannot apply chat template to an empty conversation. Provide at least one message.");
  LMT_CHECK(o.continue_final_message.empty() || !o.add_generation_prompt,
            "[chat_template] continue_final_message and add_generation_prompt are not compatible");
  LMT_CHECK(o.tools.is_null() || o.tools.is_array(), "[chat_template] tools must be a list of JSON schemas, got ",
            o.tools.type_name());
  if (!o.tools.is_null())
    for (const auto& t : o.tools)
      LMT_CHECK(t.is_object(), "[chat_template] tools should be JSON schemas (objects), got ", t.dump());
  LMT_CHECK(o.documents.is_null() || o.documents.is_array(), "[chat_template] documents must be a list, got ",
            o.documents.type_name());
  if (!o.documents.is_null())
    for (const auto& d : o.documents)
      LMT_CHECK(d.is_object(), "[chat_template] documents should be a list of dicts with 'title' and 'text' keys");
  LMT_CHECK(o.kwargs.is_object() || o.kwargs.is_null(), "[chat_template] kwargs must be a JSON object");

  // _normalize_chat_messages, then _alias_reasoning_fields.
  ojson chat = ojson::array();
  for (const auto& m : conversation) {
    LMT_CHECK(m.is_object(), "[chat_template] chat messages should be objects, got ", m.dump());
    ojson clean = ojson::object();
    for (auto it = m.begin(); it != m.end(); ++it)
      if (!it.value().is_null()) clean[it.key()] = it.value();
    chat.push_back(alias_reasoning(clean));
  }

  static const std::string kTag = "CONTINUE_FINAL_MESSAGE_TAG ";
  std::string final_text;
  const std::string& field = o.continue_final_message;
  if (!field.empty()) {
    ojson& last = chat.back();
    LMT_CHECK(last.contains(field), "[chat_template] continue_final_message is set but the final message has no \"",
              field, "\" to continue");
    ojson final_message = last[field];
    std::vector<std::string> fields{field};
    if (is_reasoning_field(field)) {
      fields.clear();
      for (const char* f : kReasoningFields)
        if (last.contains(f) && last[f] == final_message) fields.push_back(f);
    }
    bool accepted = false;
    for (const auto& f : fields) accepted = accepted || source.find(f) != std::string::npos;
    LMT_CHECK(accepted, "[chat_template] continue_final_message is set to \"", field,
              "\" but this is not an accepted field in the chat_template");
    if (final_message.is_array()) {
      bool done = false;
      for (auto it = last[field].rbegin(); it != last[field].rend() && !done; ++it)
        if (it->is_object() && it->contains("text") && (*it)["text"].is_string()) {
          final_text = (*it)["text"].get<std::string>();
          (*it)["text"] = final_text + kTag;
          done = true;
        }
      LMT_CHECK(done,
                "[chat_template] continue_final_message is set but there is no text to continue in the final "
                "message");
    } else {
      LMT_CHECK(final_message.is_string(), "[chat_template] continue_final_message: the final message's \"", field,
                "\" must be text, got ", final_message.type_name());
      final_text = final_message.get<std::string>();
      for (const auto& f : fields) last[f] = last[f].get<std::string>() + kTag;
    }
  }

  ojson ctx = ojson::object();
  ctx["messages"] = std::move(chat);
  ctx["tools"] = o.tools;
  ctx["documents"] = o.documents;
  ctx["add_generation_prompt"] = o.add_generation_prompt;
  for (auto it = special_tokens_.begin(); it != special_tokens_.end(); ++it) ctx[it.key()] = it.value();
  if (o.kwargs.is_object())
    for (auto it = o.kwargs.begin(); it != o.kwargs.end(); ++it) ctx[it.key()] = it.value();

  jinja::Template tmpl;
  std::string rendered;
  try {
    {
      std::lock_guard<std::mutex> lock(cache_->mu);
      auto it = cache_->parsed.find(source);
      if (it == cache_->parsed.end()) it = cache_->parsed.emplace(source, jinja::Template::parse(source)).first;
      tmpl = it->second;
    }
    rendered = tmpl.render(ctx);
  } catch (const Error& e) {
    // name the template's folder: the template may come from a stranger's model
    std::string msg = e.what();
    if (msg.rfind("[jinja]", 0) != 0 || source_.empty()) throw;
    fail("[chat_template] chat template of ", source_, ": ", msg);
  }

  if (!field.empty()) {
    std::string tag = py_strip(kTag);
    size_t tag_loc = rendered.rfind(tag);
    LMT_CHECK(rendered.find(py_strip(final_text)) != std::string::npos && tag_loc != std::string::npos,
              "[chat_template] continue_final_message is set but the final message does not appear in the chat "
              "after applying the chat template (the template deletes part of it)");
    if (rendered.compare(tag_loc, kTag.size(), kTag) == 0)
      rendered.resize(tag_loc);
    else
      rendered = py_rstrip(rendered.substr(0, tag_loc));
  }
  return rendered;
}

std::vector<int32_t> ChatTemplate::encode(const ojson& conversation, const ChatTemplateOptions& options) const {
  return tokenizer_.encode(render(conversation, options), /*add_special_tokens=*/false);
}

}  // namespace lmtune
