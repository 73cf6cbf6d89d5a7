// The one lmtune binary: dispatches `lmtune <command> ...` to a command's entry point.
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "backend/backend.h"
#include "cli_commands.h"
#include "core/runtime_config.h"

namespace {

struct Command {
  const char* name;
  const char* summary;
  int (*run)(int argc, char** argv);
};

const Command kCommands[] = {
    {"inspect", "Print a model folder's configuration and tensors", lmtune::cli::run_inspect},
    {"generate", "Generate text from a prompt", lmtune::cli::run_generate},
    {"cache_prompt", "Save a prompt's KV cache for generate --prompt-cache-file (mlx_lm.cache_prompt)",
     lmtune::cli::run_cache_prompt},
    {"chat", "Chat with a model in the terminal (persistent KV cache)", lmtune::cli::run_chat},
    {"lora", "Fine-tune a model with LoRA, DoRA or full fine-tuning (mlx_lm.lora)", lmtune::cli::run_lora},
    {"convert", "Convert, quantize (-q) or dequantize (-d) a model into MLX's format (mlx_lm.convert)",
     lmtune::cli::run_convert},
    {"fuse", "Fuse LoRA, DoRA or full fine-tuning adapters into the base model (mlx_lm.fuse)", lmtune::cli::run_fuse},
    {"export-peft", "Write a LoRA / DoRA adapter folder as a Hugging Face PEFT adapter", lmtune::cli::run_export_peft},
    {"gguf", "Write a model, or its LoRA adapter, as a GGUF file for llama.cpp", lmtune::cli::run_gguf},
    {"perplexity", "Evaluate a model's perplexity on a dataset (mlx_lm.perplexity)", lmtune::cli::run_perplexity},
    {"benchmark", "Measure prompt and generation tokens/s on random tokens", lmtune::cli::run_benchmark},
    {"tokenize", "Encode a prompt or a chat conversation and print the token ids", lmtune::cli::run_tokenize},
    {"server", "Serve a model over an OpenAI-compatible HTTP API (mlx_lm.server)", lmtune::cli::run_server},
    {"manage", "List (--scan) or delete (--delete) models in the Hugging Face cache", lmtune::cli::run_manage},
};

void print_help() {
  std::printf(
      "usage: lmtune <command> [options]\n\n"
      "Fine-tune and run open language models on your own machine (CPU or NVIDIA GPU),\n"
      "with mlx-lm's commands, flags and file formats.\n\ncommands:\n");
  for (const Command& c : kCommands) std::printf("  %-12s %s\n", c.name, c.summary);
  std::printf(
      "\noptions:\n  -h, --help     show this help\n  --version      print the version and the backends\n"
      "\nRun `lmtune <command> --help` for a command's options.\n");
}

}  // namespace

int main(int argc, char** argv) {
  // A file size limit (`ulimit -f`) would otherwise kill the process with SIGXFSZ in the middle of a
  // save, leaving a temp file and no message; ignored, the write fails with EFBIG and the atomic
  // writer removes its temp file and reports it (the previous file stays in place).
  std::signal(SIGXFSZ, SIG_IGN);
  if (argc < 2 || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "help")) {
    print_help();
    return argc < 2 ? 1 : 0;
  }
  if (!std::strcmp(argv[1], "--version")) {
    std::printf("lmtune %s\n", LMTUNE_VERSION);
    std::string gpu = lmtune::cuda_available() ? lmtune::cuda_device_name() : std::string("none");
    std::printf("backends: cpu, cuda (device: %s)\n", gpu.c_str());
    return 0;
  }
  for (const Command& c : kCommands) {
    if (!std::strcmp(argv[1], c.name)) {
      try {
        // The kernel switches (LMTUNE_CUDA_*) are read here, once: a bad value stops the command
        // before any work, on any device.
        (void)lmtune::runtime_config();
        return c.run(argc - 1, argv + 1);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "lmtune %s: error: %s\n", c.name, e.what());
        return 1;
      }
    }
  }
  std::fprintf(stderr, "lmtune: unknown command '%s'\n\n", argv[1]);
  print_help();
  return 2;
}
