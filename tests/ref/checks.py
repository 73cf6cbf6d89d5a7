"""The failure list and check() the reference scripts share: a failed check is recorded and
printed (its last 3000 characters, on stderr) and the script goes on, so one run reports every
difference; the script exits non-zero at the end when FAILS is not empty."""
import sys

FAILS = []


def cli_case_args():
    """The command line of a script that runs the lmtune binary case by case (--lmtune BIN --root REPO
    --work DIR --case NAME): the parsed arguments with DIR emptied, and the paths of models/default and
    examples/data."""
    import argparse
    import os
    import shutil

    ap = argparse.ArgumentParser()
    ap.add_argument("--lmtune", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--case", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    return a, os.path.join(a.root, "models", "default"), os.path.join(a.root, "examples", "data")


def check(cond, msg):
    if not cond:
        FAILS.append(msg)
        print("FAIL:", msg[-3000:], file=sys.stderr)
    return cond


def mlx_lm_cli(args):
    """`python -m mlx_lm ARGS` run in this process: a CompletedProcess with its exit status and what it
    printed. A fresh interpreter costs ~2-3 s of imports (mlx, transformers) on this machine's two
    cores, and the reference scripts run mlx_lm dozens of times each; in-process, the imports are paid
    once. mlx_lm's commands keep no state between calls that these scripts depend on (each loads its
    model folder afresh)."""
    import contextlib
    import io
    import runpy
    import subprocess
    import traceback

    out, err, rc = io.StringIO(), io.StringIO(), 0
    saved = sys.argv
    try:
        sys.argv = ["mlx_lm", *map(str, args)]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_module("mlx_lm", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception:  # a command that raises: its traceback as a subprocess would print it
        rc = 1
        err.write(traceback.format_exc())
    finally:
        sys.argv = saved
    # As subprocess.run(text=True) reads a child's output: universal newlines ("\r\n" and "\r" become "\n").
    def text(b):
        return b.getvalue().replace("\r\n", "\n").replace("\r", "\n")

    return subprocess.CompletedProcess(["mlx_lm", *map(str, args)], rc, text(out), text(err))


def reuse_mlx_tokenizers():
    """Makes mlx_lm load a tokenizer once per distinct input and hand the same one back after: its
    commands, run by mlx_lm_cli one after another, each load their folder's tokenizer afresh, 2-4 s
    apiece for the test models' real 128k-262k-token vocabularies (most of a convert or generate of a
    tiny model). The key is every input mlx_lm.utils.load_tokenizer has: the bytes of each file in
    the folder but the weights and their index, with config.json's quantization entries set aside (a
    model's quantized folders differ only there), and its arguments; so a loaded tokenizer is reused
    only for byte-identical tokenizer files. The TokenizerWrapper keeps no state between commands
    (convert saves it; generate takes a fresh copy of its detokenizer); generate's --extra-eos-token
    would add to it, so a script that passes that flag must not call this."""
    import hashlib
    import json
    import os

    import mlx_lm.utils as mu

    load, cache = mu.load_tokenizer, {}

    def key(path, extra, eos):
        parts = []
        for f in sorted(os.listdir(path)):
            p = os.path.join(path, f)
            if not os.path.isfile(p) or f.endswith((".safetensors", ".safetensors.index.json")):
                continue
            data = open(p, "rb").read()
            if f == "config.json":
                c = json.loads(data)
                for q in ("quantization", "quantization_config"):
                    c.pop(q, None)
                data = json.dumps(c, sort_keys=True).encode()
            parts.append((f, hashlib.sha256(data).hexdigest()))
        return (tuple(parts), json.dumps(extra, sort_keys=True, default=repr), repr(eos))

    def cached(model_path, tokenizer_config_extra=None, eos_token_ids=None):
        if not os.path.isdir(model_path):  # a hub name: as mlx_lm does it
            return load(model_path, tokenizer_config_extra, eos_token_ids=eos_token_ids)
        k = key(str(model_path), tokenizer_config_extra, eos_token_ids)
        if k not in cache:
            cache[k] = load(model_path, tokenizer_config_extra, eos_token_ids=eos_token_ids)
        return cache[k]

    mu.load_tokenizer = cached
