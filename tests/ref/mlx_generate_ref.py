"""Greedy generation references from mlx-lm (MLX's CPU backend) for `lmtune` runtime tests.

Usage: mlx_generate_ref.py REF_DIR [--lmtune BIN [--cli-only]]
REF_DIR is what generate_ref.py wrote. For each family folder (llama, qwen2, qwen3, gemma3, smollm3, granite,
olmo2, phi3, mixtral, qwen3_moe, and mistral: a copy of
mistral_window with sliding_window null, see below) this loads the same safetensors folder with mlx_lm.utils.load_model, runs mlx_lm.generate.generate_step
with a greedy sampler (temp 0) on the prompts of ref.json and writes mlx_ref.json (prompts,
outputs); test_mlx_greedy checks lmtune's Generator against it. With --lmtune and REF_DIR/chat_llama3
(the real Llama 3 tokenizer), it also runs mlx_lm.generate and `lmtune generate` on the CLI for the
same raw prompts and compares the generated text (up to the leading space mlx-lm's BPE streaming
detokenizer trims from a generation).

Two config keys mlx-lm 0.32 does not read from transformers 5's config.json are passed to it
explicitly (the weights and every other key stay as written): rope_theta, which transformers 5
nests in rope_parameters (mlx-lm would fall back to 10000). mlx-lm's mistral (its llama code)
ignores sliding_window unless layer_types marks layers "sliding_attention", and it refuses a model
with no "full_attention" layer, so it cannot run generate_ref's all-sliding mistral_window: the
mistral case here is that folder's weights with the window off (the same for both sides).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
from mlx_lm.generate import generate_step
from mlx_lm.utils import load_model

mx.set_default_device(mx.cpu)
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "smollm3", "granite", "olmo2", "phi3", "mixtral", "qwen3_moe")


def config_overrides(d):
    cfg = json.load(open(os.path.join(d, "config.json")))
    over = {}
    rp = cfg.get("rope_parameters") or {}
    if "rope_theta" not in cfg and "rope_theta" in rp:
        over["rope_theta"] = rp["rope_theta"]
    # transformers 5 writes qwen3_moe's num_experts as num_local_experts; mlx-lm reads the Hub's name.
    if cfg.get("model_type") == "qwen3_moe" and "num_experts" not in cfg:
        over["num_experts"] = cfg["num_local_experts"]
    return over


def make_mistral(ref_dir):
    # mistral_window's weights and prompts, full attention (sliding_window null in config.json).
    src, d = os.path.join(ref_dir, "mistral_window"), os.path.join(ref_dir, "mistral")
    os.makedirs(d, exist_ok=True)
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["sliding_window"] = None
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    shutil.copy(os.path.join(src, "model.safetensors"), d)
    ref = json.load(open(os.path.join(src, "ref.json")))
    json.dump({"prompts": ref["prompts"], "outputs": ref["outputs"], "note": "transformers outputs are "
               "mistral_window's (sliding window 6), not comparable here"}, open(os.path.join(d, "ref.json"), "w"))


def greedy(model, ids, n):
    out = []
    for tok, _ in generate_step(mx.array(ids), model, max_tokens=n, sampler=lambda lp: mx.argmax(lp, axis=-1)):
        out.append(int(tok))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ref_dir")
    ap.add_argument("--lmtune")
    ap.add_argument("--cli-only", action="store_true", help="only the CLI comparison (mlx_ref.json untouched)")
    a = ap.parse_args()
    fails = 0
    if not a.cli_only:
        make_mistral(a.ref_dir)
    for fam in () if a.cli_only else FAMILIES:
        d = os.path.join(a.ref_dir, fam)
        ref = json.load(open(os.path.join(d, "ref.json")))
        over = config_overrides(d)
        model, _ = load_model(Path(d), model_config=over)
        outs = [greedy(model, p, len(o)) for p, o in zip(ref["prompts"], ref["outputs"])]
        json.dump({"prompts": ref["prompts"], "outputs": outs, "config_overrides": over},
                  open(os.path.join(d, "mlx_ref.json"), "w"))
        same = sum(o == r for o, r in zip(outs, ref["outputs"]))
        vs = "(transformers ran with the window)" if fam == "mistral" else ""
        print(f"{fam}: mlx-lm greedy equals transformers for {same}/{len(outs)} prompts {vs} "
              f"(config overrides {over}); wrote {d}/mlx_ref.json", file=sys.stderr)
    if a.lmtune:
        from mlx_lm import generate, load
        d = os.path.join(a.ref_dir, "chat_llama3")
        model, tok = load(d, model_config=config_overrides(d))
        for prompt, m in (("hello", 12), ("The capital of France is", 20)):
            ids = tok.encode(prompt)  # what --ignore-chat-template encodes (BOS included)
            want = generate(model, tok, prompt=ids, max_tokens=m, verbose=False)
            got = subprocess.run([a.lmtune, "generate", "--model", d, "--device", "cpu", "--ignore-chat-template",
                                  "--prompt", prompt, "-m", str(m), "--verbose", "False"],
                                 capture_output=True, text=True, check=True).stdout
            # mlx-lm's BPEStreamingDetokenizer drops the generation's leading space (lmtune, like
            # transformers' decode, keeps it): the one difference allowed, and shown.
            got_text = got[:-1] if got.endswith("\n") else got
            ok = got_text == want or (got_text.startswith(" ") and got_text[1:] == want)
            fails += not ok
            print(f"chat_llama3 {prompt!r}: mlx_lm.generate {want!r}, lmtune {got!r}: {'same' if ok else 'DIFFERENT'}",
                  file=sys.stderr)
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
