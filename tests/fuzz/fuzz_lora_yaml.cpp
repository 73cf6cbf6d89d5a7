// A `lmtune lora -c config.yaml` file of arbitrary bytes: parsed by yaml-cpp, its size budget
// checked (aliases included), and merged into lora's option table as the CLI does (every key's
// type, lora_parameters, lr_schedule, optimizer_config, unknown keys kept), then recorded as
// adapter_config.json would be. A clear error is lmtune::Error or the CLI's UsageError.
#include "core/error.h"
#include "fuzz_target.h"
#include "lora_options.h"

LMTUNE_FUZZ_TARGET(lora_yaml) {
  using namespace lmtune::cli;
  static const std::string path = lmtune::fuzz::scratch_dir("lora_yaml") + "/config.yaml";
  lmtune::fuzz::write_file(path, {reinterpret_cast<const char*>(data), size});
  LoraOptions o;
  Options t("lora", "lmtune lora", "fuzz");
  declare_lora_options(t, o);
  std::string a0 = "lora", a1 = "-c", a2 = path;
  char* argv[] = {a0.data(), a1.data(), a2.data(), nullptr};
  try {
    t.parse(3, argv);
    nlohmann::json recorded = merge_lora_config(t, o);
    volatile size_t sink = recorded.dump().size();
    (void)sink;
  } catch (const UsageError&) {
  } catch (const lmtune::Error&) {
  }
  return 0;
}
