"""`lmtune generate --kv-bits` against mlx_lm.generate's KV-cache quantization (MLX's CPU backend).

Usage: kv_quant_check.py --lmtune BIN --work DIR --model DIR --case mlx_default|mlx_tiny|rotating|refused

mlx_default  --model (models/default) copied to f32 by `mlx_lm convert --dtype float32` (lmtune's CPU
             computes in f32; MLX would compute the bf16 folder in bf16);
mlx_tiny     a tiny random llama written here (2 layers, head_dim 128, 2 heads / 1 kv head, f32, seeded
             numpy weights; --model's tokenizer files);
             on each: `lmtune generate` (raw prompt, temp 0) and mlx_lm.generate's generate() called as its
             main() calls it with the same flags (in this process: one MLX import and load per model)
             give the same text for --kv-bits 4 and 8 with --quantized-kv-start 0, --kv-bits 4 with
             start 8 (the cache converts during generation) and a longer prompt with
             --prefill-step-size 4 and start 8 (it converts between prefill chunks; tiny adds 3-bit
             group 32). And the quantized text differs from the unquantized one at least once per
             model, so an ignored --kv-bits fails.
rotating     --kv-bits with --max-kv-size (mlx-lm refuses the two together): a rotating cache that never
             wraps gives mlx-lm's quantized text (no --max-kv-size there); one that wraps (16 entries,
             start 0 and start 20, 80 tokens) runs to the end with text; benchmark and chat take the flags.
refused      bad --kv-bits / --kv-group-size / --quantized-kv-start values exit 2 with argparse's
             message naming the flag (generate, chat, benchmark), before or after loading the model.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
from checks import FAILS, check
from checks import mlx_lm_cli

PROMPT = "the light of a lamp that"
LONG_PROMPT = "A lantern is a lamp with a transparent case that protects the flame, and the light of a lamp that"


def run(cmd, stdin=None):
    # bytes, decoded here: text=True would turn a generated "\r" into "\n" (universal newlines) and hide it
    r = subprocess.run(cmd, input=None if stdin is None else stdin.encode(), capture_output=True, timeout=300)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode("utf-8", "replace"),
                                       r.stderr.decode("utf-8", "replace"))


def lmtune_text(a, d, flags, prompt=PROMPT, m=32):
    r = run([a.lmtune, "generate", "--model", d, "--device", "cpu", "--temp", "0", "-m", str(m),
             "--ignore-chat-template", "-p", prompt, "--verbose", "False"] + flags)
    check(r.returncode == 0, f"lmtune generate {flags}: rc {r.returncode}\n{r.stderr[-2000:]}")
    return r.stdout[:-1] if r.stdout.endswith("\n") else r.stdout


def f32_copy(a, name="default-f32"):
    d = os.path.join(a.work, name)
    if not os.path.exists(os.path.join(d, "config.json")):
        shutil.rmtree(d, ignore_errors=True)
        r = mlx_lm_cli(["convert", "--hf-path", a.model, "--mlx-path", d, "--dtype", "float32"])
        check(r.returncode == 0, f"mlx_lm convert: {r.stderr[-2000:]}")
    return d


def tiny_model(a):
    from safetensors.numpy import save_file
    d = os.path.join(a.work, "tiny")
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(a.model):
        if f.startswith("tokenizer") or f in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy(os.path.join(a.model, f), d)
    base = json.load(open(os.path.join(a.model, "config.json")))
    V, C, F, H, KV, D, L = base["vocab_size"], 256, 512, 2, 1, 128, 2
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V, "hidden_size": C,
           "intermediate_size": F, "num_hidden_layers": L, "num_attention_heads": H, "num_key_value_heads": KV,
           "head_dim": D, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 1024,
           "tie_word_embeddings": False, "bos_token_id": base.get("bos_token_id"),
           "eos_token_id": base.get("eos_token_id"), "torch_dtype": "float32"}
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    rng = np.random.default_rng(1234)

    def lin(o, i, gain=1.0):
        return (rng.standard_normal((o, i)) * gain / np.sqrt(i)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((V, C)).astype(np.float32),
         "model.norm.weight": np.ones(C, np.float32), "lm_head.weight": lin(V, C, 4.0)}
    for l in range(L):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = np.ones(C, np.float32)
        w[p + "post_attention_layernorm.weight"] = np.ones(C, np.float32)
        w[p + "self_attn.q_proj.weight"] = lin(H * D, C, 2.0)
        w[p + "self_attn.k_proj.weight"] = lin(KV * D, C, 2.0)
        w[p + "self_attn.v_proj.weight"] = lin(KV * D, C)
        w[p + "self_attn.o_proj.weight"] = lin(C, H * D)
        w[p + "mlp.gate_proj.weight"] = lin(F, C)
        w[p + "mlp.up_proj.weight"] = lin(F, C)
        w[p + "mlp.down_proj.weight"] = lin(C, F)
    save_file(w, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    return d


class Mlx:
    """mlx_lm.generate's main() for one model folder: load once, then generate() per flag set."""

    def __init__(self, d):
        import mlx.core as mx
        from mlx_lm import load
        mx.set_default_device(mx.cpu)
        self.model, self.tok = load(d)

    def text(self, flags, prompt=PROMPT, m=32):
        from mlx_lm.generate import generate
        from mlx_lm.sample_utils import make_sampler
        kw = {"kv_bits": None, "kv_group_size": 64, "quantized_kv_start": 5000, "max_kv_size": None,
              "prefill_step_size": 2048}
        for k, v in zip(flags[::2], flags[1::2]):
            kw[k.lstrip("-").replace("-", "_")] = int(v)
        ids = self.tok.encode(prompt, add_special_tokens=True)  # --ignore-chat-template
        return generate(self.model, self.tok, ids, max_tokens=m, verbose=False, sampler=make_sampler(0.0), **kw)


def same(ours, theirs):
    # mlx-lm's BPE streaming detokenizer drops a generation's leading space; lmtune keeps it.
    return ours is not None and theirs is not None and ours.strip() == theirs.strip()


def compare(a, d, name, cases):
    mlx = Mlx(d)
    base = lmtune_text(a, d, [])
    check(same(base, mlx.text([])), f"{name} unquantized: lmtune {base!r} != mlx-lm {mlx.text([])!r}")
    differs = False
    for flags, prompt in cases:
        ours, theirs = lmtune_text(a, d, flags, prompt), mlx.text(flags, prompt)
        print(f"{name} {' '.join(flags)}: lmtune {ours!r}\n{' ' * len(name)} {' ' * len(' '.join(flags))}  "
              f"mlx-lm {theirs!r}")
        check(same(ours, theirs), f"{name} {flags}: lmtune {ours!r} != mlx-lm {theirs!r}")
        differs |= prompt == PROMPT and ours.strip() != base.strip()
    check(differs, f"{name}: no --kv-bits setting changed the text ({base!r}): is the cache quantized at all?")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmtune", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--case", required=True)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    common = [(["--kv-bits", "4", "--quantized-kv-start", "0"], PROMPT),
              (["--kv-bits", "8", "--quantized-kv-start", "0"], PROMPT),
              (["--kv-bits", "4", "--quantized-kv-start", "8"], PROMPT),
              (["--kv-bits", "4", "--quantized-kv-start", "8", "--prefill-step-size", "4"], LONG_PROMPT)]
    if a.case == "mlx_default":
        compare(a, f32_copy(a), "default", common)
    elif a.case == "mlx_tiny":
        compare(a, tiny_model(a), "tiny", common + [
            (["--kv-bits", "3", "--kv-group-size", "32", "--quantized-kv-start", "8", "--prefill-step-size", "4"],
             LONG_PROMPT),
            (["--kv-bits", "2", "--kv-group-size", "128", "--quantized-kv-start", "0"], PROMPT)])
    elif a.case == "rotating":
        d = f32_copy(a)
        mlx = Mlx(d)
        flags = ["--kv-bits", "4", "--quantized-kv-start", "0"]
        ours, theirs = lmtune_text(a, d, flags + ["--max-kv-size", "512"]), mlx.text(flags)
        check(same(ours, theirs), f"rotating (never wraps) {flags}: lmtune {ours!r} != mlx-lm {theirs!r}")
        for start in ("0", "20"):
            r = run([a.lmtune, "generate", "--model", d, "--device", "cpu", "--temp", "0", "-m", "80",
                     "--ignore-chat-template", "-p", LONG_PROMPT, "--max-kv-size", "16", "--kv-bits", "4",
                     "--quantized-kv-start", start])
            m = re.search(r"==========\n(.*?)\n==========\nPrompt: (\d+) tokens.*\nGeneration: (\d+) tokens", r.stdout,
                          re.S)
            print(f"wrapping, start {start}: rc {r.returncode}, {r.stdout[-400:]!r}")
            check(r.returncode == 0 and m is not None and m.group(1).strip() != "",
                  f"rotating 16 with --kv-bits 4 start {start}: rc {r.returncode}\n{r.stdout}\n{r.stderr[-2000:]}")
        # Sensible text: with 8 bits (a 1/255-of-the-range error per value) the wrapped cache starts as the
        # dense wrapped one does.
        dense = lmtune_text(a, d, ["--max-kv-size", "16"], LONG_PROMPT, 80)
        q8 = lmtune_text(a, d, ["--max-kv-size", "16", "--kv-bits", "8", "--quantized-kv-start", "0"], LONG_PROMPT, 80)
        print(f"wrapping, dense {dense!r}, 8-bit {q8!r}")
        check(dense.split()[:3] == q8.split()[:3], f"wrapped 8-bit {q8!r} does not start as dense {dense!r}")
        r = run([a.lmtune, "benchmark", "--model", d, "--device", "cpu", "-p", "24", "-g", "24", "-n", "1", "-b", "2",
                 "--kv-bits", "4", "--quantized-kv-start", "10"])
        check(r.returncode == 0 and "Averages: prompt_tps=" in r.stdout, f"benchmark --kv-bits: {r.stdout}{r.stderr}")
        r = run([a.lmtune, "chat", "--model", a.model, "--device", "cpu", "-m", "8", "--kv-bits", "8",
                 "--quantized-kv-start", "4", "--max-kv-size", "40"], stdin="hello\nDefine: lamp\nr\nhi\nq\n")
        turns = re.findall(r"\n\d+ tokens \u00b7 [0-9.]+ tok/s", r.stdout)
        check(r.returncode == 0 and len(turns) == 3, f"chat --kv-bits: {r.stdout}{r.stderr}")
    elif a.case == "refused":
        bad = [(["generate", "--kv-bits", "7"], "argument --kv-bits: must be 2, 3, 4, 5, 6 or 8, got 7"),
               (["generate", "--kv-bits", "0"], "argument --kv-bits: must be 2, 3, 4, 5, 6 or 8, got 0"),
               (["generate", "--kv-bits", "four"], "argument --kv-bits: invalid int value: 'four'"),
               (["generate", "--kv-bits", "4", "--kv-group-size", "48"],
                "argument --kv-group-size: must be 32, 64 or 128, got 48"),
               (["generate", "--kv-bits", "4", "--kv-group-size", "128"],
                "argument --kv-group-size: 128 does not divide the model's head_dim 64"),
               (["generate", "--kv-bits", "4", "--quantized-kv-start", "-1"],
                "argument --quantized-kv-start: must be >= 0, got -1"),
               (["chat", "--kv-bits", "9"], "argument --kv-bits: must be 2, 3, 4, 5, 6 or 8, got 9"),
               (["benchmark", "--kv-bits", "4", "--kv-group-size", "16"],
                "argument --kv-group-size: must be 32, 64 or 128, got 16")]
        for args, msg in bad:
            cmd = [a.lmtune, args[0], "--model", a.model, "--device", "cpu"] + args[1:]
            r = run(cmd, stdin="q\n")
            check(r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr,
                  f"{' '.join(args)}: rc {r.returncode}, stderr {r.stderr!r}, want {msg!r}")
    else:
        check(False, f"unknown case {a.case}")
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
