"""Hostile inputs through the lmtune binary (issue 13): a model folder whose chat template recurses
or nests 100,000 parentheses, a billion-laughs YAML config, config.json / tokenizer.json values no
model has, refused flag values, and a Hub cache ref pointing out of the cache. Each must end within
seconds in a clear error naming the file or flag: no signal, no hang, no std::bad_alloc.
Then training under a file size limit (`ulimit -f`: a clear error, the last checkpoint intact, no
temp file left; a later run cleans what a killed save left), NaN weights, a checkpoint past --iters,
mistyped trainer_state.json and training rows; checkpoints with tensors the config does not use,
`inspect` on a broken weights file, rope and vocab conflicts; a prompt past the model's context.

Usage: hostile_check.py --lmtune BIN --root REPO --work DIR --case NAME
"""
import glob
import hashlib
import json
import os
import resource
import struct
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ref"))
from checks import FAILS, check, cli_case_args  # noqa: E402  (the shared failure list, tests/ref/checks.py)


def main():
    a, model, data = cli_case_args()

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

    def st_read(path):
        b = open(path, "rb").read()
        n = struct.unpack("<Q", b[:8])[0]
        return json.loads(b[8:8 + n]), b[8 + n:]

    def st_write(path, header, data):
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        open(path, "wb").write(struct.pack("<Q", len(h)) + h + data)

    def lora(adapters, *extra, data_dir=data, limit=None, timeout=120):
        args = ["lora", "--model", model, "--train", "--data", data_dir, "--adapter-path", adapters, "--iters", "4",
                "--save-every", "2", "--steps-per-report", "1", "--steps-per-eval", "1000", "--val-batches", "1",
                "--num-layers", "-1", *extra]

        def cap():
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        return subprocess.run([a.lmtune, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                              preexec_fn=cap)

    def digest(folder):
        return {os.path.relpath(f, folder): hashlib.sha256(open(f, "rb").read()).hexdigest()
                for f in sorted(glob.glob(os.path.join(folder, "**"), recursive=True)) if os.path.isfile(f)}

    def temp_files(folder):
        return [f for f in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                if ".tmp." in os.path.basename(f) or os.path.basename(f).startswith(".tmp-")]

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
        # values read past the option table (optimizer keywords, schedule arguments) name the key and file
        for name, body, needles in [
            ("optimizer", "optimizer: adamw\noptimizer_config:\n  adamw:\n    weight_decay: lots\n",
             ["optimizer_config.adamw", "'weight_decay' must be a number", 'got "lots"']),
            ("betas", "optimizer: adam\noptimizer_config:\n  adam:\n    betas: [0.9, high]\n",
             ["optimizer_config.adam", "'betas' must be a list of numbers"]),
            ("schedule", "lr_schedule:\n  name: cosine_decay\n  arguments: [fast, 10]\n",
             ["lr_schedule", "cosine_decay needs argument 1"]),
        ]:
            path = os.path.join(a.work, name + ".yaml")
            open(path, "w").write(f"model: {model}\ntrain: true\ndata: {data}\niters: 1\n"
                                  f"num_layers: -1\nadapter_path: {a.work}/{name}-adapters\n" + body)
            refused(["lora", "--config", path], 1, f"[config] {path}: ", *needles)
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
        base = json.load(open(os.path.join(model, "config.json")))
        layers, width = base["num_hidden_layers"], base["hidden_size"]
        for field, value, needle in [("num_hidden_layers", 4000, f"has no tensor 'model.layers.{layers}."),
                                     ("vocab_size", 16000000, f"the config implies (16000000, {width})")]:
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
    elif c == "disk_full":
        adapters = os.path.join(a.work, "adapters")
        p = lora(adapters, "--iters", "2")
        check(p.returncode == 0, f"first run: exit {p.returncode}\n{p.stderr}")
        ck = os.path.join(adapters, "checkpoints", "0000002")
        before = digest(ck)
        metrics_before = open(os.path.join(adapters, "metrics.jsonl")).read()
        size = os.path.getsize(os.path.join(adapters, "adapters.safetensors"))
        # every save of the resumed run hits the limit: SIGXFSZ used to kill it (exit -25) mid-write
        p = lora(adapters, "--resume", ck, limit=size // 2)
        check(p.returncode == 1, f"under ulimit -f: exit {p.returncode}, want 1\n{p.stderr}")
        for n in ("File too large", "ulimit -f", "adapters.safetensors"):
            check(n in p.stderr, f"under ulimit -f: stderr lacks {n!r}:\n{p.stderr}")
        check(not temp_files(adapters), f"temp files left: {temp_files(adapters)}")
        check(digest(ck) == before, "the last good checkpoint changed")
        lines = open(os.path.join(adapters, "metrics.jsonl")).read()
        check(lines.startswith(metrics_before) and lines.endswith("\n") and
              all(json.loads(x) for x in lines.splitlines()), f"metrics.jsonl torn or emptied:\n{lines}")
        print(f"under ulimit -f {size // 2}: exit {p.returncode}: {p.stderr.strip()[-300:]}")
        # what a killed save leaves (a temp file of a dead process, a checkpoint never renamed) is
        # removed by the next run in that folder
        dead = subprocess.Popen(["true"])
        dead.wait()
        stale = [os.path.join(adapters, f"adapters.safetensors.tmp.{dead.pid}"),
                 os.path.join(adapters, "checkpoints", f"0000002.tmp.{dead.pid}")]
        for f in stale:
            open(f, "wb").write(b"partial")
        os.makedirs(os.path.join(adapters, "checkpoints", ".tmp-0000004"))
        p = lora(adapters, "--resume", ck)
        check(p.returncode == 0, f"resume after the limit: exit {p.returncode}\n{p.stderr}")
        check(not temp_files(adapters), f"stale temp files not removed: {temp_files(adapters)}")
        check(p.stdout.count("left by an interrupted save") == 3, f"removals not reported:\n{p.stdout}")
        check(os.path.isdir(os.path.join(adapters, "checkpoints", "0000004")), "the resumed run did not finish")
    elif c == "training":
        # NaN weights: training stops at the first loss, before any adapter file is written
        d = model_copy("nan-weights")
        path = os.path.join(d, "model.safetensors")
        header, blob = st_read(path)
        t = header["model.layers.0.input_layernorm.weight"]
        nan = {"BF16": b"\xc0\x7f", "F16": b"\x00\x7e", "F32": b"\x00\x00\xc0\x7f"}[t["dtype"]]
        b0, b1 = t["data_offsets"]
        blob = blob[:b0] + nan * ((b1 - b0) // len(nan)) + blob[b1:]
        st_write(path, header, blob)
        adapters = os.path.join(a.work, "nan-adapters")
        refused(["lora", "--model", d, "--train", "--data", data, "--iters", "4", "--adapter-path", adapters,
                 "--val-batches", "1", "--num-layers", "-1"], 1, "loss is nan", "before saving anything")
        check(not glob.glob(os.path.join(adapters, "*.safetensors")), "NaN adapters were saved")

        # a checkpoint at or past --iters: said, not silently done
        adapters = os.path.join(a.work, "adapters")
        p = lora(adapters, "--iters", "2")
        check(p.returncode == 0, f"exit {p.returncode}\n{p.stderr}")
        ck = os.path.join(adapters, "checkpoints", "0000002")
        for iters in ("2", "1"):
            refused(["lora", "--model", model, "--train", "--data", data, "--adapter-path", adapters, "--iters", iters,
                     "--num-layers", "-1", "--resume", ck], 1, "is at iteration 2", f"ends at iteration {iters}", "nothing left to train")

        # trainer_state.json type errors name the key and the file
        state = os.path.join(ck, "trainer_state.json")
        good = json.load(open(state))
        for edit, key in [(lambda j: j.update(batch_size="4"), "'batch_size' must be an integer"),
                          (lambda j: j["loop"].update(iteration="x"), "'loop.iteration' must be an integer"),
                          (lambda j: j["loop"].update(report_loss=[1]), "'loop.report_loss' must be a number"),
                          (lambda j: j.pop("optimizer_step"), "missing key 'optimizer_step'")]:
            j = json.loads(json.dumps(good))
            edit(j)
            json.dump(j, open(state, "w"))
            refused(["lora", "--model", model, "--train", "--data", data, "--adapter-path", adapters, "--iters", "4",
                     "--num-layers", "-1", "--resume", ck], 1, key, state)

        # training rows whose fields are not strings: named by file and line
        for name, rows, needle in [
            ("prompt-number", [{"prompt": "a", "completion": "b"}, {"prompt": 5, "completion": "x"}],
             "train.jsonl:2: 'prompt' must be a string, got 5"),
            ("completion-null", [{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": None}],
             "train.jsonl:2: 'completion' must be a string, got null"),
            ("prompt-list", [{"prompt": "a", "completion": "b"}, {"prompt": ["a"], "completion": "b"}],
             "train.jsonl:2: 'prompt' must be a string"),
            ("content-number", [{"messages": [{"role": "user", "content": "a"}]},
                                {"messages": [{"role": "user", "content": 5}]}],
             "train.jsonl:2: 'messages'[0]'s 'content' must be a string or a list of content parts, got 5"),
            ("content-null", [{"messages": [{"role": "user", "content": None}]}],
             "train.jsonl:1: 'messages'[0] (role user) has no 'content'"),
            ("role-list", [{"messages": [{"role": ["user"], "content": "a"}]}],
             "train.jsonl:1: 'messages'[0] needs a string 'role'"),
            ("text-list", [{"text": "a"}, {"text": ["a"]}], "train.jsonl:2: 'text' must be a string"),
        ]:
            dd = os.path.join(a.work, "data-" + name)
            os.makedirs(dd)
            with open(os.path.join(dd, "train.jsonl"), "w") as f:
                for r in rows * 4:
                    f.write(json.dumps(r) + "\n")
            refused(["lora", "--model", model, "--train", "--data", dd, "--iters", "1",
                     "--adapter-path", os.path.join(a.work, "rows-" + name)], 1, needle)
    elif c == "model_files":
        # a tensor the config does not use: refused as mlx-lm's strict load_weights refuses it
        d = model_copy("extra-tensor")
        path = os.path.join(d, "model.safetensors")
        header, blob = st_read(path)
        header["model.layers.9.mlp.gate_proj.weight"] = {"dtype": "F32", "shape": [2, 2],
                                                         "data_offsets": [len(blob), len(blob) + 16]}
        st_write(path, header, blob + b"\0" * 16)
        refused(["generate", "--model", d, "--prompt", "hi", "--max-tokens", "1"], 1,
                "1 tensor is not a parameter of a llama model", "model.layers.9.mlp.gate_proj.weight")
        refused(["inspect", "--model", d], 1, "model.layers.9.mlp.gate_proj.weight")

        # inspect on a broken weights file: an error, not the config's tensor list
        d = model_copy("truncated")
        path = os.path.join(d, "model.safetensors")
        open(path, "r+b").truncate(os.path.getsize(path) // 2)
        refused(["inspect", "--model", d], 1, "[safetensors]", path)
        p = subprocess.run([a.lmtune, "inspect", "--model", model], capture_output=True, text=True, timeout=20)
        check(p.returncode == 0 and "checked against the config" in p.stdout, f"inspect of a good model:\n{p.stdout}")

        # rope: a scaling lmtune cannot honour hidden behind rope_parameters; llama3 without its keys
        for name, cfg, needle in [
            ("yarn-behind-params", {"rope_scaling": {"type": "yarn", "factor": 4.0}},
             "rope_scaling type 'yarn' is not supported"),
            ("types-disagree", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
             "rope_parameters has rope type 'default' but rope_scaling has 'linear'"),
            ("llama3-no-keys", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0}},
             "rope_parameters of type 'llama3' needs 'low_freq_factor'"),
            ("linear-no-factor", {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0}},
             "rope_parameters of type 'linear' needs 'factor'"),
        ]:
            d = model_copy(name, config=cfg)
            refused(["generate", "--model", d, "--prompt", "hi", "--max-tokens", "1"], 1, needle, f"{d}/config.json")

        # two vocab entries with one id
        def dup_id(t):
            t["model"]["vocab"]["<dup>"] = next(iter(t["model"]["vocab"].values()))

        d = model_copy("dup-id", tokenizer=dup_id)
        refused(["tokenize", "--model", d, "--prompt", "hi"], 1, "is given to two tokens", f"{d}/tokenizer.json")
    elif c == "prompt_length":
        # past max_position_embeddings (512): a warning before the prefill, as Hugging Face's
        # tokenizers give, and the run completes
        prompt = "the cat sat on the mat. " * 400
        t0 = time.time()
        p = subprocess.run([a.lmtune, "generate", "--model", model, "--prompt", prompt, "--max-tokens", "2"],
                           capture_output=True, text=True, timeout=120)
        check(p.returncode == 0, f"long prompt: exit {p.returncode}\n{p.stderr}")
        check("longer than the model's context of 512" in p.stderr, f"no warning:\n{p.stderr}")
        print(f"long prompt: {time.time() - t0:.1f} s: {p.stderr.strip()[-300:]}")
        p = subprocess.run([a.lmtune, "generate", "--model", model, "--prompt", "hi", "--max-tokens", "2"],
                           capture_output=True, text=True, timeout=60)
        check(p.returncode == 0 and "Warning" not in p.stderr, f"short prompt warned:\n{p.stderr}")
    else:
        check(False, f"unknown case {c}")
    if FAILS:
        print(f"{len(FAILS)} failure(s)", file=sys.stderr)
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
