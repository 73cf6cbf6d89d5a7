// `lmtune tokenize`: what a model sees. Encodes a prompt (or a conversation rendered through the
// chat template) with the model folder's tokenizer and prints ids, pieces, the text or JSON.
// Usage errors exit 2; load and encode errors exit 1 through main's handler.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "cli_commands.h"
#include "core/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace lmtune::cli {

namespace {

const char kUsage[] =
    "usage: lmtune tokenize --model DIR (--prompt TEXT | --prompt - | --messages FILE.json) [options]\n"
    "\n"
    "Encode text with a model folder's tokenizer (tokenizer.json + tokenizer_config.json) and print the\n"
    "ids on one line, separated by spaces.\n"
    "\n"
    "input:\n"
    "  --model DIR                 a local model or tokenizer folder\n"
    "  --prompt TEXT               the text to encode; '-' reads it from stdin (byte for byte)\n"
    "  --messages FILE.json        an OpenAI-style list of messages (or {\"messages\": [...], \"tools\": [...]}),\n"
    "                              rendered through the chat template, then encoded without special tokens\n"
    "  --add-generation-prompt     end the rendered conversation with the assistant header\n"
    "  --chat-template-config JSON extra template variables, e.g. '{\"enable_thinking\": false}'\n"
    "  --no-special                encode --prompt without the post-processor's special tokens (BOS, ...)\n"
    "\n"
    "output (default: ids on one line):\n"
    "  --render                    print the rendered text instead of ids\n"
    "  --verbose                   one line per token: id, tab, piece (non-printable bytes escaped)\n"
    "  --json                      {\"ids\": [...], \"tokens\": [...], \"text\": ...}\n"
    "  -h, --help                  show this help\n";

int usage_error(const std::string& msg) {
  std::fprintf(stderr, "lmtune tokenize: error: %s (see lmtune tokenize --help)\n", msg.c_str());
  return 2;
}

// Control bytes and backslash escaped; UTF-8 above U+007F kept as is.
std::string escape_piece(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    switch (c) {
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      case '\\': out += "\\\\"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\x%02x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out;
}

nlohmann::ordered_json read_json_file(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  LMT_CHECK(f, "cannot open ", what, " file ", path);
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  try {
    return nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("cannot parse ", what, " file ", path, " as JSON: ", e.what());
  }
}

}  // namespace

int run_tokenize(int argc, char** argv) {
  std::string model, prompt, messages_path, template_config;
  bool have_prompt = false, add_generation_prompt = false, no_special = false;
  bool render_only = false, verbose = false, json = false;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    auto value = [&](std::string& out) {
      if (i + 1 >= argc) return false;
      out = argv[++i];
      return true;
    };
    if (!std::strcmp(a, "-h") || !std::strcmp(a, "--help")) {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (!std::strcmp(a, "--model")) {
      if (!value(model)) return usage_error("--model needs a folder");
    } else if (!std::strcmp(a, "--prompt")) {
      if (!value(prompt)) return usage_error("--prompt needs a text or '-'");
      have_prompt = true;
    } else if (!std::strcmp(a, "--messages")) {
      if (!value(messages_path)) return usage_error("--messages needs a JSON file");
    } else if (!std::strcmp(a, "--chat-template-config")) {
      if (!value(template_config)) return usage_error("--chat-template-config needs a JSON object");
    } else if (!std::strcmp(a, "--add-generation-prompt")) {
      add_generation_prompt = true;
    } else if (!std::strcmp(a, "--no-special")) {
      no_special = true;
    } else if (!std::strcmp(a, "--render")) {
      render_only = true;
    } else if (!std::strcmp(a, "--verbose")) {
      verbose = true;
    } else if (!std::strcmp(a, "--json")) {
      json = true;
    } else {
      return usage_error(std::string("unknown argument '") + a + "'");
    }
  }
  if (model.empty()) return usage_error("--model is required");
  if (have_prompt == !messages_path.empty()) return usage_error("give exactly one of --prompt and --messages");
  if (render_only + verbose + json > 1) return usage_error("--render, --verbose and --json exclude each other");
  if (have_prompt && (add_generation_prompt || !template_config.empty()))
    return usage_error("--add-generation-prompt and --chat-template-config apply to --messages only");

  ChatTemplate chat = ChatTemplate::load(model);
  const Tokenizer& tok = chat.tokenizer();
  std::string text;
  std::vector<int32_t> ids;
  if (have_prompt) {
    if (prompt == "-") {
      std::ostringstream ss;
      ss << std::cin.rdbuf();
      text = ss.str();
    } else {
      text = prompt;
    }
    if (!render_only) ids = tok.encode(text, !no_special);
  } else {
    nlohmann::ordered_json doc = read_json_file(messages_path, "--messages");
    ChatTemplateOptions opts;
    opts.add_generation_prompt = add_generation_prompt;
    nlohmann::ordered_json messages = doc;
    if (doc.is_object()) {
      LMT_CHECK(doc.contains("messages"), "--messages file ", messages_path,
                " is an object without \"messages\": expected a list of messages or {\"messages\": [...]}");
      messages = doc["messages"];
      if (doc.contains("tools")) opts.tools = doc["tools"];
    }
    LMT_CHECK(messages.is_array(), "--messages file ", messages_path, " must hold a list of messages, got ",
              messages.type_name());
    if (!template_config.empty()) {
      try {
        opts.kwargs = nlohmann::ordered_json::parse(template_config);
      } catch (const nlohmann::json::exception& e) {
        return usage_error(std::string("--chat-template-config is not JSON: ") + e.what());
      }
      if (!opts.kwargs.is_object()) return usage_error("--chat-template-config must be a JSON object");
    }
    text = chat.render(messages, opts);
    if (!render_only) ids = tok.encode(text, /*add_special_tokens=*/false);  // as HF's apply_chat_template
  }

  if (render_only) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
  }
  nlohmann::ordered_json tokens = nlohmann::ordered_json::array();
  for (int32_t id : ids) tokens.push_back(tok.id_to_token(id).value_or(""));
  if (json) {
    nlohmann::ordered_json j = {{"ids", ids}, {"tokens", tokens}, {"text", text}};
    std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else if (verbose) {
    for (size_t k = 0; k < ids.size(); ++k)
      std::printf("%d\t%s\n", ids[k], escape_piece(tokens[k].get<std::string>()).c_str());
  } else {
    for (size_t k = 0; k < ids.size(); ++k) std::printf(k ? " %d" : "%d", ids[k]);
    std::printf("\n");
  }
  return 0;
}

}  // namespace lmtune::cli
