// apply_chat_template conformance: rendered text and ids equal transformers' AutoTokenizer
// apply_chat_template on the npm tokenizer folders (references from tests/ref/chat_template_ref.py,
// LMTUNE_CHAT_REF_DIR + LMTUNE_CHAT_CASE), and refused inputs refused; plus reference-free unit tests.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/chat_template.h"

namespace {

using lmtune::ChatTemplate;
using lmtune::ChatTemplateOptions;
using lmtune::Tokenizer;
using ojson = nlohmann::ordered_json;

std::string env(const char* k) {
  const char* v = std::getenv(k);
  return v ? v : "";
}

// The reference's apply_chat_template keyword arguments as ChatTemplateOptions.
ChatTemplateOptions to_options(const ojson& o) {
  ChatTemplateOptions opts;
  for (auto it = o.begin(); it != o.end(); ++it) {
    const std::string& k = it.key();
    const ojson& v = it.value();
    if (k == "add_generation_prompt")
      opts.add_generation_prompt = v.get<bool>();
    else if (k == "continue_final_message")
      opts.continue_final_message = v.is_string() ? v.get<std::string>() : (v.get<bool>() ? "content" : "");
    else if (k == "tools")
      opts.tools = v;
    else if (k == "documents")
      opts.documents = v;
    else if (k == "chat_template")
      opts.chat_template = v.get<std::string>();
    else
      opts.kwargs[k] = v;
  }
  return opts;
}

// What our message must contain for each kind of refusal transformers gave.
std::string expected_fragment(const std::string& hf_error) {
  if (hf_error.find("chat_template is not set") != std::string::npos) return "tokenizer.chat_template is not set";
  if (hf_error.find("are not compatible") != std::string::npos) return "are not compatible";
  const std::string te = "TemplateError: ";
  if (hf_error.rfind(te, 0) == 0) return hf_error.substr(te.size());
  return "";
}

TEST(ChatTemplate, MatchesTransformers) {
  std::string dir = env("LMTUNE_CHAT_REF_DIR"), name = env("LMTUNE_CHAT_CASE");
  if (dir.empty() || name.empty()) GTEST_SKIP() << "LMTUNE_CHAT_REF_DIR / LMTUNE_CHAT_CASE not set";
  std::ifstream f(dir + "/" + name + ".json");
  ASSERT_TRUE(f.good()) << "no reference " << dir << "/" << name << ".json";
  ojson ref = ojson::parse(f);
  const std::string folder = ref["folder"].get<std::string>();
  ChatTemplate ct = ChatTemplate::load(folder);
  EXPECT_EQ(ct.special_tokens(), ref["special_tokens"]) << "special tokens passed to the template";
  int checked = 0;
  for (const auto& c : ref["cases"]) {
    const std::string cname = c["name"].get<std::string>();
    SCOPED_TRACE(name + " / " + cname);
    ChatTemplateOptions opts = to_options(c["options"]);
    if (c.contains("error")) {
      const std::string hf = c["error"].get<std::string>();
      try {
        std::string got = ct.render(c["conversation"], opts);
        ADD_FAILURE() << "rendered although transformers refused (" << hf << "):\n" << got;
      } catch (const lmtune::Error& e) {
        std::string frag = expected_fragment(hf), msg = e.what();
        EXPECT_NE(msg.find(frag), std::string::npos) << "message: " << msg << "\ntransformers: " << hf;
        if (frag == "tokenizer.chat_template is not set") {
          EXPECT_NE(msg.find(folder), std::string::npos) << "the error must name the folder: " << msg;
        }
      }
      ++checked;
      continue;
    }
    std::string text;
    ASSERT_NO_THROW(text = ct.render(c["conversation"], opts));
    EXPECT_EQ(text, c["text"].get<std::string>());
    std::vector<int32_t> ids = ct.encode(c["conversation"], opts);
    EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>());
    ++checked;
  }
  EXPECT_GT(checked, 0);
  std::printf("%s: %d cases checked against transformers\n", name.c_str(), checked);
}

// A tiny byte-level tokenizer is enough for the reference-free checks below.
ChatTemplate tiny(const std::string& config) {
  // Byte-level alphabet: printable ASCII maps to itself, enough for the texts used here.
  ojson v = ojson::object();
  int id = 0;
  for (char ch = ' ' + 1; ch <= '~'; ++ch) v[std::string(1, ch)] = id++;
  v["\xc4\xa0"] = id++;  // "Ġ" (space)
  v["\xc4\x8a"] = id++;  // "Ċ" (newline)
  ojson tj = {
      {"version", "1.0"},
      {"added_tokens", ojson::array({{{"id", id},
                                      {"content", "<eos>"},
                                      {"single_word", false},
                                      {"lstrip", false},
                                      {"rstrip", false},
                                      {"normalized", false},
                                      {"special", true}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"vocab", v},
        {"merges", ojson::array()}}}};
  return ChatTemplate(Tokenizer::from_json(tj.dump(), config), config, "tiny-folder");
}

const char kEcho[] =
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}";

TEST(ChatTemplate, NamedTemplatesSelection) {
  ojson cfg = {{"eos_token", "<eos>"},
               {"chat_template", ojson::array({{{"name", "default"}, {"template", "D{{ messages|length }}"}},
                                               {{"name", "tool_use"}, {"template", "T{{ tools|length }}"}}})}};
  ChatTemplate ct = tiny(cfg.dump());
  ojson conv = ojson::array({{{"role", "user"}, {"content", "hi"}}});
  EXPECT_EQ(ct.render(conv), "D1");
  ChatTemplateOptions o;
  o.tools = ojson::array({{{"type", "function"}}});
  EXPECT_EQ(ct.render(conv, o), "T1");
  o = {};
  o.chat_template = "tool_use";
  EXPECT_THROW(ct.render(conv, o), lmtune::Error);  // tools is None: `None|length` fails as in jinja2
  o.chat_template = "X{{ eos_token }}";             // not a name: a template source
  EXPECT_EQ(ct.render(conv, o), "X<eos>");
}

TEST(ChatTemplate, NoDefaultAmongSeveral) {
  ojson cfg = {
      {"chat_template", ojson::array({{{"name", "a"}, {"template", "A"}}, {{"name", "b"}, {"template", "B"}}})}};
  ChatTemplate ct = tiny(cfg.dump());
  try {
    ct.render(ojson::array({{{"role", "user"}, {"content", "x"}}}));
    FAIL() << "expected an error";
  } catch (const lmtune::Error& e) {
    EXPECT_NE(std::string(e.what()).find("[a, b]"), std::string::npos) << e.what();
  }
}

TEST(ChatTemplate, RefusedInputs) {
  ojson cfg = {{"eos_token", "<eos>"}, {"chat_template", kEcho}};
  ChatTemplate ct = tiny(cfg.dump());
  EXPECT_THROW(ct.render(ojson::array()), lmtune::Error);               // empty conversation
  EXPECT_THROW(ct.render(ojson::object()), lmtune::Error);              // not a list
  EXPECT_THROW(ct.render(ojson::array({"just text"})), lmtune::Error);  // message not an object
  ChatTemplateOptions o;
  o.continue_final_message = "content";
  o.add_generation_prompt = true;
  ojson conv = ojson::array({{{"role", "user"}, {"content", "x"}}});
  EXPECT_THROW(ct.render(conv, o), lmtune::Error);
  o.add_generation_prompt = false;
  o.continue_final_message = "reasoning_content";  // no such field in the final message
  EXPECT_THROW(ct.render(conv, o), lmtune::Error);
  o = {};
  o.tools = "not a list";
  EXPECT_THROW(ct.render(conv, o), lmtune::Error);
  EXPECT_THROW(ChatTemplate::load("/nonexistent/model"), lmtune::Error);
}

TEST(ChatTemplate, ContinueFinalMessageAndCache) {
  ojson cfg = {{"eos_token", "<eos>"}, {"chat_template", kEcho}};
  ChatTemplate ct = tiny(cfg.dump());
  ojson conv = ojson::array({{{"role", "user"}, {"content", "x"}}, {{"role", "assistant"}, {"content", "Sure, "}}});
  ChatTemplateOptions o;
  o.continue_final_message = "content";
  EXPECT_EQ(ct.render(conv, o), "<user>x<eos><assistant>Sure, ");
  ChatTemplate copy = ct;  // copies share the parsed-template cache
  EXPECT_EQ(copy.render(conv, o), ct.render(conv, o));
  EXPECT_EQ(ct.render(conv), "<user>x<eos><assistant>Sure, <eos>");
  // Keys with null values are dropped before rendering, as HF does.
  ojson with_null = ojson::array({{{"role", "user"}, {"content", "x"}, {"name", nullptr}}});
  ChatTemplateOptions t;
  t.chat_template = "{{ messages[0]|length }}";
  EXPECT_EQ(ct.render(with_null, t), "2");
}

}  // namespace
