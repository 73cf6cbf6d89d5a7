"""`lmtune lora` with no --model trains mlx-lm's default model, Qwen/Qwen3-0.6b, resolved through
the Hugging Face cache like any Hub id.

Usage: lora_default_model_check.py --lmtune BIN --model DIR --data DIR --work DIR
DIR (generate_ref.py's chat_qwen3: a tiny qwen3 with the real Qwen3 tokenizer) is placed in a
fresh cache under WORK as the snapshot of Qwen/Qwen3-0.6b, and HF_HUB_OFFLINE=1 keeps it there
(no network). The run must load that model (a qwen3: q/k norms), train a few LoRA steps with
falling loss, record the default model id in adapter_config.json, and generate with the adapter.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

DEFAULT = "Qwen/Qwen3-0.6b"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmtune", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    repo = os.path.join(a.work, "hub", "models--" + DEFAULT.replace("/", "--"))
    snap = os.path.join(repo, "snapshots", "0" * 40)
    shutil.copytree(a.model, snap)
    os.makedirs(os.path.join(repo, "refs"))
    open(os.path.join(repo, "refs", "main"), "w").write("0" * 40)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=os.path.join(a.work, "hub"))
    adapters = os.path.join(a.work, "adapters")
    cmd = [a.lmtune, "lora", "--train", "--data", a.data, "--iters", "6", "--batch-size", "2",
           "--learning-rate", "1e-3", "--steps-per-report", "3", "--steps-per-eval", "100", "--val-batches", "1",
           "--num-layers", "-1", "--device", "cpu", "--adapter-path", adapters]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    print(r.stdout, r.stderr, sep="\n")
    fails = []
    if r.returncode != 0:
        fails.append(f"lmtune lora exited {r.returncode}")
    losses = [float(x) for x in re.findall(r"Train loss ([0-9.]+)", r.stdout)]
    if len(losses) < 2 or not losses[-1] < losses[0]:
        fails.append(f"train losses {losses}: expected two reports, falling")
    cfg_path = os.path.join(adapters, "adapter_config.json")
    if not os.path.exists(cfg_path) or json.load(open(cfg_path)).get("model") != DEFAULT:
        fails.append(f"{cfg_path} does not name {DEFAULT}")
    if not os.path.exists(os.path.join(adapters, "adapters.safetensors")):
        fails.append("no adapters.safetensors")
    g = subprocess.run([a.lmtune, "generate", "--model", DEFAULT, "--adapter-path", adapters, "--device", "cpu",
                        "--temp", "0", "-m", "8", "-p", "Define: lantern"], env=env, capture_output=True, text=True)
    print(g.stdout, g.stderr, sep="\n")
    if g.returncode != 0 or "Generation:" not in g.stdout:
        fails.append(f"lmtune generate --model {DEFAULT} --adapter-path failed ({g.returncode})")
    for f in fails:
        print("FAIL:", f, file=sys.stderr)
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
