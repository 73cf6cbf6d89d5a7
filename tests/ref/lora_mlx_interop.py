"""Adapters and test losses between `lmtune lora` and the real mlx-lm (MLX's CPU backend, f32).

Usage: lora_mlx_interop.py --lmtune BIN --model DIR --work DIR --case CASE
DIR is a tiny f32 model with a tokenizer and a chat template (generate_ref.py's chat_llama3: a
2-block llama, hidden 32, with the real Llama 3 vocabulary; or chat_mixtral / chat_qwen3_moe, whose
adapters hold the experts stacked as mlx-lm's SwitchLinear, and where mlx-lm trains no DoRA). Data: small completions jsonl files
written to WORK/data. Cases:

lmtune_to_mlx  `lmtune lora` trains a LoRA and a DoRA adapter (all linear layers of both blocks);
               each loads in mlx-lm (mlx_lm.utils.load's steps with adapter_path, as mlx_lm.generate
               loads it, and once through the `mlx_lm generate` CLI itself) and the greedy text
               (temp 0, the chat template's prompt, up to 32 tokens or an EOS) equals
               `lmtune generate --adapter-path`'s. Each adapted text must differ from the base
               model's text (on both sides), so an ignored adapter fails the case.
mlx_to_lmtune  `mlx_lm lora` (its CLI) trains a LoRA and a DoRA adapter on the same model and data;
               `lmtune generate --adapter-path` gives the same greedy text as mlx-lm with it, and the
               text differs from the base model's.
test_loss      `lmtune lora --test` and `mlx_lm lora --test` on the same model, adapter (trained by
               lmtune), data and batch size, all test batches (--test-batches -1, a test set that is
               a multiple of the batch size, so both cover every example), with and without
               --mask-prompt. mlx-lm's loss mask (tuner/trainer.py: default_loss, `steps <= length`,
               PR #1697) also scores one padding target per row (predicting pad id 0 after the last
               token), and its token count is one per row too high; lmtune does not. The case
               rebuilds mlx-lm's figure from mlx-lm's own model, dataset and batches, split into the
               real targets (sum S over n tokens) and the padding targets (sum P over R rows), and
               checks: (S + P) / (n + R) equals default_loss's figure and mlx_lm.lora --test's
               printed one (1e-5 relative); lmtune's printed figure equals the corrected S / n
               (1e-4 relative, f32 on CPU both sides); and mlx-lm's raw figure differs from S / n
               by more than 10x that tolerance, by exactly the padding-target term.

Greedy texts are compared exactly, except that mlx-lm's BPE streaming detokenizer drops a
generation's leading space (lmtune, like transformers' decode, keeps it). The smallest top-1 vs
top-2 log-probability gap on mlx-lm's greedy path is printed, to show how far from a tie the
comparison is. The printed losses are read back from "Test ppl" (log ppl: %.3f of a number in the
tens of thousands keeps 8+ significant digits; "Test loss" has only 3 decimals); the case fails if
that resolution is not 10x finer than the tolerance.

transformers 5 nests rope_theta in rope_parameters, which mlx-lm 0.32 does not read: when the
model folder has no top-level rope_theta, both tools run on WORK/model, the same files with
rope_theta copied to the top level of config.json.
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path
from checks import FAILS, check

DEFS = {
    "cat": "a small furry animal that purrs", "dog": "a loyal animal that barks",
    "sun": "the star that lights the day", "tree": "a tall plant with a wooden trunk",
    "river": "a stream of water that flows to the sea", "stone": "a hard piece of rock",
    "bird": "an animal with feathers that flies", "cloud": "white water vapour in the sky",
    "hill": "a small mountain", "lake": "a body of still water", "moon": "the bright light of the night sky",
    "rain": "water that falls from clouds", "bread": "food made of flour, water and yeast, baked in an oven",
    "ship": "a large boat that carries people or goods across the sea",
    "clock": "a machine that shows the time", "bell": "a hollow metal cup that rings when struck",
}
TRAIN_WORDS = ["cat", "dog", "sun", "tree", "river", "stone", "bird", "cloud", "hill", "lake", "moon", "rain"]
# 8 records (a multiple of the batch size 4), of several lengths: one batch per length group.
TEST_WORDS = ["bread", "sun", "ship", "hill", "clock", "moon", "bell", "river"]
PROMPT, MAX_TOKENS = "Define cat.", 32
# All linear layers of both blocks (mlx-lm's default keys), rank 8, scale 20 (mlx-lm's defaults).
TRAIN = ["--num-layers", "2", "--batch-size", "4", "--learning-rate", "1e-2", "--seed", "1",
         "--steps-per-report", "10", "--steps-per-eval", "1000", "--save-every", "1000"]
LOSS_TOL, RECON_TOL = 1e-4, 1e-5
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")



def run(cmd, what, raw=False):
    """stdout and stderr; raw: stdout exactly as printed (no newline translation: a generated "\r\n"
    stays; bytes that are not UTF-8 stay distinct from U+FFFD), else with ANSI colours removed."""
    t = time.time()
    p = subprocess.run([str(c) for c in cmd], capture_output=True)
    out, err = (x.decode("utf-8", "surrogateescape") for x in (p.stdout, p.stderr))
    if p.returncode != 0:
        sys.exit(f"FAIL: {what} exited {p.returncode}\n$ {' '.join(map(str, cmd))}\n{out[-3000:]}\n{err[-3000:]}")
    print(f"  [{time.time() - t:5.1f}s] {what}", file=sys.stderr)
    return (out if raw else ANSI.sub("", out)), ANSI.sub("", err)


def write_data(d, with_valid=False):
    os.makedirs(d, exist_ok=True)
    splits = {"train": TRAIN_WORDS, "test": TEST_WORDS}
    if with_valid:
        splits["valid"] = TRAIN_WORDS[:4]
    for name, words in splits.items():
        with open(os.path.join(d, f"{name}.jsonl"), "w") as f:
            for w in words:
                f.write(json.dumps({"prompt": f"Define {w}.", "completion": f"{w}: {DEFS[w]}."}) + "\n")


def model_folder(src, work):
    cfg = json.load(open(os.path.join(src, "config.json")))
    rp = cfg.get("rope_parameters") or {}
    if "rope_theta" in cfg or "rope_theta" not in rp:
        return os.path.abspath(src)
    d = os.path.join(work, "model")
    os.makedirs(d)
    for f in os.listdir(src):
        if f != "config.json":
            os.symlink(os.path.abspath(os.path.join(src, f)), os.path.join(d, f))
    cfg["rope_theta"] = rp["rope_theta"]
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    print(f"model: {src} with rope_theta {rp['rope_theta']} copied to the top level of config.json (for mlx-lm)",
          file=sys.stderr)
    return d


class Ctx:
    def __init__(self, a):
        self.lmtune, self.work = a.lmtune, a.work
        self.model = model_folder(a.model, a.work)
        self.data = os.path.join(a.work, "data")
        self.tok = None

    # ---- lmtune side ----
    def lmtune_train(self, ad, ftype, iters):
        out, _ = run([self.lmtune, "lora", "--model", self.model, "--device", "cpu", "--train", "--data", self.data,
                      "--fine-tune-type", ftype, "--iters", iters, *TRAIN, "--adapter-path", ad],
                     f"lmtune lora --train --fine-tune-type {ftype} --iters {iters}")
        losses = re.findall(r"Train loss (\d+\.\d+)", out)
        print(f"    lmtune {ftype} train losses: {' '.join(losses)}", file=sys.stderr)

    def lmtune_generate(self, ad):
        cmd = [self.lmtune, "generate", "--model", self.model, "--device", "cpu", "-p", PROMPT, "-m", MAX_TOKENS,
               "--temp", "0", "--verbose", "False"]
        if ad:
            cmd += ["--adapter-path", ad]
        out, _ = run(cmd, f"lmtune generate{' --adapter-path ' + os.path.basename(ad) if ad else ''}", raw=True)
        return out[:-1] if out.endswith("\n") else out

    # ---- mlx-lm side, in this process ----
    def mlx_load(self, ad):
        """mlx_lm.utils.load(model, adapter_path=ad)'s steps (load_model, load_adapters, eval,
        load_tokenizer), with the tokenizer (3 s to read) loaded once."""
        import mlx.core as mx
        from mlx_lm.tuner.utils import load_adapters
        from mlx_lm.utils import load_model, load_tokenizer
        mx.set_default_device(mx.cpu)
        model, config = load_model(Path(self.model))
        if ad is not None:
            model = load_adapters(model, ad)
            model.eval()
        if self.tok is None:
            self.tok = load_tokenizer(Path(self.model), None, eos_token_ids=config.get("eos_token_id", None))
        return model, self.tok

    def mlx_generate(self, ad):
        """Greedy text as mlx_lm.generate's main makes it: the chat template with a generation prompt,
        encoded without special tokens, then stream_generate with an argmax sampler."""
        import mlx.core as mx
        from mlx_lm import stream_generate
        model, tok = self.mlx_load(ad)
        prompt = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                         add_generation_prompt=True)
        ids = tok.encode(prompt, add_special_tokens=False)
        text, toks, gap = "", [], math.inf
        for r in stream_generate(model, tok, ids, max_tokens=MAX_TOKENS, sampler=lambda lp: mx.argmax(lp, axis=-1)):
            text += r.text
            if r.finish_reason != "stop":
                toks.append(r.token)
            top2 = mx.topk(r.logprobs, 2).tolist()
            gap = min(gap, abs(top2[1] - top2[0]))
        return text, toks, gap

    def mlx_cli_generate(self, ad):
        out, _ = run([sys.executable, "-m", "mlx_lm", "generate", "--model", self.model, "--adapter-path", ad,
                      "-p", PROMPT, "-m", MAX_TOKENS, "--temp", "0", "--verbose", "False"],
                     f"mlx_lm generate --adapter-path {os.path.basename(ad)} (CLI)", raw=True)
        return out[:-1] if out.endswith("\n") else out

    def mlx_train(self, ad, ftype, iters):
        out, err = run([sys.executable, "-m", "mlx_lm", "lora", "--model", self.model, "--train", "--data", self.data,
                        "--fine-tune-type", ftype, "--iters", iters, *TRAIN, "--adapter-path", ad],
                       f"mlx_lm lora --train --fine-tune-type {ftype} --iters {iters} (CLI)")
        rows = re.findall(r"^\s*(\d+)\s+(\d+\.\d+) [▼▲]", out, re.M)
        print(f"    mlx-lm {ftype} train losses: {' '.join(l for _, l in rows)}", file=sys.stderr)


def same_text(lm, mlx):
    # mlx-lm's BPEStreamingDetokenizer trims the leading space of a generation; lmtune keeps it.
    return lm == mlx or (lm.startswith(" ") and lm[1:] == mlx)


def compare_generation(c, name, ad, base):
    lm = c.lmtune_generate(ad)
    mt, ids, gap = c.mlx_generate(ad)
    ok = check(same_text(lm, mt), f"{name}: lmtune generate {lm!r} != mlx-lm {mt!r}")
    print(f"{name}: greedy {len(ids)} tokens (max {MAX_TOKENS}), smallest top-2 logprob gap on mlx-lm's path "
          f"{gap:.3g}\n  lmtune: {lm!r}\n  mlx-lm: {mt!r}\n  -> {'same' if ok else 'DIFFERENT'}")
    if base is not None:
        check(lm != base[0] and mt != base[1], f"{name}: the adapter does not change the greedy text "
              f"(lmtune {lm == base[0]}, mlx-lm {mt == base[1]})")
        print(f"  adapted text differs from the base model's: lmtune {lm != base[0]}, mlx-lm {mt != base[1]}")
    return lm, mt


def case_generation(c, direction):
    write_data(c.data)
    base = compare_generation(c, "base model", None, None)
    # mlx-lm trains these models at about 2 s per step on 2 CPU cores (MLX's CPU matmul runs at ~3 GFLOP/s
    # here; lmtune at about 0.2 s a step): 4 steps at lr 1e-2 and scale 20 already change the greedy text.
    runs = (("lora", 40), ("dora", 40)) if direction == "lmtune_to_mlx" else (("lora", 4), ("dora", 4))
    cfg = json.load(open(os.path.join(c.model, "config.json")))
    if direction == "mlx_to_lmtune" and cfg["model_type"] in ("mixtral", "qwen3_moe"):
        # mlx-lm's default keys hold the experts (SwitchLinear), which it cannot train with DoRA.
        print("mlx_lm lora --fine-tune-type dora refuses a mixture's experts: LoRA only", file=sys.stderr)
        runs = runs[:1]
    for ftype, iters in runs:
        ad = os.path.join(c.work, f"{direction}_{ftype}")
        if direction == "lmtune_to_mlx":
            c.lmtune_train(ad, ftype, iters)
        else:
            c.mlx_train(ad, ftype, iters)
        cfg = json.load(open(os.path.join(ad, "adapter_config.json")))
        check(cfg["fine_tune_type"] == ftype, f"{ad}: fine_tune_type {cfg['fine_tune_type']}")
        who = "lmtune" if direction == "lmtune_to_mlx" else "mlx-lm"
        _, mt = compare_generation(c, f"{ftype} adapter trained by {who} ({iters} iters)", ad, base)
        if direction == "lmtune_to_mlx" and ftype == "lora":
            cli = c.mlx_cli_generate(ad)
            ok = check(cli == mt, f"mlx_lm generate CLI {cli!r} != mlx_lm.load + stream_generate {mt!r}")
            print(f"  mlx_lm generate CLI prints the same text: {ok}")


# ---- test loss ----
def parse_test(out, who):
    m = re.search(r"Test loss (\d+\.\d+), Test ppl (\d+\.\d+)\.", out)
    if not m:
        sys.exit(f"FAIL: no 'Test loss' line from {who}:\n{out[-2000:]}")
    loss, ppl = float(m.group(1)), float(m.group(2))
    precise = math.log(ppl)
    check(abs(precise - loss) <= 6e-4, f"{who}: log(ppl) {precise} vs printed loss {loss}")
    resolution = 5e-4 / ppl / precise  # relative, of log(ppl) from a ppl rounded to 3 decimals
    check(resolution < LOSS_TOL / 10, f"{who}: Test ppl {ppl} too small to read the loss to {LOSS_TOL / 10:g}")
    return precise, ppl


def mlx_loss_parts(c, ad, mask_prompt, batch_size):
    """mlx-lm's test loss from its own model, dataset and batches, split into real and padding targets."""
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx_lm.tuner.datasets import CacheDataset, load_local_dataset
    from mlx_lm.tuner.trainer import default_loss, iterate_batches
    model, tok = c.mlx_load(ad)
    _, _, test = load_local_dataset(Path(c.data), tok, types.SimpleNamespace(mask_prompt=mask_prompt))
    S = P = 0.0
    n = R = 0
    own_sum, own_tok = 0.0, 0
    for batch, lengths in iterate_batches(CacheDataset(test), batch_size, 2048):
        loss, ntoks = default_loss(model, batch, lengths)
        own_sum += float(loss) * int(ntoks)
        own_tok += int(ntoks)
        logits = model(batch[:, :-1])
        ce = np.array(nn.losses.cross_entropy(logits, batch[:, 1:]).astype(mx.float32), dtype=np.float64)
        steps = np.arange(1, ce.shape[1] + 1)[None, :]
        off, ln = np.array(lengths[:, 0:1]), np.array(lengths[:, 1:])
        real = (steps >= off) & (steps < ln)
        pad = (steps >= off) & (steps == ln)  # target = batch[:, length] = pad id 0
        check(np.all(np.array(batch)[np.arange(len(ln)), ln[:, 0]] == 0), "padding target is not id 0")
        S += float((ce * real).sum())
        P += float((ce * pad).sum())
        n += int(real.sum())
        R += int(pad.sum())
    return dict(S=S, P=P, n=n, R=R, raw=(S + P) / (n + R), fixed=S / n, own=own_sum / own_tok, own_tok=own_tok)


def case_test_loss(c):
    write_data(c.data)
    ad = os.path.join(c.work, "adapter")
    c.lmtune_train(ad, "lora", 20)
    bs = "4"
    for mask in (False, True):
        flags = ["--test", "--data", c.data, "--adapter-path", ad, "--batch-size", bs, "--test-batches", "-1"]
        flags += ["--mask-prompt"] if mask else []
        tag = f"--mask-prompt {'on' if mask else 'off'}"
        out, _ = run([c.lmtune, "lora", "--model", c.model, "--device", "cpu", *flags], f"lmtune lora --test ({tag})")
        lm, lm_ppl = parse_test(out, "lmtune lora --test")
        out, _ = run([sys.executable, "-m", "mlx_lm", "lora", "--model", c.model, *flags],
                     f"mlx_lm lora --test ({tag}) (CLI)")
        mlx, mlx_ppl = parse_test(out, "mlx_lm lora --test")
        p = mlx_loss_parts(c, ad, mask, int(bs))
        rel = lambda x, y: abs(x - y) / abs(y)
        print(f"test loss, {len(TEST_WORDS)} records, batch size {bs}, all batches, {tag}:\n"
              f"  lmtune lora --test            {lm:.7f} (Test ppl {lm_ppl:.3f})\n"
              f"  mlx_lm lora --test (raw)      {mlx:.7f} (Test ppl {mlx_ppl:.3f})\n"
              f"  mlx-lm model, real targets    S/n = {p['S']:.4f}/{p['n']} = {p['fixed']:.7f}  (PR #1697 fixed)\n"
              f"  mlx-lm model, padding targets P/R = {p['P']:.4f}/{p['R']} = {p['P'] / p['R']:.4f} per row\n"
              f"  (S+P)/(n+R) = {p['raw']:.7f}; mlx-lm's default_loss over its batches {p['own']:.7f} "
              f"({p['own_tok']} tokens)\n"
              f"  lmtune vs S/n: rel {rel(lm, p['fixed']):.2e} (tol {LOSS_TOL:g}); mlx-lm CLI vs (S+P)/(n+R): rel "
              f"{rel(mlx, p['raw']):.2e} (tol {RECON_TOL:g}); mlx-lm CLI vs S/n: rel {rel(mlx, p['fixed']):.2e} "
              f"(the padding-target effect)")
        check(p["own_tok"] == p["n"] + p["R"], f"{tag}: default_loss counts {p['own_tok']} tokens, not n + R")
        check(rel(p["own"], p["raw"]) <= RECON_TOL, f"{tag}: default_loss {p['own']} vs (S+P)/(n+R) {p['raw']}")
        check(rel(mlx, p["raw"]) <= RECON_TOL, f"{tag}: mlx_lm lora --test {mlx} vs (S+P)/(n+R) {p['raw']}")
        check(rel(lm, p["fixed"]) <= LOSS_TOL, f"{tag}: lmtune lora --test {lm} vs mlx-lm without the padding "
              f"target {p['fixed']} (rel {rel(lm, p['fixed']):.2e})")
        check(rel(mlx, p["fixed"]) > 10 * LOSS_TOL, f"{tag}: mlx-lm's raw figure {mlx} does not show the padding "
              f"target effect against {p['fixed']}")
        check(rel(lm, mlx) > 10 * LOSS_TOL, f"{tag}: lmtune {lm} equals mlx-lm's raw figure {mlx}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmtune", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--case", required=True, choices=["lmtune_to_mlx", "mlx_to_lmtune", "test_loss"])
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    a.lmtune = os.path.abspath(a.lmtune)
    c = Ctx(a)
    t = time.time()
    if a.case == "test_loss":
        case_test_loss(c)
    else:
        case_generation(c, a.case)
    print(f"{a.case}: {'FAILED' if FAILS else 'ok'} in {time.time() - t:.1f}s")
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
