"""MLX's fp quantization modes (mxfp4, nvfp4, mxfp8) load in lmtune, both ways with mlx-lm, and
damaged fp folders are refused naming the tensor or field.

Usage: quantized_fp_check.py --lmtune BIN --work DIR --model DIR --case greedy|refusals [--mode M]
greedy    (--mode M) the model (models/default) is quantized in mode M twice, in f32 (--dtype
          float32): by the real `mlx_lm convert -q --q-mode M` and by `lmtune convert -q --q-mode M`.
          On each folder `lmtune generate` (CPU, f32) and `mlx_lm generate` give the same greedy text
          (temp 0, four raw prompts, 24 tokens each; compared stripped: mlx-lm's detokenizer trims a
          leading space), which must be real text (30 words in all). The two folders' tensors
          must be byte-identical, so both directions test one set of weights. On the mlx-lm folder
          `lmtune chat` (a piped turn) and `lmtune benchmark` must run, and `lmtune lora --train --test`
          (one QLoRA step at learning rate 0) must report the same test perplexity (1e-4) as on the
          same weights dequantized by mlx-lm (`mlx_lm convert -d`, cast to f32).
refusals  one mxfp4 folder (mlx_lm.convert) damaged six ways: a '.biases' tensor beside an mxfp4
          layer, float scales for a layer the config names mxfp4, scales a row short, a per-layer
          config entry of mxfp4 with 8 bits, an unknown mode, and u8 scales whose group size (64)
          is no fp mode's; `lmtune generate` exits with a clean error (no signal) naming the tensor
          or field.
"""
import argparse
import json
import os
import re
import shutil
import sys

import numpy as np
from safetensors.numpy import load_file

from quant_folder_checks import FAILS, check, damaged_copy, run, text_of
from checks import mlx_lm_cli

PROMPT = "Define: lantern"
# Several raw prompts: the tiny model's greedy answers are short (it often stops at an EOS early).
PROMPTS = ["Define: tree", "In the", "The meaning of", "Define: lantern"]
LAYER = "model.layers.0.mlp.down_proj"


def lmtune_text(a, d, prompt):
    r = run([a.lmtune, "generate", "--model", d, "--device", "cpu", "--temp", "0", "-m", "24",
             "--ignore-chat-template", "-p", prompt])
    check(r.returncode == 0, f"lmtune generate {d}: rc {r.returncode}\n{r.stderr[-2000:]}")
    return text_of(r.stdout)


def mlx_texts(d, prompts):
    """mlx_lm.generate's greedy texts (the Python API in this process: one load for all prompts;
    the same calls `mlx_lm generate --ignore-chat-template --temp 0` makes)."""
    from mlx_lm import generate, load

    model, tok = load(d)
    return [generate(model, tok, prompt=p, max_tokens=24, verbose=False) for p in prompts]


def mlx_convert(src, dst, args):
    shutil.rmtree(dst, ignore_errors=True)
    r = mlx_lm_cli(["convert", "--hf-path", src, "--mlx-path", dst] + args)
    return check(r.returncode == 0, f"mlx_lm convert {args}: {r.stderr[-2000:]}")


def lmtune_convert(a, src, dst, args):
    shutil.rmtree(dst, ignore_errors=True)
    r = run([a.lmtune, "convert", "--hf-path", src, "--mlx-path", dst] + args)
    return check(r.returncode == 0, f"lmtune convert {args}: {r.stderr[-2000:]}")


def tensors(d):
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(d, f)))
    return out


def test_loss(a, d, data):
    # One QLoRA step at learning rate 0 (LoRA's B starts at zero: the adapter adds nothing), then --test.
    r = run([a.lmtune, "lora", "--model", d, "--train", "--test", "--data", data, "--device", "cpu", "--batch-size", "2",
             "--iters", "1", "--learning-rate", "0", "--num-layers", "-1", "--adapter-path", d + "-adapters"])
    check(r.returncode == 0, f"lmtune lora --test {d}: rc {r.returncode}\n{r.stderr[-2000:]}")
    m = re.search(r"Test loss ([0-9]+\.[0-9]+), Test ppl ([0-9]+\.[0-9]+)", r.stdout)
    check(m is not None, f"lmtune lora --test {d}: no test loss in {r.stdout[-1000:]!r}")
    return float(m.group(2)) if m else None


def case_greedy(a):
    mode = a.mode
    by_mlx, by_lmtune = os.path.join(a.work, f"{mode}-mlx"), os.path.join(a.work, f"{mode}-lmtune")
    args = ["-q", "--q-mode", mode, "--dtype", "float32"]
    if not (mlx_convert(a.model, by_mlx, args) and lmtune_convert(a, a.model, by_lmtune, args)):
        return
    q = json.load(open(os.path.join(by_mlx, "config.json")))["quantization"]
    check(q.get("mode") == mode, f"mlx-lm's config says {q}")
    tm, tl = tensors(by_mlx), tensors(by_lmtune)
    check(tm.keys() == tl.keys(), f"tensor names differ: {sorted(tm.keys() ^ tl.keys())[:5]}")
    for k in sorted(tm.keys() & tl.keys()):
        check(tm[k].dtype == tl[k].dtype and tm[k].shape == tl[k].shape and tm[k].tobytes() == tl[k].tobytes(),
              f"tensor {k} differs between mlx_lm.convert and lmtune convert")
    check(f"{LAYER}.scales" in tm and tm[f"{LAYER}.scales"].dtype == np.uint8 and f"{LAYER}.biases" not in tm,
          f"{mode}: expected u8 scales and no biases for {LAYER}")
    for who, d in [("mlx_lm.convert", by_mlx), ("lmtune convert", by_lmtune)]:
        words = 0
        for prompt, theirs in zip(PROMPTS, mlx_texts(d, PROMPTS)):
            ours = lmtune_text(a, d, prompt)
            print(f"{mode} by {who}, {prompt!r}:\n  lmtune {ours!r}\n  mlx-lm {theirs!r}")
            check(ours is not None and ours.strip() == theirs.strip(),
                  f"{mode} by {who}, {prompt!r}: lmtune {ours!r} != mlx-lm {theirs!r}")
            words += len((ours or "").split())
        check(words >= 30, f"{mode} by {who}: too little text to compare ({words} words)")

    # chat and benchmark run on the folder.
    r = run([a.lmtune, "chat", "--model", by_mlx, "--device", "cpu", "--max-tokens", "8"], input="hello\nq\n")
    check(r.returncode == 0 and "tok/s" in r.stdout, f"{mode} chat: rc {r.returncode}\n{r.stdout[-500:]}{r.stderr[-1500:]}")
    r = run([a.lmtune, "benchmark", "--model", by_mlx, "--device", "cpu", "-p", "16", "-g", "8", "-n", "1"])
    check(r.returncode == 0 and "generation_tps" in r.stdout,
          f"{mode} benchmark: rc {r.returncode}\n{r.stdout[-500:]}{r.stderr[-1500:]}")

    # lora --test: the fp folder against mlx-lm's own dequantization of it (f32).
    dense = os.path.join(a.work, f"{mode}-dense")
    if mlx_convert(by_mlx, dense, ["-d", "--dtype", "float32"]):
        data = os.path.join(a.work, "data")
        os.makedirs(data, exist_ok=True)
        words = ["lantern", "river", "stone", "cloud"]
        for split in ["train", "valid", "test"]:
            with open(os.path.join(data, f"{split}.jsonl"), "w") as f:
                for w in words:
                    f.write(json.dumps({"text": f"Define: {w}\n{w} (noun): a thing called {w}"}) + "\n")
        fp, de = test_loss(a, by_mlx, data), test_loss(a, dense, data)
        print(f"{mode} lora --test: ppl {fp} on the fp folder, {de} on its dequantized copy")
        check(fp is not None and de is not None and abs(fp - de) <= 1e-4 * abs(de),
              f"{mode} lora --test: ppl {fp} != {de} on the dequantized weights")


def case_refusals(a):
    src = os.path.join(a.work, "mxfp4")
    if not mlx_convert(a.model, src, ["-q", "--q-mode", "mxfp4", "--dtype", "float32"]):
        return

    def damaged(tag, edit_tensors=None, edit_config=None):
        return damaged_copy(src, os.path.join(a.work, tag), LAYER, edit_tensors, edit_config)

    def add_biases(t):
        t[f"{LAYER}.biases"] = np.zeros(t[f"{LAYER}.scales"].shape, np.float32)

    def float_scales(t):
        t[f"{LAYER}.scales"] = t[f"{LAYER}.scales"].astype(np.float32)

    def name_mxfp4(c):
        c["quantization"][LAYER] = {"group_size": 32, "bits": 4, "mode": "mxfp4"}

    def short_scales(t):
        t[f"{LAYER}.scales"] = np.ascontiguousarray(t[f"{LAYER}.scales"][:-1])

    def bits8(c):
        c["quantization"][LAYER] = {"group_size": 32, "bits": 8, "mode": "mxfp4"}

    def unknown_mode(c):
        c["quantization"]["mode"] = "int4"

    def group64(t):
        s = t[f"{LAYER}.scales"]
        t[f"{LAYER}.scales"] = np.ascontiguousarray(s[:, : s.shape[1] // 2])

    cases = [
        ("biases", damaged("biases", edit_tensors=add_biases), f"{LAYER}.biases"),
        ("float_scales", damaged("float_scales", edit_tensors=float_scales, edit_config=name_mxfp4), f"{LAYER}.scales"),
        ("short_scales", damaged("short_scales", edit_tensors=short_scales), f"{LAYER}.scales"),
        ("bits8", damaged("bits8", edit_config=bits8), f"quantization['{LAYER}']: mxfp4 quantization needs group size 32 and bits 4"),
        ("unknown_mode", damaged("unknown_mode", edit_config=unknown_mode), "mode 'int4' is not one of affine, mxfp4, nvfp4, mxfp8"),
        ("group64", damaged("group64", edit_tensors=group64), f"cannot infer the quantization mode of '{LAYER}'"),
    ]
    for tag, d, expect in cases:
        r = run([a.lmtune, "generate", "--model", d, "--device", "cpu", "--temp", "0", "-m", "4", "-p", PROMPT])
        err = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
        print(f"{tag}: rc {r.returncode}: {err}")
        check(r.returncode > 0, f"{tag}: rc {r.returncode} (want a clean error exit)")
        check(expect in r.stderr, f"{tag}: the error does not name {expect!r}: {err}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmtune", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--case", required=True, choices=["greedy", "refusals"])
    ap.add_argument("--mode", choices=["mxfp4", "nvfp4", "mxfp8"], default="mxfp4")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    {"greedy": case_greedy, "refusals": case_refusals}[a.case](a)
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
