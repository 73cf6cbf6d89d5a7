"""Hostile inputs through the lmtune binary (issue 13): a model folder whose chat template recurses
or nests 100,000 parentheses, a billion-laughs YAML config, config.json / tokenizer.json values no
model has, refused flag values, and a Hub cache ref pointing out of the cache. Each must end within
seconds in a clear error naming the file or flag: no signal, no hang, no std::bad_alloc.

Usage: hostile_check.py --lmtune BIN --root REPO --work DIR --case NAME
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ref"))
from checks import FAILS, check  # noqa: E402  (the shared failure list, tests/ref/checks.py)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmtune", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--case", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    model = os.path.join(a.root, "models", "default")
    data = os.path.join(a.root, "examples", "data")

    def refused(args, rc, *needles, env=None, limit=20):
        t0 = time.time()
        try:
            p = subprocess.run([a.lmtune, *map(str, args)], capture_output=True, text=True, timeout=limit,
                               env={**os.environ, **(env or {})})
        except subprocess.TimeoutExpired:
            check(False, f"{args}: still running after {limit} s")
            return
        took = time.time() - t0
        err = p.stderr
        check(p.returncode == rc, f"{args}: exit {p.returncode}, want {rc}\n{err}")
        check("bad_alloc" not in err, f"{args}: std::bad_alloc\n{err}")
        for n in needles:
            check(n in err, f"{args}: stderr lacks {n!r}:\n{err}")
        print(f"{' '.join(map(str, args))[:100]}: exit {p.returncode} in {took:.2f} s: {err.strip()[-300:]}")

    def model_copy(name, config=None, tokenizer=None, template=None):
        d = os.path.join(a.work, name)
        shutil.copytree(model, d)
        if config:
            path = os.path.join(d, "config.json")
            c = json.load(open(path))
            c.update(config)
            json.dump(c, open(path, "w"))
        if tokenizer:
            path = os.path.join(d, "tokenizer.json")
            t = json.load(open(path))
            tokenizer(t)
            json.dump(t, open(path, "w"))
        if template is not None:
            path = os.path.join(d, "tokenizer_config.json")
            t = json.load(open(path))
            t["chat_template"] = template
            json.dump(t, open(path, "w"))
        return d

    messages = os.path.join(a.work, "messages.json")
    json.dump([{"role": "user", "content": "hi"}], open(messages, "w"))

    c = a.case
    if c == "template":
        for name, tmpl, needle in [
            ("recurse", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "macro 'f' called at a depth"),
            ("parens", "{{ " + "(" * 100000 + "1" + ")" * 100000 + " }}", "nested deeper than 256"),
            ("loops", "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
             "loop iterations"),
            ("balloon", "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
             "{% endfor %}{{ ns.s }}", "over the limit"),
        ]:
            d = model_copy(name, template=tmpl)
            refused(["tokenize", "--model", d, "--messages", messages, "--render"], 1, needle,
                    f"chat template of {d}", "[jinja] line 1")
    elif c == "yaml":
        doc = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        for k in range(1, 10):
            doc += f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * 9) + "]\n"
        path = os.path.join(a.work, "laughs.yaml")
        open(path, "w").write(doc + f"model: {model}\ntrain: true\ndata: {data}\n")
        refused(["lora", "--config", path], 1, f"[config] {path}: YAML document expands to more than")
    elif c == "config":
        for field, value in [("num_hidden_layers", 10**9), ("hidden_size", 10**9), ("vocab_size", 10**12),
                             ("rms_norm_eps", -1e-5), ("rms_norm_eps", 0), ("rope_theta", -1.0)]:
            cfg = {field: value}
            if field == "rope_theta":
                cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": value}
            d = model_copy(f"{field}-{value}", config=cfg)
            refused(["generate", "--model", d, "--prompt", "hi", "--max-tokens", "1"], 1,
                    f"{d}/config.json", f"'{field}'")

        # within the bounds but beyond what the weights file holds: the loader names the tensor
        for field, value, needle in [("num_hidden_layers", 4000, "has no tensor 'model.layers.4."),
                                     ("vocab_size", 16000000, "the config implies (16000000, 256)")]:
            d = model_copy(f"{field}-{value}", config={field: value})
            refused(["generate", "--model", d, "--prompt", "hi", "--max-tokens", "1"], 1, needle)

        def big_id(t):
            t["model"]["vocab"]["<big>"] = 10**9

        d = model_copy("vocab-id", tokenizer=big_id)
        refused(["tokenize", "--model", d, "--prompt", "hi"], 1, "vocab id 1000000000", f"{d}/tokenizer.json")
    elif c == "flags":
        for v in ("-5", "0"):
            refused(["generate", "--model", model, "--prompt", "hi", "--max-tokens", v], 2,
                    f"--max-tokens must be a positive number of tokens, got {v}")
            refused(["chat", "--model", model, "--max-tokens", v], 2, "--max-tokens must be a positive")
        adapters = os.path.join(a.work, "adapters")
        refused(["lora", "--model", model, "--train", "--data", data, "--iters", "-5", "--adapter-path", adapters],
                2, "--iters (iters in a config) must be a positive number of steps, got -5")
        for v in ("nan", "inf", "-inf"):
            refused(["lora", "--model", model, "--train", "--data", data, "--iters", "1", "--learning-rate", v,
                     "--adapter-path", adapters], 2, "--learning-rate")
        check(not os.path.exists(os.path.join(adapters, "adapters.safetensors")), "refused runs wrote adapters")
        cfg = os.path.join(a.work, "iters.yaml")
        open(cfg, "w").write(f"model: {model}\ntrain: true\ndata: {data}\niters: -5\nadapter_path: {adapters}\n")
        refused(["lora", "--config", cfg], 2, "iters in a config")
    elif c == "hub_ref":
        cache = os.path.join(a.work, "hub")
        repo = os.path.join(cache, "models--org--evil")
        os.makedirs(os.path.join(repo, "refs"))
        os.makedirs(os.path.join(repo, "snapshots"))
        # refs/main -> ../../.. would make <cache>/models--org--evil/snapshots/../../.. = the work folder
        shutil.copytree(model, os.path.join(a.work, "outside"))
        for target in ("../../..", "../../../outside", os.path.join(a.work, "outside")):
            open(os.path.join(repo, "refs", "main"), "w").write(target)
            refused(["generate", "--model", "org/evil", "--prompt", "hi"], 1, "refs/main holds", "not a commit hash",
                    env={"HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1", "HF_HOME": os.path.join(a.work, "home")})
    else:
        check(False, f"unknown case {c}")
    if FAILS:
        print(f"{len(FAILS)} failure(s)", file=sys.stderr)
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
