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


def small_llama(root, dst, hidden=256, layers=2, intermediate=768, seed=0):
    """A small random Llama with models/default's tokenizer, config and dtype (bf16; tied embeddings), in
    dst (made once; written under a temporary name, then renamed): for the tests that drive lmtune's
    training machinery (data parallel, sharding) rather than judge a model's text. Their runs also go
    through the sanitizer build (scripts/sanitize), where models/default's 11.5M parameters made each
    training step ~6x slower than this model's 2.1M do."""
    import json
    import os
    import shutil

    import torch
    from safetensors.torch import save_file

    if os.path.isdir(dst):
        return dst
    src = os.path.join(root, "models", "default")
    cfg = json.load(open(os.path.join(src, "config.json")))
    heads, kv, hd = 4, 2, hidden // 4
    cfg.update(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=intermediate, num_attention_heads=heads,
               num_key_value_heads=kv, head_dim=hd)
    g = torch.Generator().manual_seed(seed)

    def w(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    t = {"model.embed_tokens.weight": w(cfg["vocab_size"], hidden), "model.norm.weight": torch.ones(hidden).bfloat16()}
    for i in range(layers):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": torch.ones(hidden).bfloat16(),
                  p + "post_attention_layernorm.weight": torch.ones(hidden).bfloat16(),
                  p + "self_attn.q_proj.weight": w(heads * hd, hidden), p + "self_attn.k_proj.weight": w(kv * hd, hidden),
                  p + "self_attn.v_proj.weight": w(kv * hd, hidden), p + "self_attn.o_proj.weight": w(hidden, heads * hd),
                  p + "mlp.gate_proj.weight": w(intermediate, hidden), p + "mlp.up_proj.weight": w(intermediate, hidden),
                  p + "mlp.down_proj.weight": w(hidden, intermediate)})
    tmp = dst + ".part"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file(t, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(src, name), tmp)
    os.rename(tmp, dst)
    return dst


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
