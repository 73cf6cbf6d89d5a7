"""`lmtune fuse` against the real mlx_lm.fuse (MLX's CPU backend) on the same base and adapter.

Usage: fuse_check.py --lmtune BIN --root REPO --work DIR --case CASE

The base is models/default (bf16, tied embeddings) or its 4-bit conversion (`lmtune convert -q`,
bf16 scales); the adapter is trained by `lmtune lora` on examples/data for 30 iterations at a
high learning rate (so that it changes the greedy text) on the last 2 of the 4 blocks. Each fuse
runs `lmtune fuse ARGS --requantize mlx` and `python -m mlx_lm fuse ARGS` and requires, as tests/ref/convert_check.py
does for convert: both succeed and print the same lines; every tensor bit-identical (names, dtypes,
shapes, bytes); config.json, model.safetensors.index.json, README.md and generation_config.json
byte-identical; the same files but for the tokenizer files transformers re-writes (which must load
to the same ids and chat-template text). Then `lmtune generate` on lmtune's fused folder gives the
same greedy text as `lmtune generate --adapter-path` on the base, and a text that differs from the
base's own (so an adapter ignored by fuse fails the case). A fused model re-quantized after the merge
(q4, q4_dora, mxfp4 without --dequantize) is not W + dW, so there equal greedy text is a near-tie's
luck (it flipped on this VM's CPU): instead its text must differ from the base's and `fuse --data` must
measure >= 90% of the adapter's validation-loss gain kept. Cases:
lora      LoRA (rank 8, scale 20) on the bf16 base.
dora      DoRA on the bf16 base (mlx-lm writes the merged layers in float32: (f32 m / ||W'||) * W').
full      --fine-tune-type full on the last block (lmtune's adapter file holds f32 weights; mlx-lm
          writes them as they are, and so does lmtune).
q4        LoRA trained on the 4-bit base (QLoRA), fused without --dequantize (merged layers
          re-quantized with their own bits and group size) and with --dequantize (dense, no
          quantization keys in config.json).
q4_dora   DoRA on the 4-bit base: mlx-lm re-quantizes the f32 merged weight, so the merged layers'
          scales and biases are f32 beside the others' bf16; lmtune writes the same.
mxfp4     the same on an mxfp4 base (u8 scales; mx.dequantize gives bf16, merged in bf16 and quantized
          again to mxfp4).
families  chat_gemma2 and chat_phi3 (generate_ref.py): a LoRA. chat_mixtral and chat_qwen3_moe (f32,
          4 experts): a LoRA on the attention and
          the experts, merged into mlx-lm's stacked switch_mlp layers (LoRASwitchLinear.fuse), a full
          fine-tune's stacked expert weights, and a LoRA trained on their 4-bit conversion (fused
          re-quantized, and --dequantize with the adapter's greedy text).
refusals  a missing adapter folder, adapter tensors that do not match the model (rank and layers
          edited in adapter_config.json), an existing --save-path, --gguf-path without --export-gguf, an
          unknown --gguf-type, --upload-repo without a token: lmtune exits non-zero naming the reason and
          leaves neither the output nor a
          .tmp folder. mlx-lm's behaviour is recorded beside it where it differs (it writes into an
          existing --save-path).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convert_check as cc  # noqa: E402  (tensors_of, compare_folders, check, FAILS)
from checks import mlx_lm_cli  # noqa: E402

check = cc.check
TRAIN = ["--train", "--device", "cpu", "--num-layers", "2", "--batch-size", "4", "--iters", "30",
         "--learning-rate", "1e-3", "--seed", "3", "--steps-per-report", "100", "--steps-per-eval", "1000",
         "--save-every", "1000"]
PROMPT = "lantern (noun):"  # raw text (--ignore-chat-template): the few-step adapters change it visibly


def run(cmd, env=None):
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def must(r, what):
    if not check(r.returncode == 0, f"{what}: rc {r.returncode}\n{r.stdout[-1500:]}\n{r.stderr[-2500:]}"):
        raise SystemExit(1)
    return r


def train(a, base, tag, ftype):
    ad = os.path.join(a.work, "adapters", tag)
    shutil.rmtree(ad, ignore_errors=True)
    data = os.path.join(a.root, "examples", "data")
    must(run([a.lmtune, "lora", "--model", base, "--data", data, "--fine-tune-type", ftype, "--adapter-path", ad]
             + TRAIN + (["--num-layers", "1"] if ftype == "full" else [])), f"lmtune lora --fine-tune-type {ftype}")
    return ad


def greedy(a, model, adapter=None):
    cmd = [a.lmtune, "generate", "--model", model, "--device", "cpu", "-m", "24", "--temp", "0", "--ignore-chat-template",
           "-p", PROMPT]
    r = must(run(cmd + (["--adapter-path", adapter] if adapter else [])), f"lmtune generate {model}")
    m = re.search(r"==========\n(.*?)\n==========", r.stdout, re.S)
    return m.group(1) if m else None


def fuse_both(a, tag, base, ad, extra=()):
    ours, theirs = os.path.join(a.work, "out", tag + "-lmtune"), os.path.join(a.work, "out", tag + "-mlx")
    for d in (ours, theirs):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(a.work, "out"), exist_ok=True)
    args = ["--model", base, "--adapter-path", ad, *extra]
    # --requantize mlx: mlx-lm's re-quantization of merged layers on a quantized base (lmtune's
    # default keeps small changes instead: tests/ref/fuse_keep_check.py); a no-op on a dense base.
    r1 = run([a.lmtune, "fuse", *args, "--requantize", "mlx", "--save-path", ours])
    r2 = mlx_lm_cli(["fuse", *args, "--save-path", theirs])
    ok = check(r1.returncode == 0, f"{tag}: lmtune fuse {extra}: rc {r1.returncode}\n{r1.stderr[-2000:]}")
    ok &= check(r2.returncode == 0, f"{tag}: mlx_lm fuse {extra}: rc {r2.returncode}\n{r2.stderr[-2000:]}")
    if not ok:
        raise SystemExit(1)
    mlx_lines = [l for l in r2.stdout.splitlines() if "deprecated" not in l]
    check(r1.stdout.splitlines() == mlx_lines, f"{tag}: stdout differs:\n--- lmtune\n{r1.stdout}--- mlx-lm\n{r2.stdout}")
    n = cc.compare_folders(tag, ours, theirs)
    print(f"{tag}: {' '.join(extra) or '(no flags)'}: {n} tensors identical to mlx_lm.fuse's")
    return ours


def same_text_as_adapter(a, tag, base, ad, fused):
    t_base, t_ad, t_fused = greedy(a, base), greedy(a, base, ad), greedy(a, fused)
    print(f"{tag}: base          {t_base!r}\n{tag}: base+adapter  {t_ad!r}\n{tag}: fused         {t_fused!r}")
    check(t_ad is not None and t_ad.strip() != "" and t_fused == t_ad, f"{tag}: the fused model's greedy text {t_fused!r} differs from "
                                                f"generate --adapter-path's {t_ad!r}")
    check(t_ad != t_base, f"{tag}: the adapter does not change the greedy text ({t_base!r}): train it harder")


def keeps_adapter(a, tag, base, ad, fused):
    """A model re-quantized after the merge (mlx-lm's way) is not W + dW: greedy text equal to
    generate --adapter-path's is then a matter of near-ties (this VM's OpenBLAS kernels train a
    slightly different adapter than another CPU's, and one token flipped). What must hold is that
    the merge kept the fine-tune: fuse --data's validation losses put the fused model's gain at
    >= 90% of the adapter's, and its greedy text is no longer the base's."""
    t_base, t_ad, t_fused = greedy(a, base), greedy(a, base, ad), greedy(a, fused)
    print(f"{tag}: base          {t_base!r}\n{tag}: base+adapter  {t_ad!r}\n{tag}: fused         {t_fused!r}"
          f"{'' if t_fused == t_ad else '   (a near-tie flipped; the loss check below decides)'}")
    check(t_ad != t_base, f"{tag}: the adapter does not change the greedy text ({t_base!r}): train it harder")
    check(t_fused is not None and t_fused != t_base, f"{tag}: the fused model answers as the base ({t_base!r})")
    scratch = os.path.join(a.work, "out", tag + "-measure")
    shutil.rmtree(scratch, ignore_errors=True)
    r = must(run([a.lmtune, "fuse", "--model", base, "--adapter-path", ad, "--requantize", "mlx", "--save-path", scratch,
                  "--data", os.path.join(a.root, "examples", "data")]), f"{tag}: lmtune fuse --data")
    m = re.search(r"The fused model keeps (-?[0-9.]+)% of the adapter's gain", r.stdout + r.stderr)
    check(m is not None, f"{tag}: fuse --data printed no kept gain:\n{r.stdout}{r.stderr}")
    if m:
        print(f"{tag}: the fused model keeps {m.group(1)}% of the adapter's validation-loss gain")
        check(float(m.group(1)) >= 90.0, f"{tag}: the re-quantized merge keeps only {m.group(1)}% of the gain")


def dtypes_of(d):
    return {k: v[1] for k, v in cc.tensors_of(d).items()}


def case_dense(a, ftype):
    base = os.path.join(a.root, "models", "default")
    ad = train(a, base, ftype, ftype)
    fused = fuse_both(a, ftype, base, ad)
    dt = dtypes_of(fused)
    merged = sorted(k for k in dt if k.startswith("model.layers.3.") and k.endswith("proj.weight"))
    want = {"lora": "BF16", "dora": "F32", "full": "F32"}[ftype]
    check(merged and all(dt[k] == want for k in merged), f"{ftype}: merged layers' dtypes {[dt[k] for k in merged]}, "
                                                         f"expected {want}")
    check(dt["model.layers.0.self_attn.q_proj.weight"] == "BF16", f"{ftype}: an untouched layer is not bf16")
    same_text_as_adapter(a, ftype, base, ad, fused)


def quantized_base(a, tag, args):
    q = os.path.join(a.work, "default-" + tag)
    if not os.path.isdir(q):
        must(run([a.lmtune, "convert", "--hf-path", os.path.join(a.root, "models", "default"), "--mlx-path", q, "-q",
                  *args]), f"lmtune convert -q {args}")
    return q


def case_quantized(a, tag, args, ftype="lora"):
    base = quantized_base(a, tag, args)
    ad = train(a, base, tag, ftype)
    fused = fuse_both(a, tag, base, ad)
    cfg = json.load(open(os.path.join(fused, "config.json")))
    dt = dtypes_of(fused)
    check("quantization" in cfg and dt.get("model.layers.3.mlp.down_proj.weight") == "U32"
          and "model.layers.3.mlp.down_proj.scales" in dt, f"{tag}: the merged layers are not quantized again")
    want = "F32" if ftype == "dora" else "BF16"
    check(dt.get("model.layers.3.mlp.down_proj.scales") in (want, "U8"), f"{tag}: merged scales are "
          f"{dt.get('model.layers.3.mlp.down_proj.scales')}, expected {want}")
    keeps_adapter(a, tag, base, ad, fused)
    deq = fuse_both(a, tag + "-dequantize", base, ad, ["--dequantize"])
    cfg = json.load(open(os.path.join(deq, "config.json")))
    dt = dtypes_of(deq)
    check("quantization" not in cfg and "quantization_config" not in cfg, f"{tag} --dequantize: quantization keys kept")
    check(not any(k.endswith(".scales") for k in dt) and dt["model.embed_tokens.weight"] == "BF16",
          f"{tag} --dequantize: not dense bf16: {sorted(set(dt.values()))}")
    same_text_as_adapter(a, tag + "-dequantize", base, ad, deq)


def case_families(a):
    # gemma2 and phi3 (sandwich norms, fused layers): a LoRA. generate_ref.py's chat_mixtral and
    # chat_qwen3_moe (f32, 4 experts): LoRA on the attention and
    # the experts (lmtune lora's default keys), merged into mlx-lm's stacked switch_mlp layers as
    # LoRASwitchLinear.fuse does; a full fine-tune's stacked expert weights; the same LoRA trained on
    # a 4-bit base (the experts re-quantized, and --dequantize).
    for fam in ("gemma2", "gemma3mm", "phi3", "mixtral", "qwen3_moe"):
        base = os.path.join(a.models, "chat_" + fam)
        ad = train(a, base, fam, "lora")
        fused = fuse_both(a, fam, base, ad)
        same_text_as_adapter(a, fam, base, ad, fused)
        if fam in ("gemma2", "gemma3mm", "phi3"):
            continue
        check(any(".switch_mlp." in k for k in dtypes_of(fused)), f"{fam}: no stacked expert tensors in the output")
        full = train(a, base, fam + "-full", "full")
        same_text_as_adapter(a, fam + "-full", base, full, fuse_both(a, fam + "-full", base, full))
        q = os.path.join(a.work, fam + "-q4")
        if not os.path.isdir(q):
            must(run([a.lmtune, "convert", "--hf-path", base, "--mlx-path", q, "-q"]), f"lmtune convert -q {fam}")
        qad = train(a, q, fam + "-q4", "lora")
        fuse_both(a, fam + "-q4", q, qad)
        same_text_as_adapter(a, fam + "-q4-dequantize", q, qad, fuse_both(a, fam + "-q4-dequantize", q, qad,
                                                                          ["--dequantize"]))


def case_refusals(a):
    base = os.path.join(a.root, "models", "default")
    ad = train(a, base, "refusals", "lora")
    out = os.path.join(a.work, "out")
    os.makedirs(out, exist_ok=True)
    never = os.path.join(out, "never")
    shutil.rmtree(never, ignore_errors=True)

    def edited(tag, **lp):
        d = os.path.join(a.work, "adapters", "edited-" + tag)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(ad, d)
        p = os.path.join(d, "adapter_config.json")
        c = json.load(open(p))
        for k, v in lp.items():
            if k == "num_layers":
                c["num_layers"] = v
            else:
                c["lora_parameters"][k] = v
        json.dump(c, open(p, "w"))
        return d

    ff = str(json.load(open(os.path.join(base, "config.json")))["intermediate_size"])  # down_proj's input width
    existing = os.path.join(out, "existing")
    shutil.rmtree(existing, ignore_errors=True)
    os.makedirs(existing, exist_ok=True)
    cases = [
        ("missing adapter folder", ["--adapter-path", os.path.join(a.work, "no-such-adapters")],
         r"The adapter path does not exist: .*no-such-adapters"),
        ("rank edited to 4", ["--adapter-path", edited("rank", rank=4)],
         r"incompatible tensors:\n(.*\n)*  model\.layers\.2\.mlp\.down_proj\.lora_a: adapter shape \(" + ff + r", 8\) "
         r"does not match model parameter shape \(" + ff + r", 4\)"),
        ("num_layers edited to 1", ["--adapter-path", edited("layers", num_layers=1)],
         r"model\.layers\.2\.mlp\.down_proj\.lora_a: not an adapter parameter in the model"),
        ("existing --save-path", ["--adapter-path", ad, "--save-path", existing],
         r"Cannot save to the path .*existing as it already exists"),
        # GGUF export itself is tested by tests/ref/gguf_check.py; its flag refusals here.
        ("--gguf-path without --export-gguf", ["--adapter-path", ad, "--gguf-path", "x.gguf"],
         r"--gguf-path names the file of --export-gguf; add --export-gguf"),
        ("--gguf-type q3", ["--adapter-path", ad, "--export-gguf", "--gguf-type", "q3"], r"'q3' is not a GGUF type"),
        ("--upload-repo without a token", ["--adapter-path", ad, "--upload-repo", "me/x"],
         r"--upload-repo: no Hugging Face token to upload me/x"),
    ]
    for what, args, regex in cases:
        if "--save-path" not in args:
            args = args + ["--save-path", never]
        no_token = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
        no_token["HF_TOKEN_PATH"] = os.path.join(a.work, "no-such-token")  # not the real home's token
        r = run([a.lmtune, "fuse", "--model", base, *args], env=no_token)
        check(r.returncode != 0 and re.search(regex, r.stderr),
              f"refusal '{what}': rc {r.returncode}, stderr:\n{r.stderr[-1500:]}\n(expected /{regex}/)")
        print(f"refused: {what}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")
    check(not os.path.exists(never), "a refused fuse left its --save-path")
    check(not [f for f in os.listdir(out) if ".tmp." in f], f"a refused fuse left a .tmp folder: {os.listdir(out)}")
    check(os.listdir(existing) == [], "the refused fuse wrote into the existing --save-path")
    # mlx-lm writes into an existing folder (save_model: mkdir(exist_ok=True)); recorded so a change shows.
    r = mlx_lm_cli(["fuse", "--model", base, "--adapter-path", ad, "--save-path", existing])
    check(r.returncode == 0 and os.path.exists(os.path.join(existing, "model.safetensors")),
          f"mlx_lm.fuse no longer writes into an existing --save-path (rc {r.returncode}): update the README")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lmtune", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--case", required=True, choices=["lora", "dora", "full", "q4", "q4_dora", "mxfp4", "refusals", "families"])
    p.add_argument("--models", help="generate_ref.py's output (the families case)")
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    try:
        if a.case in ("lora", "dora", "full"):
            case_dense(a, a.case)
        elif a.case == "q4":
            case_quantized(a, "q4", [])
        elif a.case == "q4_dora":
            case_quantized(a, "q4_dora", [], "dora")
        elif a.case == "mxfp4":
            case_quantized(a, "mxfp4", ["--q-mode", "mxfp4"])
        elif a.case == "families":
            case_families(a)
        else:
            case_refusals(a)
    except SystemExit:
        pass
    if cc.FAILS:
        print(f"{len(cc.FAILS)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
