"""Hugging Face PEFT adapters in and out of lmtune, against transformers + peft on the CPU in float32.

Usage: peft_check.py --lmtune BIN --root REPO --work DIR --case CASE

Bases: "llama" is models/default loaded by transformers in float32 and saved with save_pretrained
(its tokenizer files copied); "qwen2" is a tiny random Qwen2 (q/k/v biases, 3 blocks) made by
transformers with models/default's tokenizer. Every lmtune command runs with --device cpu --dtype
float32. Losses are compared on WORK/data/test.jsonl: 8 records of random letter strings in mlx-lm's
text format (tokens = the tokenizer's ids + EOS, as mlx-lm's text dataset; 8 so that batches of 4
use them all, as mlx-lm drops a last partial batch). There the loss is high, so the "Test ppl"
lmtune prints with 3 decimals gives its log to better than 1e-7 relative (the case fails if not).
The reference is the token-weighted mean cross-entropy of the transformers model (with the peft
adapter) over the same tokens. LOSS_TOL (relative) is the f32 tolerance; the base model's loss is
compared too (so the tokens are the same) and the adapter must move the loss by more than 100x the
tolerance (so an ignored adapter, a wrong scale or layout fails). Greedy texts (24 tokens, raw
prompt) must be equal, and differ from the base model's. Cases:
export_lora        `lmtune lora` trains a LoRA (last 2 of 4 blocks, so layers_to_transform is
                   written) on examples/data; `lmtune export-peft` writes a PEFT folder;
                   PeftModel.from_pretrained loads it on the transformers model: its loss and greedy
                   text equal lmtune's with the lmtune folder, and lmtune reading the exported folder
                   back gives the same loss as the original folder. Each export's README.md (the
                   model card peft's save_pretrained writes) read by huggingface_hub's ModelCard:
                   base_model, library_name peft, pipeline_tag, peft's tags, rank and alpha.
export_dora        the same with --fine-tune-type dora (lora_magnitude_vector) and a
                   --base-model-name that YAML must quote.
export_qwen2       the same with a LoRA on the qwen2 base (last 2 of 3 blocks).
export_mlx_dora    a DoRA trained by the real mlx_lm.lora (MLX's CPU backend; last 2 blocks),
                   exported by lmtune and loaded by peft, against lmtune with the mlx-lm folder.
import_lora        peft's get_peft_model (list target_modules, every block, random non-zero lora_B)
                   saved by save_pretrained: lmtune --adapter-path on the folder gives peft's loss
                   and greedy text, and `lmtune fuse --adapter-path` gives merge_and_unload()'s
                   weights (rel 1e-5 + abs 1e-6 per element; adapted layers must differ from the
                   base) and a fused model with the adapter's greedy text.
import_dora        the same with use_dora (magnitudes moved away from the row norms).
import_rslora      use_rslora (scale = alpha / sqrt(r); r 6, alpha 12) and layers_to_transform [2, 3]
                   (the last two blocks).
import_qwen2_dora  DoRA on the qwen2 base (biased q/k/v: the bias is added after DoRA's rescale),
                   a regex target_modules.
import_q4_dora     a peft DoRA adapter on the llama quantized by `lmtune convert -q` (4 bits, group
                   64; f32 scales): lmtune --adapter-path on the 4-bit folder against transformers +
                   peft on its dequantization (`lmtune convert -d`, which equals mx.dequantize bit
                   for bit: tests/convert), the weights QLoRA computes with.
resume             `lora --train --resume-adapter-file PEFT_FOLDER` (and .../adapter_model.safetensors):
                   its first validation loss (metrics.jsonl, before the first update) equals `lora
                   --test --adapter-path PEFT_FOLDER` on the same records and differs from the
                   base's; a scale that differs from the adapter's is refused naming
                   lora_parameters.scale.
refusals           bad PEFT folders, each refused by generate and fuse (the first also by chat,
                   benchmark and lora --test) with a message naming the field, tensor or file; bad
                   exports; no output and no .tmp folder left.
"""
import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from checks import FAILS, check

LOSS_TOL = 2e-6


def run(cmd):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True)


def must(r, what):
    if r.returncode != 0:
        print(f"FAIL: {what}: rc {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        sys.exit(1)
    return r


CPU = ["--device", "cpu", "--dtype", "float32"]
PROMPT = "lantern (noun):"


# ---- models and data ----
def tokenizer_files(src, dst):
    for f in os.listdir(src):
        if f.startswith("tokenizer") or f.endswith(".jinja"):
            shutil.copy(os.path.join(src, f), dst)


def make_base(a, kind):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM
    d = os.path.join(a.work, kind)
    if os.path.isdir(d):
        return d
    default = os.path.join(a.root, "models", "default")
    tmp = d + ".part"
    shutil.rmtree(tmp, ignore_errors=True)
    if kind == "llama":
        m = AutoModelForCausalLM.from_pretrained(default, dtype=torch.float32)
    else:
        torch.manual_seed(7)
        cfg = Qwen2Config(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          tie_word_embeddings=False, bos_token_id=None, eos_token_id=1)
        cfg.eos_token_id = json.load(open(os.path.join(default, "config.json")))["eos_token_id"]
        m = Qwen2ForCausalLM(cfg).to(torch.float32)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if n.endswith("bias"):
                    p.normal_(0, 0.2)
    m.save_pretrained(tmp)
    tokenizer_files(default, tmp)
    os.rename(tmp, d)
    return d


def write_data(a):
    d = os.path.join(a.work, "data")
    if os.path.isdir(d):
        return d
    rng = random.Random(5)
    letters = "abcdefghijklmnopqrstuvwxyz"
    rows = [{"text": " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 7)))
                              for _ in range(rng.randint(12, 30)))} for _ in range(8)]
    os.makedirs(d + ".part", exist_ok=True)
    for split in ("train", "valid", "test"):
        with open(os.path.join(d + ".part", split + ".jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    os.rename(d + ".part", d)
    return d


# ---- the reference: transformers (+ peft) ----
def hf_model(base, peft_dir=None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    m = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if peft_dir:
        from peft import PeftModel
        m = PeftModel.from_pretrained(m, peft_dir)
    m.eval()
    return m, AutoTokenizer.from_pretrained(base)


def hf_loss(m, tok, data):
    import torch
    total, count = 0.0, 0
    for line in open(os.path.join(data, "test.jsonl")):
        ids = tok(json.loads(line)["text"])["input_ids"]
        if ids[-1] != tok.eos_token_id:
            ids.append(tok.eos_token_id)
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = m(input_ids=x[:, :-1]).logits[0].double()
        total += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
        count += len(ids) - 1
    return total / count


def hf_greedy(m, tok):
    import torch
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


# ---- lmtune ----
def lm_loss(a, base, data, adapter):
    r = must(run([a.lmtune, "lora", "--model", base, "--test", "--data", data, "--adapter-path", adapter or "",
                  "--batch-size", "4", "--test-batches", "-1", *CPU]), f"lmtune lora --test --adapter-path {adapter}")
    m = re.search(r"Test loss (\d+\.\d+), Test ppl (\d+\.\d+)\.", r.stdout)
    if not check(m is not None, f"no Test loss line:\n{r.stdout[-1500:]}"):
        sys.exit(1)
    loss, ppl = float(m.group(1)), float(m.group(2))
    precise = math.log(ppl)
    check(abs(precise - loss) <= 6e-4, f"log(Test ppl) {precise} vs Test loss {loss}")
    check(5e-4 / ppl / precise < LOSS_TOL / 10, f"Test ppl {ppl} too small to read the loss to {LOSS_TOL / 10:g}")
    return precise


def lm_greedy(a, base, adapter=None):
    cmd = [a.lmtune, "generate", "--model", base, *CPU, "-m", "24", "--temp", "0", "--ignore-chat-template", "-p", PROMPT]
    r = must(run(cmd + (["--adapter-path", adapter] if adapter else [])), f"lmtune generate --adapter-path {adapter}")
    m = re.search(r"==========\n(.*?)\n==========", r.stdout, re.S)
    return m.group(1) if m else None


def rel(x, y):
    return abs(x - y) / abs(y)


def compare(a, tag, base, data, lm_adapter, peft_dir, hf_base=None):
    """lmtune with lm_adapter against transformers + peft with peft_dir (on hf_base, default base): loss
    and greedy text."""
    hf_base = hf_base or base
    m0, tok = hf_model(hf_base)
    ref_base = hf_loss(m0, tok, data)
    ours_base = lm_loss(a, base, data, None)
    m, tok = hf_model(hf_base, peft_dir)
    ref = hf_loss(m, tok, data)
    ours = lm_loss(a, base, data, lm_adapter)
    print(f"{tag}: test loss base lmtune {ours_base:.9f} transformers {ref_base:.9f} (rel {rel(ours_base, ref_base):.1e}); "
          f"adapter lmtune {ours:.9f} transformers+peft {ref:.9f} (rel {rel(ours, ref):.1e}, tol {LOSS_TOL:g})")
    check(rel(ours_base, ref_base) <= LOSS_TOL, f"{tag}: base loss {ours_base} vs transformers {ref_base}")
    check(rel(ours, ref) <= LOSS_TOL, f"{tag}: adapter loss {ours} vs transformers+peft {ref}")
    check(rel(ref, ref_base) > 100 * LOSS_TOL, f"{tag}: the adapter moves the loss too little ({ref} vs {ref_base})")
    t_ref, t_ours = hf_greedy(m, tok), lm_greedy(a, base, lm_adapter)
    t_base = lm_greedy(a, base)
    print(f"{tag}: greedy base {t_base!r}\n{tag}: greedy lmtune {t_ours!r}\n{tag}: greedy peft   {t_ref!r}")
    check(t_ours == t_ref, f"{tag}: greedy text {t_ours!r} != transformers+peft {t_ref!r}")
    check(t_ours != t_base, f"{tag}: the adapter does not change the greedy text ({t_base!r})")
    return ours


def train_lmtune(a, base, tag, ftype, num_layers="2"):
    ad = os.path.join(a.work, "adapters", tag)
    shutil.rmtree(ad, ignore_errors=True)
    must(run([a.lmtune, "lora", "--model", base, "--data", os.path.join(a.root, "examples", "data"), "--train",
              "--fine-tune-type", ftype, "--adapter-path", ad, *CPU, "--num-layers", num_layers, "--batch-size", "4",
              "--iters", "30", "--learning-rate", "1e-3", "--seed", "3", "--steps-per-report", "100",
              "--steps-per-eval", "1000", "--save-every", "1000"]), f"lmtune lora --fine-tune-type {ftype}")
    return ad


def export(a, base, ad, tag, name=None):
    out = os.path.join(a.work, "peft", tag)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    extra = ["--base-model-name", name] if name else []
    r = must(run([a.lmtune, "export-peft", "--model", base, "--adapter-path", ad, "--save-path", out, *extra]),
             "export-peft")
    print(f"{tag}: {r.stdout.strip()}")
    check(sorted(os.listdir(out)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"],
          f"{tag}: export wrote {sorted(os.listdir(out))}")
    check_card(out, name or base, tag)
    return out


def check_card(out, base, tag):
    """README.md read by huggingface_hub's ModelCard (the parser of the Hub and of peft's
    create_or_update_model_card): the front matter peft's save_pretrained writes."""
    from huggingface_hub import ModelCard
    cfg = json.load(open(os.path.join(out, "adapter_config.json")))
    card = ModelCard.load(os.path.join(out, "README.md"))
    d = card.data.to_dict()
    print(f"{tag}: README.md front matter {json.dumps(d)}")
    check(d.get("base_model") == base == cfg["base_model_name_or_path"],
          f"{tag}: README.md base_model {d.get('base_model')!r}, expected {base!r}")
    check(d.get("library_name") == "peft" and d.get("pipeline_tag") == "text-generation",
          f"{tag}: README.md library_name / pipeline_tag {d}")
    check({"lora", "transformers", f"base_model:adapter:{base}"} <= set(d.get("tags", [])), f"{tag}: README.md tags {d}")
    kind = "DoRA" if cfg["use_dora"] else "LoRA"
    check(f"{kind} of rank {cfg['r']}, lora_alpha {cfg['lora_alpha']}" in card.text and
          "PeftModel.from_pretrained(base" in card.text, f"{tag}: README.md body {card.text[:400]!r}")


def case_lmtune(a, kind, ftype, tag):
    base, data = make_base(a, kind), write_data(a)
    ad = train_lmtune(a, base, tag, ftype)
    # A --base-model-name that YAML must quote (": ", "#") lands in README.md's base_model unchanged.
    out = export(a, base, ad, tag, name="my-org/tiny: llama #2" if ftype == "dora" else None)
    cfg = json.load(open(os.path.join(out, "adapter_config.json")))
    n = json.load(open(os.path.join(base, "config.json")))["num_hidden_layers"]
    print(f"{tag}: adapter_config.json {json.dumps({k: cfg[k] for k in ('r', 'lora_alpha', 'use_dora', 'target_modules', 'layers_to_transform')})}")
    check(cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and cfg["use_dora"] == (ftype == "dora")
          and cfg["r"] == 8 and cfg["lora_alpha"] == 160 and cfg["layers_to_transform"] == [n - 2, n - 1],
          f"{tag}: adapter_config.json {cfg}")
    ours = compare(a, tag, base, data, ad, out)
    back = lm_loss(a, base, data, out)
    check(back == ours, f"{tag}: lmtune on the exported PEFT folder {back} != on its own folder {ours}")
    print(f"{tag}: lmtune reads the exported folder back: loss {back:.9f} (equal: {back == ours})")


def case_export_mlx(a, tag):
    """An adapter trained by the real mlx_lm.lora, exported by lmtune export-peft, loaded by peft."""
    base, data = make_base(a, "llama"), write_data(a)
    # mlx-lm 0.32 reads rope_theta only at the top level of config.json (transformers 5 nests it).
    mbase = os.path.join(a.work, "llama-for-mlx")
    shutil.rmtree(mbase, ignore_errors=True)
    shutil.copytree(base, mbase)
    cfg = json.load(open(os.path.join(mbase, "config.json")))
    cfg.setdefault("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    json.dump(cfg, open(os.path.join(mbase, "config.json"), "w"))
    ad = os.path.join(a.work, "adapters", tag)
    shutil.rmtree(ad, ignore_errors=True)
    # 6 steps at lr 3e-3: MLX's CPU backend takes ~4 s a step on models/default here (its matmul runs at
    # ~3 GFLOP/s); the adapter must still move the loss and the greedy text (compare() checks both).
    must(run([sys.executable, "-m", "mlx_lm", "lora", "--model", mbase, "--train", "--data",
              os.path.join(a.root, "examples", "data"), "--fine-tune-type", "dora", "--adapter-path", ad,
              "--num-layers", "2", "--batch-size", "4", "--iters", "6", "--learning-rate", "3e-3", "--seed", "3",
              "--steps-per-report", "100", "--steps-per-eval", "1000", "--val-batches", "1", "--save-every", "1000"]),
         "mlx_lm lora --fine-tune-type dora")
    check(json.load(open(os.path.join(ad, "adapter_config.json")))["fine_tune_type"] == "dora", f"{tag}: not dora")
    out = export(a, base, ad, tag)
    compare(a, tag, base, data, ad, out)


def make_peft(a, base, tag, dora=False, rslora=False, target=("q_proj", "v_proj", "down_proj"), layers=None,
              alpha=16, r=8):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    out = os.path.join(a.work, "peft", tag)
    shutil.rmtree(out, ignore_errors=True)
    torch.manual_seed(11)
    m = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    kw = dict(layers_to_transform=layers, layers_pattern="layers") if layers else {}
    pc = LoraConfig(r=r, lora_alpha=alpha, target_modules=target if isinstance(target, str) else list(target),
                    use_dora=dora, use_rslora=rslora, init_lora_weights=False, task_type="CAUSAL_LM", **kw)
    pm = get_peft_model(m, pc)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.mul_(10.0)
        if dora:  # magnitudes made from the scaled B, then moved away from the row norms
            for mod in pm.modules():
                if hasattr(mod, "lora_magnitude_vector") and "default" in mod.lora_magnitude_vector:
                    w = mod.get_base_layer().weight
                    delta = mod.lora_B["default"].weight @ mod.lora_A["default"].weight
                    norm = torch.linalg.norm(w + mod.scaling["default"] * delta, dim=1)
                    mv = mod.lora_magnitude_vector["default"].weight
                    mv.copy_(norm * (1 + 0.2 * torch.randn_like(norm)))
    pm.save_pretrained(out)
    return out


def fuse_vs_merge(a, tag, base, peft_dir):
    import torch
    from safetensors.torch import load_file
    fused = os.path.join(a.work, "fused", tag)
    shutil.rmtree(fused, ignore_errors=True)
    os.makedirs(os.path.dirname(fused), exist_ok=True)
    must(run([a.lmtune, "fuse", "--model", base, "--adapter-path", peft_dir, "--save-path", fused]), "lmtune fuse")
    m, _ = hf_model(base, peft_dir)
    merged = {k: v for k, v in m.merge_and_unload().state_dict().items()}
    m0, _ = hf_model(base)
    orig = m0.state_dict()
    ours = {}
    for f in os.listdir(fused):
        if f.endswith(".safetensors"):
            ours.update(load_file(os.path.join(fused, f)))
    worst, changed = 0.0, 0
    for k, v in ours.items():
        if not check(k in merged, f"{tag}: fused tensor {k} not in the merged model"):
            continue
        ref = merged[k]
        check(v.dtype == torch.float32 and v.shape == ref.shape, f"{tag}: {k}: {v.dtype} {tuple(v.shape)} vs {tuple(ref.shape)}")
        err = ((v - ref).abs() - (1e-6 + 1e-5 * ref.abs())).max().item()
        worst = max(worst, ((v - ref).abs() / (1e-6 + 1e-5 * ref.abs())).max().item())
        check(err <= 0, f"{tag}: {k} differs from merge_and_unload's by {(v - ref).abs().max().item():.3e}")
        if not torch.equal(ref, orig[k]):
            changed += 1
            check((v - orig[k]).abs().max().item() > 1e-4, f"{tag}: {k}: the fused weight did not move")
    check(set(ours) == {k for k in merged if k in ours} and changed > 0, f"{tag}: no merged layer ({changed})")
    print(f"{tag}: lmtune fuse: {len(ours)} tensors equal merge_and_unload's ({changed} merged; worst error "
          f"{worst:.2f} of the tolerance 1e-6 + 1e-5 |ref|)")
    return fused


def case_peft(a, kind, tag, **kw):
    base, data = make_base(a, kind), write_data(a)
    peft_dir = make_peft(a, base, tag, **kw)
    cfg = json.load(open(os.path.join(peft_dir, "adapter_config.json")))
    print(f"{tag}: peft config {json.dumps({k: cfg[k] for k in ('r', 'lora_alpha', 'use_dora', 'use_rslora', 'target_modules', 'layers_to_transform')})}")
    compare(a, tag, base, data, peft_dir, peft_dir)
    fused = fuse_vs_merge(a, tag, base, peft_dir)
    t_fused, t_ad = lm_greedy(a, fused), lm_greedy(a, base, peft_dir)
    check(t_fused == t_ad, f"{tag}: fused greedy {t_fused!r} != --adapter-path's {t_ad!r}")


def case_q4(a, tag):
    base, data = make_base(a, "llama"), write_data(a)
    q4, deq = os.path.join(a.work, "llama-q4"), os.path.join(a.work, "llama-q4-dequantized")
    for d in (q4, deq):
        shutil.rmtree(d, ignore_errors=True)
    must(run([a.lmtune, "convert", "--hf-path", base, "--mlx-path", q4, "-q"]), "lmtune convert -q")
    must(run([a.lmtune, "convert", "--hf-path", q4, "--mlx-path", deq, "-d"]), "lmtune convert -d")
    peft_dir = make_peft(a, base, tag, dora=True)
    compare(a, tag, q4, data, peft_dir, peft_dir, hf_base=deq)


def case_resume(a):
    base, data = make_base(a, "llama"), write_data(a)
    peft_dir = make_peft(a, base, "resume")  # r 8, alpha 16: scale 2
    want = lm_loss(a, base, data, peft_dir)
    plain = lm_loss(a, base, data, None)

    def first_val(resume, scale=2.0):
        ad = os.path.join(a.work, "adapters", "resume")
        shutil.rmtree(ad, ignore_errors=True)
        y = os.path.join(a.work, "resume.yaml")
        with open(y, "w") as f:
            f.write(f"lora_parameters: {{rank: 8, scale: {scale}, dropout: 0.0, "
                    "keys: [self_attn.q_proj, self_attn.v_proj, mlp.down_proj]}\n")
        r = run([a.lmtune, "lora", "--model", base, "--train", "--data", data, "-c", y, "--num-layers", "-1",
                 "--adapter-path", ad, "--resume-adapter-file", resume, "--iters", "1", "--batch-size", "4",
                 "--val-batches", "-1", "--steps-per-eval", "1", *CPU])
        if r.returncode != 0:
            return r, None
        m = [json.loads(l) for l in open(os.path.join(ad, "metrics.jsonl")) if "val_loss" in l]
        return r, m[0]["val_loss"]

    for resume in (peft_dir, os.path.join(peft_dir, "adapter_model.safetensors")):
        r, vl = first_val(resume)
        must(r, f"lora --resume-adapter-file {resume}")
        print(f"resume from {resume}: first val loss {vl:.9f}; lora --test --adapter-path: {want:.9f} "
              f"(rel {rel(vl, want):.1e}); base {plain:.9f}")
        check(rel(vl, want) <= LOSS_TOL, f"resume {resume}: first val loss {vl} != test loss {want}")
        check(rel(vl, plain) > 100 * LOSS_TOL, f"resume {resume}: the val loss is the base's ({plain})")
    r, _ = first_val(peft_dir, scale=20.0)
    check(r.returncode != 0 and re.search(r"lora_parameters\.scale: the training's 20, the PEFT adapter's 2", r.stderr),
          f"resume with another scale not refused as expected:\n{r.stderr[-1500:]}")
    print(f"refused: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")


def case_refusals(a):
    import torch
    from safetensors.torch import load_file, save_file
    base = make_base(a, "llama")
    good = make_peft(a, base, "refusals")
    out = os.path.join(a.work, "out")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    never = os.path.join(out, "never")

    def edited(tag, cfg=None, tensors=None, drop=None):
        d = os.path.join(a.work, "peft", "bad-" + tag)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(good, d)
        p = os.path.join(d, "adapter_config.json")
        c = json.load(open(p))
        c.update(cfg or {})
        json.dump(c, open(p, "w"))
        if tensors:
            t = load_file(os.path.join(d, "adapter_model.safetensors"))
            tensors(t)
            save_file(t, os.path.join(d, "adapter_model.safetensors"))
        for f in drop or []:
            os.remove(os.path.join(d, f))
        return d

    def rank4(t):
        for k in list(t):
            if "layers.1.self_attn.q_proj.lora_A" in k:
                t[k] = t[k][:4].contiguous()

    def drop_top(t):
        for k in list(t):
            if ".layers.2." in k or ".layers.3." in k:
                del t[k]

    def add_layer7(t):
        for k in list(t):
            if ".layers.3." in k:
                t[k.replace(".layers.3.", ".layers.7.")] = t[k].clone()

    def bin_only(d):
        sd = load_file(os.path.join(d, "adapter_model.safetensors"))
        torch.save(sd, os.path.join(d, "adapter_model.bin"))

    width = str(json.load(open(os.path.join(base, "config.json")))["hidden_size"])  # q_proj's input width
    cases = [
        ("rank mismatch (r 8, a lora_A of rank 4)", edited("rank", tensors=rank4),
         r"layers\.1\.self_attn\.q_proj\.lora_A\.weight: rank 4 \(shape \(4, " + width + r"\)\) but adapter_config\.json "
         r"has r = 8"),
        ("config r edited to 4", edited("r4", cfg={"r": 4}), r"lora_A\.weight: rank 8 .* has r = 4"),
        ("an adapter for a shallower model", edited("shallow", tensors=drop_top),
         r"no tensors for layers 2\.\.3: the model has 4 layers and the adapter stops at layer 1"),
        ("an adapter for a deeper model", edited("deep", tensors=add_layer7),
         r"tensors of layers up to 7, but the model has 4 layers"),
        ("peft_type LOHA", edited("loha", cfg={"peft_type": "LOHA"}), r"peft_type = \"LOHA\": lmtune reads LoRA and DoRA"),
        ("bias all", edited("bias", cfg={"bias": "all"}), r"bias = \"all\": lmtune's adapters train no biases"),
        ("modules_to_save", edited("mts", cfg={"modules_to_save": ["lm_head"]}), r"modules_to_save = \[\"lm_head\"\]"),
        ("fan_in_fan_out", edited("fifo", cfg={"fan_in_fan_out": True}), r"fan_in_fan_out = true"),
        ("rank_pattern", edited("rp", cfg={"rank_pattern": {"q_proj": 4}}), r"rank_pattern = .*one rank"),
        ("alpha_pattern", edited("ap", cfg={"alpha_pattern": {"q_proj": 4}}), r"alpha_pattern = .*one scale"),
        ("target lm_head", edited("head", cfg={"target_modules": ["q_proj", "lm_head"]}),
         r"target_modules = .*selects lm_head, and lmtune adapts only the linear layers inside the blocks"),
        ("target embed_tokens", edited("embed", cfg={"target_modules": "model\\.embed_tokens|.*q_proj"}),
         r"target_modules = .*selects model\.embed_tokens"),
        ("layers_to_transform not the last blocks", edited("first", cfg={"layers_to_transform": [0, 1],
                                                                         "layers_pattern": "layers"}),
         r"layers_to_transform = \[0,1\]: it adapts blocks 0, 1 of 4; lmtune adapts the last N blocks"),
        ("layers_to_transform beyond the model", edited("l9", cfg={"layers_to_transform": [9]}),
         r"layers_to_transform = \[9\]: names layer 9 but the model has 4 layers"),
        ("exclude_modules", edited("ex", cfg={"exclude_modules": ["v_proj"]}), r"exclude_modules = .*cannot express"),
        ("an unknown option", edited("unk", cfg={"new_thing": 3}), r"new_thing = 3: an option lmtune does not know"),
        ("use_dora without magnitudes", edited("nomag", cfg={"use_dora": True}),
         r"layers\.0\.mlp\.down_proj\.lora_magnitude_vector: missing"),
        ("no adapter_model.safetensors", edited("nofile", drop=["adapter_model.safetensors"]),
         r"has no adapter_model\.safetensors$"),
        ("no adapter_config.json", edited("nocfg", drop=["adapter_config.json"]), r"cannot open .*adapter_config\.json"),
    ]
    # The other commands that take --adapter-path read a PEFT folder through the same loader.
    data = write_data(a)
    for cmd in (["chat", "--model", base, *CPU, "--adapter-path", cases[0][1]],
                ["benchmark", "--model", base, *CPU, "-p", "4", "-g", "2", "-n", "1", "--adapter-path", cases[0][1]],
                ["lora", "--model", base, *CPU, "--test", "--data", data, "--adapter-path", cases[0][1]]):
        r = subprocess.run([a.lmtune, *cmd], input="hello\nq\n", capture_output=True, text=True)
        check(r.returncode != 0 and re.search(cases[0][2], r.stderr),
              f"lmtune {cmd[0]} --adapter-path {cases[0][0]}: rc {r.returncode}, stderr:\n{r.stderr[-1500:]}")
        print(f"refused: lmtune {cmd[0]}: {cases[0][0]}")
    for cmd in (["benchmark", "--model", base, *CPU, "-p", "4", "-g", "2", "-n", "1", "--adapter-path", good],):
        must(run([a.lmtune, *cmd]), f"lmtune {cmd[0]} --adapter-path PEFT")
    d = edited("bin")
    bin_only(d)
    os.remove(os.path.join(d, "adapter_model.safetensors"))
    cases.append(("adapter_model.bin only", d, r"adapter_model\.bin, a pickle lmtune does not read"))
    for what, ad, regex in cases:
        for cmd in (["generate", "--model", base, *CPU, "-p", "x", "-m", "2", "--adapter-path", ad],
                    ["fuse", "--model", base, "--adapter-path", ad, "--save-path", never]):
            r = run([a.lmtune, *cmd])
            check(r.returncode != 0 and re.search(regex, r.stderr, re.M),
                  f"{what}: lmtune {cmd[0]}: rc {r.returncode}, stderr:\n{r.stderr[-1500:]}\n(expected /{regex}/)")
        print(f"refused: {what}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")
    # export-peft: an existing save path; a full fine-tune; a missing adapter folder.
    existing = os.path.join(out, "existing")
    os.makedirs(existing)
    full = train_lmtune(a, base, "full", "full", num_layers="1")
    for what, args, regex in [
        ("existing --save-path", ["--adapter-path", good, "--save-path", existing], r"Cannot save to the path .*existing"),
        ("a full fine-tune", ["--adapter-path", full, "--save-path", never], r"a full fine-tune has no PEFT LoRA form"),
        ("missing adapter folder", ["--adapter-path", os.path.join(a.work, "nope"), "--save-path", never],
         r"The adapter path does not exist"),
        ("a bad PEFT folder", ["--adapter-path", cases[0][1], "--save-path", never], cases[0][2]),
    ]:
        r = run([a.lmtune, "export-peft", "--model", base, *args])
        check(r.returncode != 0 and re.search(regex, r.stderr),
              f"export-peft {what}: rc {r.returncode}, stderr:\n{r.stderr[-1500:]}\n(expected /{regex}/)")
        print(f"refused: export-peft {what}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")
    check(not os.path.exists(never), "a refused command left its --save-path")
    check(not [f for f in os.listdir(out) if ".tmp." in f], f"a refused command left a .tmp folder: {os.listdir(out)}")
    check(os.listdir(existing) == [], "a refused export wrote into the existing --save-path")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmtune", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--case", required=True)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    c = a.case
    if c == "export_lora":
        case_lmtune(a, "llama", "lora", c)
    elif c == "export_dora":
        case_lmtune(a, "llama", "dora", c)
    elif c == "export_qwen2":
        case_lmtune(a, "qwen2", "lora", c)
    elif c == "export_mlx_dora":
        case_export_mlx(a, c)
    elif c == "import_lora":
        case_peft(a, "llama", c)
    elif c == "import_dora":
        case_peft(a, "llama", c, dora=True)
    elif c == "import_rslora":
        case_peft(a, "llama", c, rslora=True, target=("q_proj", "k_proj", "up_proj"), layers=[2, 3], alpha=12, r=6)
    elif c == "import_qwen2_dora":
        case_peft(a, "qwen2", c, dora=True, target=r"model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.gate_proj)")
    elif c == "import_q4_dora":
        case_q4(a, c)
    elif c == "resume":
        case_resume(a)
    elif c == "refusals":
        case_refusals(a)
    else:
        sys.exit(f"unknown case {c}")
    if FAILS:
        print(f"{len(FAILS)} check(s) failed")
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
