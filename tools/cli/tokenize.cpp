// `lmtune tokenize`: what a model sees. Encodes a prompt (or a conversation rendered through the
// chat template) with the model folder's tokenizer and prints ids, pieces, the text or JSON.
// Usage errors exit 2; load and encode errors exit 1 through main's handler.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "cli_commands.h"
#include "core/error.h"
#include "options.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace lmtune::cli {

namespace {

struct TokenizeOptions {
  std::string model, messages, chat_template_config;
  std::optional<std::string> prompt;
  bool add_generation_prompt = false, no_special = false, render = false, verbose = false, json = false;
};

void declare(Options& t, TokenizeOptions& o) {
  t.group("input");
  t.add("--model", &o.model, "DIR", "a local model or tokenizer folder");
  t.add("--prompt", &o.prompt, "TEXT", "the text to encode; '-' reads it from stdin (byte for byte)");
  t.add("--messages", &o.messages, "FILE.json",
        "an OpenAI-style list of messages (or {\"messages\": [...], \"tools\": [...]}), rendered through the "
        "chat template, then encoded without special tokens");
  t.add("--add-generation-prompt", &o.add_generation_prompt, "",
        "end the rendered conversation with the assistant header");
  t.add("--chat-template-config", &o.chat_template_config, "JSON",
        "extra template variables, e.g. '{\"enable_thinking\": false}'");
  t.add("--no-special", &o.no_special, "", "encode --prompt without the post-processor's special tokens (BOS, ...)");
  t.group("output (default: ids on one line)");
  t.add("--render", &o.render, "", "print the rendered text instead of ids");
  t.add("--verbose", &o.verbose, "", "one line per token: id, tab, piece (non-printable bytes escaped)");
  t.add("--json", &o.json, "", "{\"ids\": [...], \"tokens\": [...], \"text\": ...}");
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

int tokenize(const TokenizeOptions& o) {
  const std::string& model = o.model;
  const std::string& messages_path = o.messages;
  const std::string& template_config = o.chat_template_config;
  const bool have_prompt = o.prompt.has_value(), render_only = o.render, verbose = o.verbose, json = o.json;
  if (model.empty()) throw UsageError("--model is required");
  if (have_prompt == !messages_path.empty()) throw UsageError("give exactly one of --prompt and --messages");
  if (render_only + verbose + json > 1) throw UsageError("--render, --verbose and --json exclude each other");
  if (have_prompt && (o.add_generation_prompt || !template_config.empty()))
    throw UsageError("--add-generation-prompt and --chat-template-config apply to --messages only");

  ChatTemplate chat = ChatTemplate::load(model);
  const Tokenizer& tok = chat.tokenizer();
  std::string text;
  std::vector<int32_t> ids;
  if (have_prompt) {
    if (*o.prompt == "-") {
      std::ostringstream ss;
      ss << std::cin.rdbuf();
      text = ss.str();
    } else {
      text = *o.prompt;
    }
    if (!render_only) ids = tok.encode(text, !o.no_special);
  } else {
    nlohmann::ordered_json doc = read_json_file(messages_path, "--messages");
    ChatTemplateOptions opts;
    opts.add_generation_prompt = o.add_generation_prompt;
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
        throw UsageError(std::string("--chat-template-config is not JSON: ") + e.what());
      }
      if (!opts.kwargs.is_object()) throw UsageError("--chat-template-config must be a JSON object");
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

}  // namespace

int run_tokenize(int argc, char** argv) {
  TokenizeOptions o;
  Options t("tokenize", "lmtune tokenize --model DIR (--prompt TEXT | --prompt - | --messages FILE.json) [options]",
            "Encode text with a model folder's tokenizer (tokenizer.json + tokenizer_config.json) and print the ids "
            "on one line, separated by spaces.");
  declare(t, o);
  try {
    if (!t.parse(argc, argv)) return 0;
    return tokenize(o);
  } catch (const UsageError& e) {
    // tokenize's wording from before the option table, which tests/ref/tokenize_cli_check.py
    // looks for, with argparse's message after it.
    std::string msg = e.what();
    if (e.kind == UsageError::unknown_argument) msg = "unknown argument '" + e.arg + "' (" + msg + ")";
    if (e.kind == UsageError::missing_value) msg = e.arg + " needs a value (" + msg + ")";
    std::fprintf(stderr, "lmtune tokenize: error: %s (see lmtune tokenize --help)\n", msg.c_str());
    return 2;
  }
}

}  // namespace lmtune::cli
