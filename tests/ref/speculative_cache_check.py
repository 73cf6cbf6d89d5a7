"""`lmtune generate --draft-model` and prompt cache files (`lmtune cache_prompt`, `generate
--prompt-cache-file`) through the CLI, the cache files against mlx-lm's own (MLX's CPU backend).

Usage: speculative_cache_check.py --lmtune BIN --work DIR --model DIR --case CASE

spec_greedy   temp 0 text with --draft-model equals plain generate's: the model as its own draft (the
              Draft line says 100.0%), its first 2 layers (some proposals accepted, not all) and a tiny
              random llama with the same tokenizer, at --num-draft-tokens 1 to 5; the verbose stats
              lines keep their form.
spec_mlx      the same text as mlx_lm.generate --draft-model (f32 copy of --model, its first 2 layers
              as the draft, the chat template, temp 0).
spec_refused  a draft whose tokenizer has another vocabulary size, --num-draft-tokens 0, --max-kv-size
              with a draft: exit non-zero with a message naming the cause.
cache_mlx     on an f32 copy of --model: a file written by mlx_lm.cache_prompt continues in lmtune
              generate, and one written by lmtune cache_prompt in mlx_lm.generate, with the same text in
              all four runs (and not the text of the new prompt alone); both files have the same tensor
              names, metadata keys and (tokens aside) shapes. Also with --kv-bits 4 --quantized-kv-start 0
              (QuantizedKVCache files).
cache_flags   cache_prompt --eos-token lands in the file's tokenizer_config and generate (lmtune's and
              mlx-lm's) stops on it; --kv-bits / --kv-group-size that disagree with a quantized file
              are refused (as mlx-lm).
cache_refused a file made with another model (layer count), a truncated file, a non-cache safetensors
              file, --model other than the file's, --draft-model with a cache file: each refused naming
              the file or the flags.
"""
import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import FAILS, check  # noqa: E402
from kv_quant_check import f32_copy, run, same, tiny_model  # noqa: E402

PROMPT = "the light of a lamp that"
PREFIX = "Define the word lantern and the word"
SUFFIX = " lamp"


def lmtune(a, args, ok=True):
    r = run([a.lmtune] + args)
    if ok:
        check(r.returncode == 0, f"lmtune {' '.join(args)}: rc {r.returncode}\n{r.stderr[-2000:]}")
    return r


def text_of(r):
    return r.stdout[:-1] if r.stdout.endswith("\n") else r.stdout


def truncated_model(a, n_layer=2):
    """--model's first n_layer layers (same embedding, norm and head): a draft that agrees on some tokens."""
    d = os.path.join(a.work, f"first-{n_layer}-layers")
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(a.model):
        if f.endswith(".json") and f != "config.json":
            shutil.copy(os.path.join(a.model, f), d)
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    cfg["num_hidden_layers"] = n_layer
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    b = open(os.path.join(a.model, "model.safetensors"), "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    meta = h.pop("__metadata__", None)
    keep = {k: v for k, v in h.items() if not (re.match(r"model\.layers\.(\d+)\.", k) and
                                                int(re.match(r"model\.layers\.(\d+)\.", k).group(1)) >= n_layer)}
    out, data, off = {}, [], 0
    for k, v in keep.items():
        lo, hi = v["data_offsets"]
        data.append(b[8 + n + lo:8 + n + hi])
        out[k] = {"dtype": v["dtype"], "shape": v["shape"], "data_offsets": [off, off + hi - lo]}
        off += hi - lo
    if meta is not None:
        out["__metadata__"] = meta
    hb = json.dumps(out).encode()
    hb += b" " * (-len(hb) % 8)
    open(os.path.join(d, "model.safetensors"), "wb").write(struct.pack("<Q", len(hb)) + hb + b"".join(data))
    return d


def spec_greedy(a):
    tiny = tiny_model(a)
    part = truncated_model(a)
    base = ["generate", "--model", a.model, "--device", "cpu", "--temp", "0", "-m", "40", "--ignore-chat-template",
            "-p", PROMPT]
    plain = text_of(lmtune(a, base + ["--verbose", "False"]))
    check(len(plain) > 20, f"plain generate gave little text: {plain!r}")
    for draft, n in [(a.model, 3), (tiny, 1), (tiny, 3), (part, 2), (part, 3), (part, 5), (a.model, 5)]:
        r = lmtune(a, base + ["--draft-model", draft, "--num-draft-tokens", str(n)])
        out = r.stdout
        body = out.split("==========\n")[1] if out.count("==========") >= 2 else ""
        body = body[:-1] if body.endswith("\n") else body
        name = {a.model: "self", tiny: "tiny", part: "first-2-layers"}[draft]
        check(body == plain, f"draft {name} n {n}: {body!r} != plain {plain!r}")
        m = re.search(r"Prompt: \d+ tokens, [\d.]+ tokens-per-sec\nGeneration: 40 tokens, [\d.]+ tokens-per-sec\n"
                      r"Peak memory: [\d.]+ GB\nDraft: (\d+) of (\d+) proposed tokens accepted \(([\d.]+)%\)\n$", out)
        check(m is not None, f"draft {name} n {n}: stats lines not as expected:\n{out[-400:]}")
        if m:
            acc, drafted, pct = int(m.group(1)), int(m.group(2)), float(m.group(3))
            print(f"draft {name} n {n}: {acc}/{drafted} accepted ({pct}%)")
            if name == "self":
                check(acc == drafted and pct == 100.0, f"self-draft n {n}: {acc}/{drafted} accepted")
            elif name == "tiny":
                check(acc < drafted, f"tiny draft n {n}: every proposal accepted ({acc}/{drafted})?")
            else:
                check(0 < acc < drafted, f"{name} n {n}: {acc}/{drafted} accepted; expected some but not all")


def spec_mlx(a):
    m, part = f32_copy(a), truncated_model(a)
    flags = ["--draft-model", part, "--num-draft-tokens", "3", "--temp", "0", "--prompt", "Define: lantern"]
    ours = text_of(lmtune(a, ["generate", "--model", m, "--device", "cpu", "-m", "40", "--verbose", "False"] + flags))
    theirs = mlx_cli(["generate", "--model", m, "--max-tokens", "40", "--verbose", "False"] + flags)
    theirs = theirs[:-1] if theirs.endswith("\n") else theirs
    print(f"lmtune {ours!r}\nmlx-lm {theirs!r}")
    check(len(ours) > 20 and same(ours, theirs), f"--draft-model: lmtune {ours!r} != mlx-lm {theirs!r}")


def spec_refused(a):
    d = os.path.join(a.work, "other-vocab")
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(tiny_model(a), d)
    tj = json.load(open(os.path.join(d, "tokenizer.json")))
    n = max([v for v in tj["model"]["vocab"].values()] + [t["id"] for t in tj.get("added_tokens", [])]) + 1
    tj.setdefault("added_tokens", []).append({"id": n, "content": "<|extra|>", "single_word": False, "lstrip": False,
                                              "rstrip": False, "normalized": False, "special": True})
    json.dump(tj, open(os.path.join(d, "tokenizer.json"), "w"))
    base = ["generate", "--model", a.model, "--device", "cpu", "-m", "4", "-p", PROMPT]
    for extra, want in [(["--draft-model", d], f"tokenizer has {n + 1} tokens, the model's has {n}"),
                        (["--draft-model", a.model, "--num-draft-tokens", "0"], "--num-draft-tokens must be at least 1"),
                        (["--draft-model", a.model, "--max-kv-size", "64"], "--max-kv-size cannot be combined")]:
        r = lmtune(a, base + extra, ok=False)
        check(r.returncode != 0 and want in r.stderr, f"{extra}: rc {r.returncode}, want {want!r} in {r.stderr!r}")


def header(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    meta = h.pop("__metadata__", {})
    return h, meta


def mlx_cli(args):
    r = run([sys.executable, "-m", "mlx_lm"] + args)
    check(r.returncode == 0, f"mlx_lm {' '.join(args)}: rc {r.returncode}\n{r.stderr[-2000:]}")
    return r.stdout


def cache_mlx(a):
    m = f32_copy(a)
    for flags in [[], ["--kv-bits", "4", "--quantized-kv-start", "0"]]:
        tag = "q4" if flags else "dense"
        theirs, ours = os.path.join(a.work, f"mlx-{tag}.safetensors"), os.path.join(a.work, f"lmtune-{tag}.safetensors")
        for f in (theirs, ours):
            if os.path.exists(f):
                os.remove(f)
        mlx_cli(["cache_prompt", "--model", m, "--prompt", PREFIX, "--prompt-cache-file", theirs] + flags)
        out = lmtune(a, ["cache_prompt", "--model", m, "--device", "cpu", "--prompt", PREFIX, "--prompt-cache-file",
                         ours] + flags).stdout
        check(re.search(r"Processed +\d+ tokens .*\nPeak memory: [\d.]+ GB\nSaving...\n$", out) is not None,
              f"lmtune cache_prompt output: {out!r}")
        check(not [f for f in os.listdir(a.work) if f.startswith(f"lmtune-{tag}.safetensors.")],
              "a temporary file was left beside the cache file")
        (ht, mt), (ho, mo) = header(theirs), header(ours)
        check(sorted(ht) == sorted(ho), f"{tag}: tensor names differ: {sorted(ht)} vs {sorted(ho)}")
        check(sorted(mt) == sorted(mo), f"{tag}: metadata keys differ: {sorted(mt)} vs {sorted(mo)}")
        check(all(mt[k] == mo[k] for k in mt if k.startswith("1.") or k.startswith("2.")),
              f"{tag}: class / scalar metadata differ: {mt} vs {mo}")
        for k in ht:
            st, so = ht[k]["shape"], ho.get(k, {}).get("shape")
            ok = so is not None and ht[k]["dtype"] == ho[k]["dtype"] and len(st) == len(so) and \
                (len(st) < 4 or (st[:2] == so[:2] and st[3] == so[3] and st[2] >= so[2]))
            check(ok, f"{tag}: tensor {k}: mlx {ht[k]} vs lmtune {ho.get(k)}")
        gen = ["--prompt", SUFFIX, "--temp", "0"]
        texts = {}
        for name, f in [("mlx file", theirs), ("lmtune file", ours)]:
            texts[f"lmtune <- {name}"] = text_of(lmtune(a, ["generate", "--prompt-cache-file", f, "--device", "cpu",
                                                            "-m", "24", "--verbose", "False"] + gen + flags[:2]))
            out = mlx_cli(["generate", "--prompt-cache-file", f, "--max-tokens", "24", "--verbose", "False"] + gen +
                          flags[:2])
            texts[f"mlx <- {name}"] = out[:-1] if out.endswith("\n") else out
        for k, v in texts.items():
            print(f"{tag} {k}: {v!r}")
        ref = texts["mlx <- mlx file"]
        for k, v in texts.items():
            check(same(v, ref), f"{tag} {k}: {v!r} != mlx <- mlx file {ref!r}")
        alone = text_of(lmtune(a, ["generate", "--model", m, "--device", "cpu", "-m", "24", "--verbose", "False"] + gen))
        check(alone.strip() != ref.strip(), f"{tag}: the cached prefix changes nothing ({alone!r})")


def cache_flags(a):
    f, plain_f = os.path.join(a.work, "eos.safetensors"), os.path.join(a.work, "plain.safetensors")
    base = ["cache_prompt", "--model", a.model, "--device", "cpu", "--prompt", PREFIX, "--prompt-cache-file"]
    lmtune(a, base + [plain_f])
    gen = ["generate", "--device", "cpu", "-m", "24", "--temp", "0", "--verbose", "False", "-p", SUFFIX,
           "--prompt-cache-file"]
    ref = text_of(lmtune(a, gen + [plain_f]))
    # The end token: a word of the plain continuation (past its first three) that is one token of the vocabulary,
    # so the answer with it as --eos-token must stop right before that word's first use.
    vocab = json.load(open(os.path.join(a.model, "tokenizer.json"), encoding="utf-8"))["model"]["vocab"]
    words = [w for w in ref.split(" ")[3:] if w.isalpha() and "\u0120" + w in vocab]
    check(bool(words), f"no one-token word in the plain continuation {ref!r}")
    word = words[0] if words else "person"
    lmtune(a, base + [f, "--eos-token", "\u0120" + word])
    _, meta = header(f)
    check(json.loads(meta.get("0.tokenizer_config", "{}")) == {"trust_remote_code": False, "eos_token": "\u0120" + word},
          f"tokenizer_config metadata: {meta.get('0.tokenizer_config')!r}")
    ours = text_of(lmtune(a, gen + [f]))
    check(ours == ref.split(" " + word)[0], f"--eos-token ' {word}' in the file: {ours!r}, without it {ref!r}")
    out = mlx_cli(["generate", "--prompt-cache-file", f, "--max-tokens", "24", "--temp", "0", "--verbose", "False",
                   "--prompt", SUFFIX])
    check(same(out[:-1] if out.endswith("\n") else out, ours), f"mlx-lm with the eos file: {out!r} != {ours!r}")
    q = os.path.join(a.work, "q4.safetensors")
    lmtune(a, base[:-1] + ["--kv-bits", "4", "--quantized-kv-start", "0", "--prompt-cache-file", q])
    for extra, want in [(["--kv-bits", "8"], "--kv-bits 8 does not match the prompt cache file's 4"),
                        (["--kv-group-size", "32"], "--kv-group-size 32 does not match the prompt cache file's 64")]:
        r = lmtune(a, gen + [q] + extra, ok=False)
        check(r.returncode != 0 and want in r.stderr, f"{extra}: rc {r.returncode}, want {want!r} in {r.stderr!r}")


def cache_refused(a):
    tiny = tiny_model(a)
    f = os.path.join(a.work, "tiny.safetensors")
    lmtune(a, ["cache_prompt", "--model", tiny, "--device", "cpu", "--prompt", PREFIX, "--prompt-cache-file", f])
    good = os.path.join(a.work, "default.safetensors")
    lmtune(a, ["cache_prompt", "--model", a.model, "--device", "cpu", "--prompt", PREFIX, "--prompt-cache-file", good])
    trunc = os.path.join(a.work, "truncated.safetensors")
    data = open(good, "rb").read()
    open(trunc, "wb").write(data[:len(data) // 2])
    plain = os.path.join(a.work, "not-a-cache.safetensors")
    shutil.copy(os.path.join(a.model, "model.safetensors"), plain)
    gen = ["generate", "--device", "cpu", "-m", "4", "-p", SUFFIX, "--prompt-cache-file"]
    for args, want in [
        (["generate", "--device", "cpu", "-m", "4", "-p", SUFFIX, "--model", a.model, "--prompt-cache-file", f],
         f"is not the model the prompt cache file {f}"),
        (gen + [trunc], trunc),
        (gen + [plain, "--model", a.model], f"prompt cache file {plain}: no cache classes"),
        (gen + [good, "--draft-model", a.model], "--draft-model cannot be combined with --prompt-cache-file"),
        (["cache_prompt", "--model", a.model, "--prompt", "x", "--prompt-cache-file", f, "--max-kv-size", "64"],
         "--max-kv-size is not supported by cache_prompt"),
    ]:
        r = lmtune(a, args, ok=False)
        check(r.returncode != 0 and want in r.stderr, f"{args}: rc {r.returncode}, want {want!r} in {r.stderr!r}")
    # The same folder spelled differently is the same model.
    r = lmtune(a, ["generate", "--device", "cpu", "-m", "4", "-p", SUFFIX, "--prompt-cache-file", f,
                   "--model", os.path.join(tiny, ".")], ok=False)
    check(r.returncode == 0, f"the tiny file with its own model (spelled differently): {r.stderr[-1000:]}")
    _, meta = header(f)
    meta["0.model"] = a.model  # the file claims models/default; its 2 layers of head_dim 128 are not
    fake = os.path.join(a.work, "claims-default.safetensors")
    b = open(f, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    h["__metadata__"] = meta
    hb = json.dumps(h).encode()
    hb += b" " * (-len(hb) % 8)
    open(fake, "wb").write(struct.pack("<Q", len(hb)) + hb + b[8 + n:])
    r = lmtune(a, gen + [fake], ok=False)
    check(r.returncode != 0 and f"prompt cache file {fake} holds 2 layers" in r.stderr,
          f"another model's file: rc {r.returncode}, {r.stderr!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmtune", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--case", required=True,
                    choices=["spec_greedy", "spec_mlx", "spec_refused", "cache_mlx", "cache_flags",
                             "cache_refused"])
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    {"spec_greedy": spec_greedy, "spec_mlx": spec_mlx, "spec_refused": spec_refused, "cache_mlx": cache_mlx, "cache_flags": cache_flags,
     "cache_refused": cache_refused}[a.case](a)
    if FAILS:
        print(f"{len(FAILS)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
