"""Every lmtune command's options through the binary: argparse's refusals (unknown flag, bad int,
bad choice), config-file type errors naming key and value, command line > config > default in the
adapter_config.json of a 1-iteration training on models/default, --help listing every option
(mlx-lm's flags first), the --flag=value forms, and the repository's own YAML configs.

Usage: cli_check.py --lmtune BIN --root REPO --work DIR --case NAME
"""
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ref"))
from checks import FAILS, check, cli_case_args  # noqa: E402  (the shared failure list, tests/ref/checks.py)


def main():
    a, model, data = cli_case_args()

    def run(*args, stdin=None):
        p = subprocess.run([a.lmtune, *map(str, args)], capture_output=True, text=True, input=stdin, timeout=300)
        return p.returncode, p.stdout, p.stderr

    def refused(args, rc, *needles):
        got_rc, out, err = run(*args)
        check(got_rc == rc, f"{args}: exit {got_rc}, want {rc}\n{err}")
        for n in needles:
            check(n in err, f"{args}: stderr lacks {n!r}:\n{err}")

    def yaml(name, text):
        path = os.path.join(a.work, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    c = a.case
    if c == "unknown_flag":
        for cmd in ("generate", "chat", "benchmark", "lora", "inspect", "manage"):
            refused([cmd, "--bogus", "3"], 2, f"lmtune {cmd}: error: unrecognized arguments: --bogus 3")
        refused(["tokenize", "--bogus"], 2, "unknown argument '--bogus'", "unrecognized arguments: --bogus")
        # Options of one command are not another's; config-only keys are no flags.
        refused(["benchmark", "--temp", "0"], 2, "unrecognized arguments: --temp 0")
        refused(["lora", "--lora-parameters", "x"], 2, "unrecognized arguments: --lora-parameters x")
        refused(["lora", "--train=yes"], 2, "argument --train: ignored explicit argument 'yes'")
        refused(["generate", "--max-tokens"], 2, "argument --max-tokens/-m: expected one argument")
    elif c == "bad_int":
        refused(["lora", "--batch-size", "x"], 2, "argument --batch-size: invalid int value: 'x'")
        refused(["lora", "--iters", "1.5"], 2, "argument --iters: invalid int value: '1.5'")
        refused(["lora", "--learning-rate", "abc"], 2, "argument --learning-rate: invalid float value: 'abc'")
        refused(["generate", "-m", "ten"], 2, "argument --max-tokens/-m: invalid int value: 'ten'")
        refused(["benchmark", "-n", "x"], 2, "argument --num-trials/-n: invalid int value: 'x'")
        refused(["chat", "--seed", "s"], 2, "argument --seed: invalid int value: 's'")
        refused(["generate", "--verbose", "maybe"], 2, "argument --verbose: Boolean value expected, got 'maybe'")
    elif c == "bad_choice":
        refused(["lora", "--fine-tune-type", "qlora"], 2,
                "argument --fine-tune-type: invalid choice: 'qlora' (choose from 'lora', 'dora', 'full')")
        refused(["lora", "--optimizer", "lion"], 2,
                "argument --optimizer: invalid choice: 'lion' (choose from 'adam', 'adamw', 'muon', 'sgd', 'adafactor')")
        refused(["generate", "--model", model, "--device", "tpu"], 2,
                "argument --device: invalid choice: 'tpu' (choose from 'cpu', 'cuda')")
        refused(["chat", "--dtype", "int8"], 2, "argument --dtype: invalid choice: 'int8'")
    elif c == "yaml_types":
        for text, msg in [
            ('batch_size: "8"\n', "key 'batch_size' must be an integer, got \"8\""),
            ("learning_rate: abc\n", "key 'learning_rate' must be a number, got abc"),
            ("lora_parameters:\n  rank: x\n", "key 'lora_parameters.rank' must be an integer, got x"),
            ("lora_parameters: {keys: q_proj}\n", "key 'lora_parameters.keys' must be a list of strings, got q_proj"),
            ("fine_tune_type: qlora\n", "key 'fine_tune_type' must be one of 'lora', 'dora', 'full', got qlora"),
            ("mask_prompt: maybe\n", "key 'mask_prompt' must be true or false, got maybe"),
            ("optimizer_config: {adamw: 0.01}\n", "key 'optimizer_config.adamw' must be a mapping"),
            ("lr_schedule: {name: cosine_decay, arguments: [1e-3, 10], warmup: ten}\n",
             "key 'lr_schedule.warmup' must be an integer, got ten"),
            ("iters: 2\nbatch_size: 2.5\n", "key 'batch_size' must be an integer, got 2.5"),
        ]:
            path = yaml("c.yaml", text)
            refused(["lora", "-c", path, "--train"], 1, f"lmtune lora: error: [config] {path}: {msg}")
        # A wrong value is refused even where a flag overrides it.
        path = yaml("c.yaml", "batch_size: eight\n")
        refused(["lora", "-c", path, "--train", "--batch-size", "2"], 1, "key 'batch_size' must be an integer")
        refused(["lora", "-c", os.path.join(a.work, "absent.yaml"), "--train"], 1, "[config] ")
    elif c == "precedence":
        path = yaml("c.yaml", f"model: {model}\ndata: {data}\ntrain: true\ndevice: cpu\n"
                    "batch_size: 2\niters: 50\nlearning_rate: 2.0e-4\nnum_layers: 1\nval_batches: 1\n"
                    "steps_per_eval: 1000\nlora_parameters: {rank: 4}\noptimizer: adamw\n"
                    "optimizer_config: {adamw: {weight_decay: 0.05}}\nmy_note: kept\n")
        ad = os.path.join(a.work, "ad")
        rc, out, err = run("lora", "-c", path, "--iters", 1, "--batch-size", 3, "--adapter-path", ad)
        check(rc == 0 and "Starting training..., iters: 1" in out, out + err)
        check("config key 'my_note' is not an mlx_lm.lora key; kept in adapter_config.json only" in err, err)
        cfg = json.load(open(os.path.join(ad, "adapter_config.json")))
        want = {"iters": 1, "batch_size": 3,  # flags
                "learning_rate": 2e-4, "num_layers": 1, "optimizer": "adamw", "model": model, "device": "cpu",
                "my_note": "kept", "config": path,  # the config
                "steps_per_report": 10, "save_every": 100, "seed": 0, "fine_tune_type": "lora",
                "max_seq_length": 2048, "mask_prompt": False, "resume_adapter_file": None, "lr_schedule": None}
        for k, v in want.items():
            check(cfg.get(k, "absent") == v, f"adapter_config.json {k} = {cfg.get(k, 'absent')!r}, want {v!r}")
        check(cfg["lora_parameters"] == {"rank": 4, "dropout": 0.0, "scale": 20.0}, str(cfg["lora_parameters"]))
        check(cfg["optimizer_config"]["adamw"] == {"weight_decay": 0.05} and cfg["optimizer_config"]["adam"] == {},
              str(cfg["optimizer_config"]))
        check("dtype" not in cfg and "preview" not in cfg and "prompt_feature" not in cfg, str(sorted(cfg)))
        # Without a config every key holds mlx-lm's default (lora.py CONFIG_DEFAULTS).
        ad2 = os.path.join(a.work, "ad2")
        rc, out, err = run("lora", "--model", model, "--data", data, "--train", "--iters", 1, "--val-batches", 1,
                           "--num-layers", -1, "--device", "cpu", "--adapter-path", ad2)
        check(rc == 0, err)
        cfg = json.load(open(os.path.join(ad2, "adapter_config.json")))
        for k, v in {"batch_size": 4, "learning_rate": 1e-5, "num_layers": -1,
                     "steps_per_eval": 200, "test_batches": 500, "grad_accumulation_steps": 1, "optimizer": "adam",
                     "config": None, "clear_cache_threshold": 0, "report_to": None, "epochs": 0,
                     "grad_clip": 0.0}.items():
            check(cfg.get(k, "absent") == v, f"defaults: {k} = {cfg.get(k, 'absent')!r}, want {v!r}")
    elif c == "help":
        expect = {
            "generate": ["--model", "--adapter-path", "--prompt, -p", "--system-prompt", "--prefill-response",
                         "--max-tokens, -m", "--temp", "--top-p", "--min-p", "--top-k", "--min-tokens-to-keep",
                         "--xtc-probability", "--xtc-threshold", "--seed", "--ignore-chat-template",
                         "--chat-template-config", "--extra-eos-token", "--verbose", "--max-kv-size",
                         "--kv-bits", "--kv-group-size", "--quantized-kv-start", "--prompt-cache-file",
                         "--draft-model", "--num-draft-tokens", "lmtune's additions:", "--repetition-penalty",
                         "--repetition-context-size",
                         "--presence-penalty", "--frequency-penalty", "--prefill-step-size", "--device", "--dtype"],
            "cache_prompt": ["--model", "--adapter-path", "--prompt-cache-file", "--prompt", "--eos-token",
                             "--max-kv-size", "--kv-bits", "--kv-group-size", "--quantized-kv-start",
                             "lmtune's additions:", "--prefill-step-size", "--device", "--dtype"],
            "chat": ["--model", "--adapter-path", "--temp", "--top-p", "--xtc-probability", "--xtc-threshold",
                     "--seed", "--max-kv-size", "--max-tokens, -m", "--system-prompt", "lmtune's additions:",
                     "--chat-template-config", "--kv-bits", "--kv-group-size", "--quantized-kv-start", "--device",
                     "--dtype"],
            "benchmark": ["--model", "--prompt-tokens, -p", "--generation-tokens, -g", "--batch-size, -b",
                          "--num-trials, -n", "--prefill-step-size", "--delay", "lmtune's additions:",
                          "--adapter-path", "--kv-bits", "--kv-group-size", "--quantized-kv-start", "--device",
                          "--dtype"],
            "lora": ["--model", "--train", "--data", "--fine-tune-type", "--optimizer", "--mask-prompt",
                     "--num-layers", "--batch-size", "--iters", "--val-batches", "--learning-rate",
                     "--steps-per-report", "--steps-per-eval", "--grad-accumulation-steps", "--resume-adapter-file",
                     "--adapter-path", "--save-every", "--test", "--test-batches", "--max-seq-length",
                     "-c, --config", "--grad-checkpoint", "--clear-cache-threshold", "--report-to",
                     "--project-name", "--seed", "--trust-remote-code", "lmtune's additions:", "--epochs",
                     "--grad-clip", "--resume", "--early-stop", "--train-embeddings", "--preview", "--device",
                     "--dtype", "lora_parameters:", "optimizer_config:", "lr_schedule:", "prompt_feature:",
                     "completion_feature:", "chat_feature:", "text_feature:", "hf_dataset:"],
            "tokenize": ["--model", "--prompt", "--messages FILE.json", "--add-generation-prompt",
                         "--chat-template-config", "--no-special", "--render", "--verbose", "--json"],
            "manage": ["--scan", "--delete", "--pattern"],
            "inspect": ["--model"],
        }
        for cmd, items in expect.items():
            for flag in ("--help", "-h"):
                rc, out, err = run(cmd, flag)
                check(rc == 0 and out.startswith(f"usage: lmtune {cmd} ") and "-h, --help" in out, f"{cmd} {flag}")
            pos = -1
            for it in items:  # each listed, in this order (mlx-lm's flags before lmtune's additions)
                m = re.search(r"\n(  )?" + re.escape(it) + r"[ ,\n]", out[pos + 1:])
                check(m is not None, f"{cmd} --help: {it!r} missing or out of order:\n{out}")
                pos += m.end() - 1 if m else 0  # the separator may start the next line
        # Help that used to be false: Hub ids do resolve through the Hub cache.
        rc, out, _ = run("generate", "--help")
        check("not available" not in out and "Hugging Face repo id" in out, out)
        rc, out, _ = run("lora", "--help")
        out = " ".join(out.split())  # help lines wrap
        check("(default: 4)" in out and "(default: 1e-05)" in out and "(default: Qwen/Qwen3-0.6b)" in out
              and "muon" in out, out)
    elif c == "flag_forms":
        rc, out, err = run("generate", f"--model={model}", "--device=cpu", "-m=4", "--temp=0", "-p=Define: lantern",
                           "--verbose=false")
        check(rc == 0 and out.strip(), out + err)
        rc2, out2, err2 = run("generate", "--model", model, "--device", "cpu", "--max-tokens", 4, "--temp", 0, "-p",
                              "Define: lantern", "--verbose", "false")
        check(rc2 == 0 and out2 == out, f"--flag=value {out!r} vs --flag value {out2!r}")
    elif c == "config_files":
        # The repository's own configs parse and merge (--preview stops before training).
        for cfg in ("examples/lora_config.yaml", "models/default/pretrain.yaml"):
            rc, out, err = run("lora", "-c", os.path.join(a.root, cfg), "--model", model, "--data", data,
                               "--preview", 1)
            check(rc == 0 and "example 1 (line 1)" in out, f"{cfg}: {out}{err}")
            check("Warning" not in err, f"{cfg}: {err}")
    else:
        check(False, f"unknown case {c}")
    if FAILS:
        sys.exit(1)
    print("ok", c)


if __name__ == "__main__":
    main()
