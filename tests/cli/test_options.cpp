// The option table (tools/cli/options.h): argparse's command-line forms and messages, typed YAML
// reads whose errors name key and value, command line > config > default, JSON records, --help.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "options.h"

namespace lmtune::cli {
namespace {

struct Sub {
  int64_t rank = 8;
  float scale = 20.f;
};

struct Opts {
  int64_t batch_size = 4;
  double learning_rate = 1e-5;
  bool train = false, verbose = true;
  std::string optimizer = "adam";
  std::string prompt = "hello";
  std::optional<std::string> resume;
  std::optional<int64_t> seed;
  std::vector<std::string> eos;
  int top_k = 0;
  Sub sub;
  std::string hidden;
};

// One table over Opts, as a command declares it.
struct Table {
  Opts o;
  Options t{"demo", "lmtune demo [options]", "A demo command."};
  Table() {
    t.add("--batch-size, -b", &o.batch_size, "N", "examples per step");
    t.add("--learning-rate", &o.learning_rate, "X", "step size");
    t.add("--train", &o.train, "", "do training");
    t.add("--verbose", &o.verbose, "BOOL", "print more").str2bool();
    t.add("--optimizer", &o.optimizer, "", "").choices({"adam", "sgd"});
    t.add("--prompt, -p", &o.prompt, "TEXT", "the prompt").cli_only();
    t.add("--resume", &o.resume, "DIR", "a checkpoint");
    t.add("--seed", &o.seed, "N", "RNG seed").default_text("random").record_when_set();
    t.add("--extra-eos-token", &o.eos, "T", "stop tokens").unrecorded();
    t.group("lmtune's additions");
    t.add("--top-k", &o.top_k, "K", "keep K");
    t.add_config_key("sub", "{rank, scale}", "nested", [this] {
       return nlohmann::json{{"rank", o.sub.rank}, {"scale", o.sub.scale}};
     }).on_yaml([this](const YAML::Node& n, const std::string& source) {
      Options s("demo", "", "");
      s.add("", &o.sub.rank, "", "").key("rank");
      s.add("", &o.sub.scale, "", "").key("scale");
      s.read_yaml(n, source, "sub.");
    });
    t.add("", &o.hidden, "NAME", "config only").key("hidden_key");
  }
  bool parse(std::vector<std::string> args) {
    args.insert(args.begin(), "demo");
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    return t.parse(int(argv.size()), argv.data());
  }
  nlohmann::json yaml(const std::string& text) { return t.read_yaml(YAML::Load(text), "c.yaml"); }
};

std::string usage_error(Table& tb, std::vector<std::string> args) {
  try {
    tb.parse(std::move(args));
  } catch (const UsageError& e) {
    return e.what();
  }
  return "(no error)";
}

std::string config_error(Table& tb, const std::string& text) {
  try {
    tb.yaml(text);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Options, CommandLineForms) {
  Table tb;
  ASSERT_TRUE(tb.parse({"--batch-size", "8", "--learning-rate=3e-4", "--train", "-p=hi there", "--verbose", "F",
                        "--extra-eos-token", "a", "7", "--optimizer", "sgd", "--seed", "-3", "--top-k", "-1"}));
  EXPECT_EQ(tb.o.batch_size, 8);
  EXPECT_DOUBLE_EQ(tb.o.learning_rate, 3e-4);
  EXPECT_TRUE(tb.o.train);
  EXPECT_EQ(tb.o.prompt, "hi there");
  EXPECT_FALSE(tb.o.verbose);
  EXPECT_EQ(tb.o.eos, (std::vector<std::string>{"a", "7"}));
  EXPECT_EQ(tb.o.optimizer, "sgd");
  EXPECT_EQ(tb.o.seed, -3);
  EXPECT_EQ(tb.o.top_k, -1);
  Table last;  // a repeated flag: the last one wins, as argparse
  ASSERT_TRUE(last.parse({"-b", "2", "--batch-size", "5", "-p", "-"}));
  EXPECT_EQ(last.o.batch_size, 5);
  EXPECT_EQ(last.o.prompt, "-");
}

TEST(Options, ArgparseMessages) {
  Table a, b, c, d, e, f, g, h, i;
  EXPECT_EQ(usage_error(a, {"--batch-size", "x"}), "argument --batch-size/-b: invalid int value: 'x'");
  EXPECT_EQ(usage_error(b, {"--learning-rate", "fast"}), "argument --learning-rate: invalid float value: 'fast'");
  EXPECT_EQ(usage_error(c, {"--optimizer", "adamw"}),
            "argument --optimizer: invalid choice: 'adamw' (choose from 'adam', 'sgd')");
  EXPECT_EQ(usage_error(d, {"--bogus", "3", "--train", "--also"}), "unrecognized arguments: --bogus 3 --also");
  EXPECT_EQ(usage_error(e, {"--batch-size"}), "argument --batch-size/-b: expected one argument");
  EXPECT_EQ(usage_error(f, {"--train=1"}), "argument --train: ignored explicit argument '1'");
  EXPECT_EQ(usage_error(g, {"--verbose", "maybe"}), "argument --verbose: Boolean value expected, got 'maybe'");
  EXPECT_EQ(usage_error(h, {"--extra-eos-token", "--train"}),
            "argument --extra-eos-token: expected at least one argument");
  EXPECT_EQ(usage_error(i, {"--top-k", "99999999999"}), "argument --top-k: invalid int value: '99999999999'");
  Table k;  // config-only keys are no flags
  EXPECT_EQ(usage_error(k, {"--hidden-key", "x"}), "unrecognized arguments: --hidden-key x");
  Table kind;
  try {
    kind.parse({"--train", "--nope"});
    FAIL();
  } catch (const UsageError& err) {
    EXPECT_EQ(err.kind, UsageError::unknown_argument);
    EXPECT_EQ(err.arg, "--nope");
  }
}

TEST(Options, HelpListsEveryRowAndStops) {
  Table tb;
  testing::internal::CaptureStdout();
  EXPECT_FALSE(tb.parse({"--train", "--help", "--bogus"}));  // --help wins over a later error
  std::string help = testing::internal::GetCapturedStdout();
  EXPECT_EQ(help, tb.t.help());
  for (const char* s :
       {"usage: lmtune demo [options]", "-h, --help", "--batch-size, -b N", "examples per step (default: 4)",
        "--learning-rate X", "(default: 1e-05)", "--train ", "--verbose BOOL", "(default: True)",
        "--optimizer adam|sgd", "--prompt, -p TEXT", "--resume DIR", "(default: random)", "--extra-eos-token T [T ...]",
        "\nlmtune's additions:\n", "--top-k K", "sub: {rank, scale}", "hidden_key: NAME"})
    EXPECT_NE(help.find(s), std::string::npos) << s << "\n" << help;
}

TEST(Options, ConfigTypeErrorsNameKeyAndValue) {
  Table a, b, c, d, e, f, g, h;
  EXPECT_EQ(config_error(a, "batch_size: \"8\""),
            "[config] c.yaml: key 'batch_size' must be an integer, got \"8\" (quoted, so a string)");
  EXPECT_EQ(config_error(b, "learning_rate: abc"), "[config] c.yaml: key 'learning_rate' must be a number, got abc");
  EXPECT_EQ(config_error(c, "sub:\n  rank: x"), "[config] c.yaml: key 'sub.rank' must be an integer, got x");
  EXPECT_EQ(config_error(d, "optimizer: adamw"),
            "[config] c.yaml: key 'optimizer' must be one of 'adam', 'sgd', got adamw");
  EXPECT_EQ(config_error(e, "train: 2"), "[config] c.yaml: key 'train' must be true or false, got 2");
  EXPECT_EQ(config_error(f, "batch_size: 2.5"), "[config] c.yaml: key 'batch_size' must be an integer, got 2.5");
  EXPECT_EQ(config_error(g, "sub: [1, 2]"), "[config] c.yaml: key 'sub' must be a mapping, got a list");
  EXPECT_EQ(config_error(h, "- 1\n- 2"), "[config] c.yaml is not a mapping of keys to values");
}

TEST(Options, CommandLineOverConfigOverDefault) {
  Table tb;
  ASSERT_TRUE(tb.parse({"--batch-size", "3"}));
  nlohmann::json unknown = tb.yaml(
      "batch_size: 2\nlearning_rate: 1e-3\ntrain: yes\nresume: null\nsub: {scale: 2}\nhidden_key: x\n"
      "prompt: ignored\nmy_key: [1, two]\n");
  EXPECT_EQ(tb.o.batch_size, 3);               // the flag
  EXPECT_DOUBLE_EQ(tb.o.learning_rate, 1e-3);  // the config (1e-5 style floats as mlx-lm's loader)
  EXPECT_TRUE(tb.o.train);
  EXPECT_FALSE(tb.o.resume.has_value());
  EXPECT_EQ(tb.o.sub.rank, 8);  // the default under a nested key the config left out
  EXPECT_FLOAT_EQ(tb.o.sub.scale, 2.f);
  EXPECT_EQ(tb.o.hidden, "x");
  EXPECT_EQ(tb.o.prompt, "hello");  // cli_only: not a config key
  EXPECT_EQ(unknown, nlohmann::json::parse(R"({"prompt": "ignored", "my_key": [1, "two"]})"));
  // A config value the command line overrides is still checked.
  Table bad;
  ASSERT_TRUE(bad.parse({"--batch-size", "3"}));
  EXPECT_NE(config_error(bad, "batch_size: x").find("key 'batch_size' must be an integer, got x"), std::string::npos);
  // The record: every recorded row, seed only once given; eos and prompt never.
  nlohmann::json j = tb.t.to_json();
  EXPECT_EQ(j["batch_size"], 3);
  EXPECT_EQ(j["learning_rate"], 1e-3);
  EXPECT_TRUE(j["resume"].is_null());
  EXPECT_EQ(j["sub"]["scale"], 2.0);
  EXPECT_FALSE(j.contains("seed"));
  EXPECT_FALSE(j.contains("extra_eos_token"));
  Table seeded;
  ASSERT_TRUE(seeded.parse({"--seed", "5"}));
  EXPECT_EQ(seeded.t.to_json()["seed"], 5);
}

TEST(Options, YamlToJsonTypes) {
  nlohmann::json j = yaml_to_json(YAML::Load("a: 1\nb: 1e-5\nc: \"1\"\nd: on\ne: ~\nf: [x, 2]\ng: 2GB\n"));
  EXPECT_EQ(j, nlohmann::json::parse(R"({"a": 1, "b": 1e-5, "c": "1", "d": true, "e": null, "f": ["x", 2],
                                         "g": "2GB"})"));
}

// Nine levels of nine aliases: 9^9 (387M) scalars once expanded, from a 1 KB file.
std::string billion_laughs() {
  std::string doc = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n";
  for (int k = 1; k <= 9; ++k) {
    const std::string n = std::to_string(k), prev = std::to_string(k - 1);
    doc.append("a").append(n).append(": &a").append(n).append(" [*a").append(prev);
    for (int r = 1; r < 9; ++r) doc.append(", *a").append(prev);
    doc.append("]\n");
  }
  return doc;
}

TEST(Options, YamlAliasBomb) {
  YAML::Node root = YAML::Load(billion_laughs());
  try {
    check_yaml_size(root, "laughs.yaml");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[config] laughs.yaml: YAML document expands to more than"), std::string::npos)
        << e.what();
  }
  // ordinary documents, aliases included, pass
  check_yaml_size(YAML::Load("a: &x [1, 2]\nb: *x\nc: {d: 1e-5}\n"), "ok.yaml");
  std::string deep = std::string(300, '[') + std::string(300, ']');
  EXPECT_THROW(check_yaml_size(YAML::Load(deep), "deep.yaml"), Error);
}

TEST(Options, DefaultsShownAsPython) {
  EXPECT_EQ(show_default(0.0), "0.0");
  EXPECT_EQ(show_default(20.0), "20.0");
  EXPECT_EQ(show_default(1e-5), "1e-05");
  EXPECT_EQ(show_default(0.1f), "0.1");
  EXPECT_EQ(show_default(true), "True");
  EXPECT_EQ(show_default(nullptr), "");
  EXPECT_EQ(show_default(""), "");
}

}  // namespace
}  // namespace lmtune::cli
