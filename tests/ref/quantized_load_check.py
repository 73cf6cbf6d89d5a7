"""MLX-quantized folders (made by the real mlx_lm.convert) load in lmtune and generate what mlx-lm
generates, and damaged ones are refused naming the tensor.

Usage: quantized_load_check.py --lmtune BIN --work DIR --model DIR [--model DIR ...] --case greedy|refusals
greedy    each --model (f32 copies are made with --dtype float32) is converted by `mlx_lm convert -q`
          with affine 4-bit group 64, 8-bit group 32, 3-bit group 32 and the mixed_3_6 recipe (group
          size 32 where a model's widths need it); `lmtune generate` (CPU, f32) and `mlx_lm generate`
          give the same greedy text (temp 0, raw prompt, 24 tokens; mlx-lm's streaming detokenizer
          trims the leading space of a generation, so texts are compared stripped); the quantized text
          must differ from the f32 model's for at least one recipe of each model, so a loader that
          ignored the packing (or read the base weights) fails. A bf16 conversion must load and
          generate too (compared with mlx-lm only loosely: MLX computes it in bf16, lmtune's CPU in f32).
refusals  one 4-bit folder, damaged five ways (a packed weight one word short, scales of the wrong
          shape, bits 7 for a layer, a group size that does not divide the inputs, a config naming a
          quantized layer the file lacks): `lmtune generate` exits non-zero with an error naming the
          layer or tensor, and never crashes (no signal).
mlx-lm loads each distinct set of tokenizer files once (checks.reuse_mlx_tokenizers): a model's
conversions and their generate runs share one tokenizer load instead of one each (~4 s apiece for
the 262k-token Gemma vocabulary).
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np
from safetensors.numpy import save_file

from checks import mlx_lm_cli, reuse_mlx_tokenizers
from quant_folder_checks import FAILS, check, damaged_copy, run, text_of

PROMPT = "Define: lantern"


def lmtune_text(a, d):
    r = run([a.lmtune, "generate", "--model", d, "--device", "cpu", "--temp", "0", "-m", "24",
             "--ignore-chat-template", "-p", PROMPT])
    check(r.returncode == 0, f"lmtune generate {d}: rc {r.returncode}\n{r.stderr[-2000:]}")
    return text_of(r.stdout)


def mlx_text(d):
    r = mlx_lm_cli(["generate", "--model", d, "--temp", "0", "-m", "24", "--ignore-chat-template", "-p", PROMPT])
    check(r.returncode == 0, f"mlx_lm generate {d}: rc {r.returncode}\n{r.stderr[-2000:]}")
    return text_of(r.stdout)


def convert(src, dst, args):
    shutil.rmtree(dst, ignore_errors=True)
    r = mlx_lm_cli(["convert", "--hf-path", src, "--mlx-path", dst] + args)
    check(r.returncode == 0, f"mlx_lm convert {args}: {r.stderr[-2000:]}")
    return r.returncode == 0


def case_greedy(a):
    for m in a.model:
        name = os.path.basename(m.rstrip("/"))
        cfg = json.load(open(os.path.join(m, "config.json")))
        cfg = cfg.get("text_config", cfg)  # a multimodal checkpoint's text model
        width = min(cfg["hidden_size"], cfg["intermediate_size"])
        g64 = "64" if width % 64 == 0 else "32"
        recipes = {"q4": ["--q-bits", "4", "--q-group-size", g64], "q8": ["--q-bits", "8", "--q-group-size", "32"],
                   "q3": ["--q-bits", "3", "--q-group-size", "32"],
                   "mixed_3_6": ["--quant-predicate", "mixed_3_6", "--q-group-size", g64]}
        if a.recipes:
            recipes = {k: v for k, v in recipes.items() if k in a.recipes.split(",")}
        f32 = os.path.join(a.work, f"{name}-f32")
        if not convert(m, f32, ["--dtype", "float32"]):
            continue
        base = lmtune_text(a, f32)
        print(f"{name} f32: {base!r}")
        differs = False
        for rname, rargs in recipes.items():
            d = os.path.join(a.work, f"{name}-{rname}")
            if not convert(m, d, ["-q", "--dtype", "float32"] + rargs):
                continue
            q = json.load(open(os.path.join(d, "config.json")))["quantization"]
            ours, theirs = lmtune_text(a, d), mlx_text(d)
            print(f"{name} {rname} ({len(q) - 3} per-layer entries): lmtune {ours!r}\n{' ' * len(name)}"
                  f" {rname} mlx-lm {theirs!r}")
            check(ours is not None and theirs is not None and ours.strip() == theirs.strip(),
                  f"{name} {rname}: lmtune {ours!r} != mlx-lm {theirs!r}")
            differs |= ours != base
        check(differs, f"{name}: no quantized recipe changed the text ({base!r}): is the packing read at all?")
        d = os.path.join(a.work, f"{name}-q4-bf16")
        if not a.recipes and convert(m, d, ["-q", "--dtype", "bfloat16", "--q-group-size", g64]):
            ours = lmtune_text(a, d)
            print(f"{name} q4 bf16: lmtune {ours!r}, mlx-lm {mlx_text(d)!r}")
            check(ours is not None and len(ours.strip()) > 0, f"{name} q4 bf16: no text")


def case_refusals(a):
    m = a.model[0]
    src = os.path.join(a.work, "q4")
    if not convert(m, src, ["-q", "--dtype", "float32", "--q-bits", "4", "--q-group-size", "32"]):
        return
    layer = "model.layers.0.mlp.down_proj"

    def damaged(tag, edit_tensors=None, edit_config=None):
        return damaged_copy(src, os.path.join(a.work, tag), layer, edit_tensors, edit_config)

    def short_word(t):
        t[f"{layer}.weight"] = np.ascontiguousarray(t[f"{layer}.weight"][:, :-1])

    def bad_scales(t):
        t[f"{layer}.scales"] = np.ascontiguousarray(t[f"{layer}.scales"][:-1])

    def bits7(c):
        c["quantization"][layer] = {"group_size": 32, "bits": 7}

    def group_not_dividing(c):
        c["quantization"][layer] = {"group_size": 48, "bits": 4}

    cases = [("short_word", damaged("short_word", edit_tensors=short_word), layer),
             ("bad_scales", damaged("bad_scales", edit_tensors=bad_scales), layer),
             ("bits7", damaged("bits7", edit_config=bits7), layer),
             ("group48", damaged("group48", edit_config=group_not_dividing), layer)]
    # A config that names a quantized layer the (dense) checkpoint does not hold packed.
    dense = os.path.join(a.work, "names_missing")
    if convert(m, dense, ["--dtype", "float32"]):
        c = json.load(open(os.path.join(dense, "config.json")))
        c["quantization"] = {"group_size": 32, "bits": 4, "mode": "affine", layer: {"group_size": 32, "bits": 4}}
        json.dump(c, open(os.path.join(dense, "config.json"), "w"))
        cases.append(("names_missing", dense, f"{layer}.scales"))
    for tag, d, expect in cases:
        r = run([a.lmtune, "generate", "--model", d, "--device", "cpu", "--temp", "0", "-m", "4", "-p", PROMPT])
        err = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
        print(f"{tag}: rc {r.returncode}: {err}")
        check(r.returncode not in (0,) and r.returncode > 0, f"{tag}: rc {r.returncode} (want a clean error exit)")
        check(expect in r.stderr, f"{tag}: the error does not name {expect}: {err}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmtune", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--case", required=True, choices=["greedy", "refusals"])
    ap.add_argument("--recipes", help="greedy: only these recipes (comma-separated: q4,q8,q3,mixed_3_6), no bf16")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    reuse_mlx_tokenizers()  # no --extra-eos-token here
    {"greedy": case_greedy, "refusals": case_refusals}[a.case](a)
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
