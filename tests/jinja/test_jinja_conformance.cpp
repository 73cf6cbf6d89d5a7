// Conformance: every template x conversation case rendered by Python's jinja2 the way
// transformers sets it up (tests/ref/jinja_ref.py) must render byte-identically here, and a
// case that raises there must raise here (with raise_exception's message).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "tokenizer/jinja/jinja.h"

using lmtune::jinja::Template;
using json = nlohmann::ordered_json;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string show_diff(const std::string& want, const std::string& got) {
  size_t k = 0;
  while (k < want.size() && k < got.size() && want[k] == got[k]) ++k;
  size_t from = k > 60 ? k - 60 : 0;
  return "first difference at byte " + std::to_string(k) + "\n  want: " + json(want.substr(from, 160)).dump() +
         "\n  got:  " + json(got.substr(from, 160)).dump();
}

TEST(JinjaConformance, MatchesPythonJinja2) {
  const char* dir = std::getenv("LMTUNE_JINJA_REF_DIR");
  if (!dir) GTEST_SKIP() << "LMTUNE_JINJA_REF_DIR not set (made by jinja_make_references)";
  json ref = json::parse(read_file(std::string(dir) + "/cases.json"));
  std::map<std::string, Template> templates;
  size_t n_ok = 0, n_raise = 0;
  std::map<std::string, int> per_template;
  for (const auto& c : ref["cases"]) {
    const std::string name = c["name"].get<std::string>();
    const std::string path = c["template"].get<std::string>();
    per_template[name.substr(0, name.find('/'))]++;
    auto it = templates.find(path);
    if (it == templates.end()) {
      try {
        it = templates.emplace(path, Template::parse(read_file(path))).first;
      } catch (const lmtune::Error& e) {
        ADD_FAILURE() << name << ": parse failed: " << e.what();
        continue;
      }
    }
    std::string got, err;
    try {
      got = it->second.render(c["context"]);
    } catch (const lmtune::Error& e) {
      err = e.what();
    }
    if (c.contains("error")) {
      ++n_raise;
      EXPECT_FALSE(err.empty()) << name << ": jinja2 raised (" << c["error"].get<std::string>()
                                << ") but we rendered:\n"
                                << got;
      if (c["error_type"] == "TemplateError") {
        EXPECT_NE(err.find(c["error"].get<std::string>()), std::string::npos)
            << name << ": raise_exception message lost: " << err;
      }
    } else {
      ++n_ok;
      const std::string want = c["output"].get<std::string>();
      EXPECT_TRUE(err.empty()) << name << ": unexpected error: " << err;
      if (err.empty()) {
        EXPECT_TRUE(got == want) << name << ": " << show_diff(want, got);
      }
    }
  }
  std::cout << "jinja conformance: " << n_ok << " renders, " << n_raise << " raising cases over " << per_template.size()
            << " templates\n";
  EXPECT_GT(n_ok, 0u);
}

// Parse + render is on the training data path (once per example): keep it cheap.
TEST(JinjaConformance, RenderSpeed) {
  const char* dir = std::getenv("LMTUNE_JINJA_REF_DIR");
  if (!dir) GTEST_SKIP() << "LMTUNE_JINJA_REF_DIR not set";
  json ref = json::parse(read_file(std::string(dir) + "/cases.json"));
  const json* qwen = nullptr;
  for (const auto& c : ref["cases"])
    if (c["name"].get<std::string>().rfind("qwen3/tool_use/", 0) == 0 && !c.contains("error")) qwen = &c;
  ASSERT_NE(qwen, nullptr);
  std::string source = read_file((*qwen)["template"].get<std::string>());
  const auto& ctx = (*qwen)["context"];
  auto t0 = std::chrono::steady_clock::now();
  const int n = 300;
  size_t total = 0;
  for (int k = 0; k < n; ++k) total += Template::parse(source).render(ctx).size();
  double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / n;
  std::cout << "qwen3 tool_use parse+render: " << us << " us (" << total / n << " bytes)\n";
  EXPECT_LT(us, 20000.0);
}

}  // namespace
