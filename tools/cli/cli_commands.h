// Entry points of the subcommands; each takes argv with argv[0] = the command name.
#pragma once

namespace lmtune::cli {

int run_inspect(int argc, char** argv);
int run_tokenize(int argc, char** argv);
int run_generate(int argc, char** argv);
int run_cache_prompt(int argc, char** argv);
int run_chat(int argc, char** argv);
int run_benchmark(int argc, char** argv);
int run_manage(int argc, char** argv);
int run_lora(int argc, char** argv);
// lora --gpus N: N ranks of `lmtune lora ARGV...` on this node, with torchrun's variables (lora_launch.cpp).
int launch_local_ranks(int n, int argc, char** argv);
int run_convert(int argc, char** argv);
int run_fuse(int argc, char** argv);
int run_gguf(int argc, char** argv);
int run_perplexity(int argc, char** argv);
int run_export_peft(int argc, char** argv);
int run_server(int argc, char** argv);

}  // namespace lmtune::cli
