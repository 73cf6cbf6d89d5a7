"""End-to-end checks of `lmtune lora` on a tiny llama with the real Llama 3 vocabulary
(generate_ref.py's chat_llama3 folder).

Usage: lora_cli_check.py --lmtune BIN --model DIR --work DIR --case NAME
Cases: chat, completions, text, mask_prompt, resume, early_stop, bad_line, preview, unknown_flag, yaml,
torch_losses (20 Adam steps against a PyTorch + peft run from the same adapters and batches).
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys

TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a word up",
          "parameters": {"type": "object", "properties": {"word": {"type": "string"}}}}}]
WORDS = ["cat", "dog", "sun", "tree", "river", "stone", "bird", "cloud", "hill", "lake"]


def records(fmt, n):
    out = []
    for i in range(n):
        w = WORDS[i % len(WORDS)]
        ans = f"{w}: item {i} " + " ".join(WORDS[(i * 3 + k) % len(WORDS)] for k in range(i % 5))
        if fmt == "completions":
            out.append({"prompt": f"Define {w}.", "completion": ans})
        elif fmt == "chat":
            r = {"messages": [{"role": "user", "content": f"Define {w}."}, {"role": "assistant", "content": ans}]}
            if i % 2:
                r["tools"] = TOOLS
            out.append(r)
        else:
            out.append({"text": f"Define {w}. {ans}"})
    return out


def write_data(d, fmt, n=(12, 4, 4)):
    os.makedirs(d, exist_ok=True)
    for name, k in zip(("train", "valid", "test"), n):
        with open(os.path.join(d, f"{name}.jsonl"), "w") as f:
            for r in records(fmt, k):
                f.write(json.dumps(r) + "\n")


FAILS = []


def check(cond, msg):
    if not cond:
        FAILS.append(msg)
        print("FAIL:", msg[-3000:], file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmtune", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--case", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    w = a.work

    def lora(*args):
        p = subprocess.run([a.lmtune, "lora", "--model", a.model, *map(str, args)], capture_output=True, text=True)
        return p.returncode, p.stdout, p.stderr

    base = ["--train", "--batch-size", 2, "--num-layers", 2, "--learning-rate", "1e-3", "--steps-per-report", 2,
            "--steps-per-eval", 3, "--seed", 1]
    c = a.case
    if c in ("chat", "completions", "text"):
        write_data(f"{w}/data", c)
        rc, out, err = lora(*base, "--data", f"{w}/data", "--iters", 6, "--save-every", 3, "--adapter-path",
                            f"{w}/ad", "--test")
        check(rc == 0, err)
        for pat in [r"Trainable parameters: \d+\.\d{3}% \(\d+\.\d{3}M/\d+\.\d{3}M\)", r"Starting training\.\.\., iters: 6",
                    r"Iter 1: Val loss \d+\.\d{3}, Val took \d+\.\d{3}s",
                    r"Iter 2: Train loss \d+\.\d{3}, Learning Rate 1\.000e-03, It/sec \d+\.\d{3}, Tokens/sec \d+\.\d{3}, "
                    r"Trained Tokens \d+, Peak mem \d+\.\d{3} GB",
                    r"Iter 3: Saved adapter weights to .*adapters\.safetensors and .*0000003_adapters\.safetensors\.",
                    r"Saved final weights to .*adapters\.safetensors\.", r"Test loss \d+\.\d{3}, Test ppl \d+\.\d{3}\."]:
            check(re.search(pat, out), f"{c}: no line matching {pat}\n{out}")
        for f in ("adapters.safetensors", "adapter_config.json", "metrics.jsonl", "loss.svg", "best_adapters.safetensors",
                  "0000003_adapters.safetensors", "checkpoints/0000006/trainer_state.json"):
            check(os.path.exists(f"{w}/ad/{f}"), f"{c}: missing {f}")
        m = [json.loads(l) for l in open(f"{w}/ad/metrics.jsonl")]
        tl = [x["train_loss"] for x in m if "train_loss" in x]
        check(len(tl) == 3 and tl[-1] < tl[0], f"{c}: train losses {tl}")
        cfg = json.load(open(f"{w}/ad/adapter_config.json"))
        check(cfg["num_layers"] == 2 and cfg["lora_parameters"]["rank"] == 8 and cfg["batch_size"] == 2, str(cfg))
        # The adapter loads for generation.
        p = subprocess.run([a.lmtune, "generate", "--model", a.model, "--adapter-path", f"{w}/ad", "-p", "Define cat.",
                            "-m", "4"], capture_output=True, text=True)
        check(p.returncode == 0, p.stderr)
    elif c == "mask_prompt":
        write_data(f"{w}/data", "completions")
        toks = {}
        for mp in (False, True):
            rc, out, err = lora(*base, "--data", f"{w}/data", "--iters", 2, "--adapter-path", f"{w}/ad{mp}",
                                *(["--mask-prompt"] if mp else []))
            check(rc == 0, err)
            toks[mp] = int(re.search(r"Trained Tokens (\d+)", out).group(1))
        check(0 < toks[True] < toks[False], f"mask_prompt: trained tokens {toks}")
        write_data(f"{w}/text", "text")
        rc, out, err = lora(*base, "--data", f"{w}/text", "--iters", 2, "--mask-prompt", "--adapter-path", f"{w}/x")
        check(rc == 1 and "Prompt masking not supported for text dataset" in err, err)
    elif c == "resume":
        write_data(f"{w}/data", "chat")
        args = [*base, "--data", f"{w}/data", "--iters", 10, "--save-every", 4, "--grad-accumulation-steps", 3,
                "--grad-clip", "0.5"]
        rc, out, err = lora(*args, "--adapter-path", f"{w}/full")
        check(rc == 0, err)
        # Interrupted after iteration 4 (mid-accumulation): continue from that checkpoint elsewhere.
        rc, out2, err = lora(*args, "--adapter-path", f"{w}/resumed", "--resume", f"{w}/full/checkpoints/0000004")
        check(rc == 0 and "Resuming from" in out2, err)
        same = open(f"{w}/full/adapters.safetensors", "rb").read() == open(f"{w}/resumed/adapters.safetensors", "rb").read()
        check(same, "resume: final adapters differ from the uninterrupted run")
        last = lambda s: re.findall(r"Iter 10: Train loss .*?,", s)
        check(last(out) == last(out2) and last(out), f"resume: {last(out)} vs {last(out2)}")
    elif c == "early_stop":
        write_data(f"{w}/data", "completions")
        rc, out, err = lora(*base, "--data", f"{w}/data", "--iters", 40, "--learning-rate", "3.0", "--steps-per-eval", 1,
                            "--early-stop", 2, "--adapter-path", f"{w}/ad")
        check(rc == 0 and "Early stop" in out, out + err)
        m = [json.loads(l) for l in open(f"{w}/ad/metrics.jsonl")]
        check(max(x["iteration"] for x in m) < 40, "early_stop: ran to the end")
        check(os.path.exists(f"{w}/ad/best_adapters.safetensors"), "early_stop: no best adapter")
    elif c == "bad_line":
        write_data(f"{w}/data", "completions")
        lines = open(f"{w}/data/train.jsonl").read().splitlines()
        lines[2] = '{"prompt": "x", "completion": '
        lines[6] = '{"prompt": "only a prompt"}'
        open(f"{w}/data/train.jsonl", "w").write("\n".join(lines) + "\n")
        rc, out, err = lora(*base, "--data", f"{w}/data", "--iters", 2, "--adapter-path", f"{w}/ad")
        check(rc == 1 and "train.jsonl:3: invalid JSON" in err and "train.jsonl:7: missing key 'completion'" in err
              and "2 malformed lines" in err, err)
    elif c == "preview":
        write_data(f"{w}/data", "completions")
        rc, out, err = lora("--data", f"{w}/data", "--preview", 2, "--mask-prompt", "--adapter-path", f"{w}/ad")
        check(rc == 0 and "example 1 (line 1)" in out and "example 2 (line 2)" in out and "example 3" not in out, out + err)
        check(re.search(r"\d+ tokens, \d+ supervised", out) and "<<<cat: item 0" in out and ">>>" in out, out)
        check(not os.path.exists(f"{w}/ad"), "preview wrote adapters")
    elif c == "unknown_flag":
        rc, out, err = lora("--train", "--no-such-flag", 3)
        check(rc == 2 and "unrecognized arguments: --no-such-flag" in err, err)
        rc, out, err = lora("--fine-tune-type", "qlora")
        check(rc == 2 and "invalid choice" in err, err)
    elif c == "yaml":
        write_data(f"{w}/data", "text")
        open(f"{w}/c.yaml", "w").write(
            f"data: {w}/data\ntrain: true\nbatch_size: 2\niters: 50\nlearning_rate: 1e-3\nnum_layers: 1\n"
            "lora_parameters:\n  rank: 4\n  scale: 10.0\n  dropout: 0.0\n  keys: [self_attn.q_proj, self_attn.v_proj]\n"
            "lr_schedule:\n  name: cosine_decay\n  arguments: [1e-3, 10]\n  warmup: 2\n"
            "report_to: wandb\n")
        rc, out, err = lora("-c", f"{w}/c.yaml", "--iters", 4, "--steps-per-report", 2, "--adapter-path", f"{w}/ad")
        check(rc == 0 and "Starting training..., iters: 4" in out and "not available offline" in out, out + err)
        cfg = json.load(open(f"{w}/ad/adapter_config.json"))
        check(cfg["lora_parameters"]["rank"] == 4 and cfg["learning_rate"] == 1e-3 and cfg["iters"] == 4
              and cfg["num_layers"] == 1, str(cfg))
    elif c == "torch_losses":
        torch_losses(a, lora, w)
    else:
        check(False, f"unknown case {c}")
    if FAILS:
        sys.exit(1)
    print("ok")


def torch_losses(a, lora, w):
    """20 Adam steps of LoRA (rank 4, scale 2, all linear layers of both blocks) on one fixed batch
    of 4 text records, from the same nonzero adapters, in lmtune and in transformers + peft with
    MLX's Adam (no bias correction) written out in torch. CPU f32: each loss within 2e-4 relative."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, LlamaForCausalLM

    recs = records("text", 4)
    os.makedirs(f"{w}/data")
    with open(f"{w}/data/train.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    rank, scale, lr, steps = 4, 2.0, 2e-3, 20
    tok = AutoTokenizer.from_pretrained(a.model)
    model = LlamaForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32, attn_implementation="eager")
    keys = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=scale * rank, target_modules=keys, lora_dropout=0.0))
    g = torch.Generator().manual_seed(5)
    init = {}
    params = []
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            A, B = mod.lora_A["default"].weight, mod.lora_B["default"].weight  # (r, in), (out, r)
            with torch.no_grad():
                A.copy_((torch.rand(A.shape, generator=g) * 2 - 1) / math.sqrt(A.shape[1]))
                B.copy_(torch.randn(B.shape, generator=g) * 0.05)
            ours = name.replace("base_model.model.", "")
            init[ours + ".lora_a"] = A.detach().t().contiguous().clone()
            init[ours + ".lora_b"] = B.detach().t().contiguous().clone()
            params += [A, B]
    save_file(init, f"{w}/init.safetensors")
    # The batch as lmtune builds it: text + EOS, width min(1 + 32 ceil(L/32), max), pad 0, no pad target.
    seqs = []
    for r in recs:
        ids = tok(r["text"])["input_ids"]
        if ids[-1] != tok.eos_token_id:
            ids.append(tok.eos_token_id)
        seqs.append(ids)
    L = max(map(len, seqs))
    width = 1 + 32 * ((L + 31) // 32)
    arr = torch.zeros((len(seqs), width), dtype=torch.long)
    tgt = torch.full((len(seqs), width - 1), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        arr[i, :len(s)] = torch.tensor(s)
        tgt[i, :len(s) - 1] = torch.tensor(s[1:])
    inputs = arr[:, :-1]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    ref = []
    for _ in range(steps):
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100)
        ref.append(loss.item())
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, gr, mi, vi in zip(params, grads, m, v):
                mi.mul_(0.9).add_(gr, alpha=0.1)
                vi.mul_(0.999).add_(gr * gr, alpha=0.001)
                p.sub_(lr * mi / (vi.sqrt() + 1e-8))
    open(f"{w}/c.yaml", "w").write(f"lora_parameters:\n  rank: {rank}\n  scale: {scale}\n  dropout: 0.0\n")
    rc, out, err = lora("-c", f"{w}/c.yaml", "--train", "--data", f"{w}/data", "--batch-size", 4, "--num-layers", 2,
                        "--iters", steps, "--learning-rate", lr, "--steps-per-report", 1, "--save-every", 1000,
                        "--resume-adapter-file", f"{w}/init.safetensors", "--adapter-path", f"{w}/ad",
                        "--device", "cpu")
    check(rc == 0, err)
    got = [json.loads(l)["train_loss"] for l in open(f"{w}/ad/metrics.jsonl") if "train_loss" in l]
    check(len(got) == steps, f"torch_losses: {len(got)} losses")
    worst = max(abs(x - y) / abs(y) for x, y in zip(got, ref))
    print(f"torch_losses: worst relative error {worst:.2e} over {steps} steps; first {got[0]:.6f} vs {ref[0]:.6f}, "
          f"last {got[-1]:.6f} vs {ref[-1]:.6f}")
    check(worst <= 2e-4, f"torch_losses: ours {got}\nref {ref}")
    check(ref[-1] < ref[0] * 0.95, f"torch_losses: the reference run does not learn {ref}")


if __name__ == "__main__":
    main()
