#!/usr/bin/env bash
# LoRA training speed and memory on the GPU: `lmtune lora --device cuda` and then transformers +
# peft (bench/bench_lora_peer.py train) on one Mistral-7B-shaped bf16 model with random weights
# (written once into a temporary folder, removed at exit), LoRA rank 8 (scale 20, dropout 0) on
# all 7 linear layers of all 32 blocks, batch 1, every example truncated to 2048 tokens, Adam at
# lr 1e-5, without and with gradient checkpointing. Prints one table of tokens/s (supervised
# tokens over train time, steady state after warm-up) and peak device memory (weights included)
# side by side. Target: lmtune at least the peer's tokens/s at no more memory.
# About 3-5 minutes on an H100 once lmtune is built (most of it writing and loading 14.5 GB).
# Usage: bench/bench_lora_gpu.sh [--build DIR] [--table PATH] [--warmup N] [--steps N]
#          [--keys q,k,v,o,gate,up,down] [--checkpointing both|off|on] [--smoke]
#          [--shape qwen3-0.6b|gemma3-1b|mixtral-moe|qwen3-moe] [--batch N] [--compiled] [--lmtune-env VAR=VALUE]
#          [--gpus N]
# (default build/, 5 warm-up and 20 timed steps, multiples of the 5-step report, all 7 keys, both;
# --keys adapts fewer linear layers on both sides, to split the LoRA path's cost from the base
# model's; --smoke: both sides on the CPU with a 2-layer f32 model at sequence 128, a check of the
# scripts). --compiled: the peer is bench/hf_compiled_lora.py (transformers with a bf16 LoRA under
# torch.compile, the strongest PyTorch path measured) instead of transformers + peft. --shape: bench_lora_peer.py's Qwen3-0.6B- or Gemma-3-1B-shaped model instead of Mistral-7B's
# (issue 16's pairs: qwen3-0.6b at --batch 8, gemma3-1b at --batch 4, mixtral-moe (8 experts, 16 layers, hidden
# 2048) with --keys q,k,v,o: peft cannot adapt transformers' stacked experts); --batch N: N records a step on
# both sides (default 1). --lmtune-env VAR=VALUE: lmtune runs a second time with that variable set (an A/B
# of one of its switches, e.g. LMTUNE_MOE_GROUPED=0), reported below the table. --gpus N: lmtune trains data
# parallel over N GPUs of this machine (`lmtune lora --gpus N`; --batch is the global batch, so N must divide
# it; tokens/s is the group's, peak memory rank 0's) and the peer, which has no multi-GPU path here, is left
# out: for issue 14's scaling figures, run once per N.
# LMTUNE_PYTHON: the Python with torch + transformers + peft + tokenizers (default .venv/bin/python
# if present, else python3).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build"
table=""
smoke=0
warmup=5 steps=20 keys=q,k,v,o,gate,up,down checkpointing=both shape="" batch=1 compiled=0 alt_env="" gpus=1
while (($#)); do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    --table) table="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --compiled) compiled=1; shift ;;
    --keys) keys="$2"; shift 2 ;;
    --checkpointing) checkpointing="$2"; shift 2 ;;
    --smoke) smoke=1; shift ;;
    --shape) shape="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --lmtune-env) alt_env="$2"; shift 2 ;;
    --gpus) gpus="$2"; shift 2 ;;
    *) echo "bench_lora_gpu: unknown argument $1" >&2; exit 2 ;;
  esac
done
py="${LMTUNE_PYTHON:-}"
if [[ -z "$py" ]]; then  # the project's .venv where there is one (the development machine), else python3
  if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py="$(command -v python3)"; fi
fi
lmtune="$build/bin/lmtune"
if [[ ! -x "$lmtune" ]]; then
  echo "bench_lora_gpu: $lmtune not built" >&2
  exit 1
fi
if ((smoke)); then
  seq=128 report=2 device=cpu smoke_flag=(--smoke)
  ((warmup == 5)) && warmup=2
  ((steps == 20)) && steps=4
else
  seq=2048 report=5 device=cuda smoke_flag=()
fi
if ((warmup % report || steps % report || warmup < report || steps < report)); then
  echo "bench_lora_gpu: --warmup and --steps must be positive multiples of the $report-step report" >&2
  exit 2
fi
iters=$((warmup + steps))
shape_flag=()
case "$shape" in
  "") ;; qwen3-0.6b|gemma3-1b|mixtral-moe|qwen3-moe) shape_flag=(--shape "$shape") ;;
  *) echo "bench_lora_gpu: --shape must be qwen3-0.6b, gemma3-1b, mixtral-moe or qwen3-moe" >&2; exit 2 ;;
esac
if [[ -n "$alt_env" && ! "$alt_env" =~ ^LMTUNE_[A-Z0-9_]+=[^[:space:]]*$ ]]; then
  echo "bench_lora_gpu: --lmtune-env takes LMTUNE_NAME=VALUE, got '$alt_env'" >&2
  exit 2
fi
if ! [[ "$batch" =~ ^[1-9][0-9]*$ ]]; then
  echo "bench_lora_gpu: --batch must be a positive integer" >&2
  exit 2
fi
case "$checkpointing" in
  both) gcs=(off on) ;; off|on) gcs=("$checkpointing") ;;
  *) echo "bench_lora_gpu: --checkpointing must be both, off or on" >&2; exit 2 ;;
esac
# Short key names -> the module paths of a block (mlx-lm's lora_parameters keys) and peft's names.
ykeys="" pkeys=""
IFS=, read -ra kl <<<"$keys"
for k in "${kl[@]}"; do
  case "$k" in
    q|k|v|o) ykeys+="${ykeys:+, }self_attn.${k}_proj"; pkeys+="${pkeys:+,}${k}_proj" ;;
    gate|up|down) ykeys+="${ykeys:+, }mlp.${k}_proj"; pkeys+="${pkeys:+,}${k}_proj" ;;
    *) echo "bench_lora_gpu: unknown key $k (q k v o gate up down)" >&2; exit 2 ;;
  esac
done
tmp="$(mktemp -d)"
trap 'smi_stop; rm -rf "$tmp"' EXIT
status=0
start=$SECONDS
peer() { PYTHONUNBUFFERED=1 "$py" "$root/bench/bench_lora_peer.py" "$@"; }
# Device memory as the driver sees it (CUDA context and cached blocks included), sampled every 200 ms
# while a run lasts: a cross-check of the two tools' own "in use" peaks.
smi_pid=""
smi_start() {
  if ((!smoke)) && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$tmp/smi-$1.txt" 2>/dev/null &
    smi_pid=$!
  fi
}
smi_stop() {
  if [[ -n "$smi_pid" ]]; then kill "$smi_pid" 2>/dev/null; wait "$smi_pid" 2>/dev/null; smi_pid=""; fi
}

echo "== model and data [$((SECONDS - start)) s]"
peer model "$tmp/model" "${smoke_flag[@]}" "${shape_flag[@]}" || { echo "bench_lora_gpu: cannot write the model"; exit 1; }
# A validation set of a batch at least: lmtune, as mlx-lm, refuses a smaller one.
peer data "$tmp/data" --model "$tmp/model" --seq "$seq" --n-valid "$((batch > 2 ? batch : 2))" || { echo "bench_lora_gpu: cannot write the data"; exit 1; }
cat >"$tmp/lora.yaml" <<EOF
lora_parameters:
  rank: 8
  scale: 20.0
  dropout: 0.0
  keys: [$ykeys]
EOF

for gc in "${gcs[@]}"; do
  gcflag=()
  [[ $gc == on ]] && gcflag=(--grad-checkpoint)
  echo "== lmtune lora, gradient checkpointing $gc [$((SECONDS - start)) s]"
  cmd=("$lmtune" lora --model "$tmp/model" --train --data "$tmp/data" --device "$device" -c "$tmp/lora.yaml"
    --fine-tune-type lora --optimizer adam --num-layers -1 --batch-size "$batch" --iters "$iters"
    --steps-per-report "$report" --steps-per-eval 100000 --val-batches 1 --learning-rate 1e-5
    --max-seq-length "$seq" --save-every 100000 --seed 0 --adapter-path "$tmp/adapters-$gc" "${gcflag[@]}")
  ((gpus > 1)) && cmd+=(--gpus "$gpus")
  echo "${cmd[*]#"$tmp/"}" | sed "s|$tmp/||g"
  smi_start "lmtune-$gc"
  "${cmd[@]}" 2>&1 | grep -v '^\[WARNING\] Some sequences are longer' | tee "$tmp/lmtune-$gc.txt"
  rc=${PIPESTATUS[0]}
  smi_stop
  ((rc == 0)) || { echo "lmtune lora ($gc) failed (rc $rc)"; status=1; }
  if [[ -n "$alt_env" ]]; then
    echo "== lmtune lora with $alt_env, gradient checkpointing $gc [$((SECONDS - start)) s]"
    env "$alt_env" "${cmd[@]}" 2>&1 | grep -v '^\[WARNING\] Some sequences are longer' |
      tee "$tmp/lmtune-$gc-alt.txt"
    ((PIPESTATUS[0] == 0)) || { echo "lmtune lora with $alt_env ($gc) failed"; status=1; }
  fi
  ((gpus > 1)) && continue  # no multi-GPU peer
  echo "== transformers + peft, gradient checkpointing $gc [$((SECONDS - start)) s]"
  smi_start "peer-$gc"
  if ((compiled)); then
    # The strongest PyTorch path: bench/hf_compiled_lora.py (bf16 LoRA, torch.compile) on the same
    # shape with its own random weights and ids; its tokens/s counts every position, ours the
    # supervised ones (seq - 1 a row): converted here, and its GiB to GB.
    ckflag=()
    [[ $gc == on ]] && ckflag=(--ckpt)
    PYTHONUNBUFFERED=1 "$py" "$root/bench/hf_compiled_lora.py" --shape "${shape:-mistral-7b}" --seq "$seq" \
      --batch "$batch" --warmup 3 --steps "$steps" "${ckflag[@]}" 2>&1 | grep -v -i -E 'warn' | tee "$tmp/compiled-$gc.txt"
    "$py" - "$tmp/compiled-$gc.txt" "$tmp/peer-$gc.json" "$seq" <<'PY' || true
import json, sys
line = [l for l in open(sys.argv[1]) if l.startswith("{")][-1]
r, seq = json.loads(line), int(sys.argv[3])
json.dump({"tokens_per_sec": r["tokens_per_s"] * (seq - 1) / seq, "peak_gb": r["peak_gib"] * 2**30 / 1e9,
           "peer": r["peer"]}, open(sys.argv[2], "w"))
PY
  else
    peer train --model "$tmp/model" --data "$tmp/data" --seq "$seq" --warmup "$warmup" --steps "$steps" \
      --keys "$pkeys" --batch "$batch" --json "$tmp/peer-$gc.json" "${gcflag[@]}" "${smoke_flag[@]}" 2>&1 | grep -v -i -E 'warn|Loading weights' ||
      true
  fi
  smi_stop
  [[ -s "$tmp/peer-$gc.json" ]] || { echo "bench_lora_peer.py ($gc) failed"; status=1; }
done
echo "== done [$((SECONDS - start)) s]"

if ((smoke)); then
  card="CPU ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), smoke: 2-layer f32 model, sequence $seq)"
else
  card="$(nvidia-smi -L 2>/dev/null | head -n 1 | sed 's/ (UUID.*//')"
  card="${card:-unknown GPU}"
fi
"$py" - "$tmp" "$warmup" "$steps" "$seq" "$card" "${table:-/dev/null}" "$keys" "$batch" "${shape:-mistral-7b}" "$alt_env" <<'PY'
import json, os, re, sys
tmp, warmup, steps, seq, card, out, keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:8]
batch, shape, alt_env = int(sys.argv[8]), sys.argv[9], sys.argv[10]
pat = re.compile(r"Iter (\d+): Train loss ([\d.naninf]+), Learning Rate \S+, It/sec [\d.]+, Tokens/sec ([\d.]+), "
                 r"Trained Tokens (\d+), Peak mem ([\d.]+) GB")

def ours(gc, alt=False):
    p = f"{tmp}/lmtune-{gc}{'-alt' if alt else ''}.txt"
    if not os.path.exists(p):
        return None
    reps = [(int(m[1]), float(m[2]), float(m[3]), int(m[4]), float(m[5])) for m in pat.finditer(open(p).read())]
    timed = [r for r in reps if r[0] > warmup]
    if not timed or timed[-1][0] != warmup + steps:
        return None
    # Each report covers the same number of steps and tokens: the overall rate is the harmonic mean.
    tps = len(timed) / sum(1 / r[2] for r in timed)
    return {"tokens_per_sec": tps, "peak_gb": reps[-1][4], "first_loss": reps[0][1], "last_loss": reps[-1][1]}

def peer(gc):
    p = f"{tmp}/peer-{gc}.json"
    return json.load(open(p)) if os.path.exists(p) and os.path.getsize(p) else None

lines = []
p0 = peer("off") or peer("on")
if p0 and "peer" in p0:  # --compiled
    vers = f"{p0['peer']} (bench/hf_compiled_lora.py: bf16 LoRA under torch.compile, its own random weights)"
else:
    vers = f"torch {p0['torch']}, transformers {p0['transformers']}, peft {p0['peft']}" if p0 else "peer failed"
lines.append(f"{card}; peer: {vers}")
lines.append(f"{shape}-shaped model; LoRA rank 8 (scale 20, dropout 0) on {keys} of every block; batch {batch}, "
             f"sequence {seq} ({batch * (seq - 1)} supervised tokens a step); Adam lr 1e-5; {steps} timed steps "
             f"after {warmup} warm-up")
lines += ["", "| config | lmtune tok/s | peer tok/s | ratio | lmtune peak GB | peer peak GB | target met? |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
losses = []
for gc, name in (("off", "no gradient checkpointing"), ("on", "gradient checkpointing")):
    if not os.path.exists(f"{tmp}/lmtune-{gc}.txt"):
        continue  # not asked for (--checkpointing)
    o, p = ours(gc), peer(gc)
    f = lambda r, k, fmt: fmt.format(r[k]) if r else "FAILED"
    ratio = f"{o['tokens_per_sec'] / p['tokens_per_sec']:.2f}" if o and p else "-"
    if o and p:
        fast, small = o["tokens_per_sec"] >= p["tokens_per_sec"], o["peak_gb"] <= p["peak_gb"]
        met = "yes" if fast and small else "NO (" + ", ".join(
            x for x, bad in (("slower", not fast), ("more memory", not small)) if bad) + ")"
    else:
        met = "-"
    lines.append(f"| {name} | {f(o, 'tokens_per_sec', '{:.0f}')} | {f(p, 'tokens_per_sec', '{:.0f}')} | {ratio} | "
                 f"{f(o, 'peak_gb', '{:.2f}')} | {f(p, 'peak_gb', '{:.2f}')} | {met} |")
    if o and p and "first_loss" in p:
        losses.append(f"{name}: lmtune {o['first_loss']:.3f} -> {o['last_loss']:.3f}, "
                      f"peer {p['first_loss']:.3f} -> {p['last_loss']:.3f}")
text = "\n".join(lines) + "\n"
if alt_env:
    alts = []
    for gc in ("off", "on"):
        if os.path.exists(f"{tmp}/lmtune-{gc}-alt.txt"):
            a, o = ours(gc, True), ours(gc)
            alts.append(f"{'gradient checkpointing ' + gc}: " + (f"{a['tokens_per_sec']:.0f} tok/s, peak {a['peak_gb']:.2f} GB"
                        + (f" ({a['tokens_per_sec'] / o['tokens_per_sec']:.2f}x the default run)" if o else "")
                        if a else "FAILED"))
    text += f"\nlmtune with {alt_env}, same command: " + "; ".join(alts) + "\n"
def smi(name):
    p = f"{tmp}/smi-{name}.txt"
    v = [int(x) for x in open(p).read().split() if x.isdigit()] if os.path.exists(p) else []
    return f"{max(v) * 2**20 / 1e9:.2f}" if v else "-"
if any(os.path.exists(f"{tmp}/smi-{t}-{g}.txt") for t in ("lmtune", "peer") for g in ("off", "on")):
    text += ("\nnvidia-smi memory.used, max over each whole run (CUDA context and cached blocks included), GB: "
             f"lmtune {smi('lmtune-off')} / {smi('lmtune-on')}, peer {smi('peer-off')} / {smi('peer-on')} "
             "(without / with gradient checkpointing)\n")
if losses:
    text += "\nTrain loss, first report -> last (both should start near ln(vocab) on random weights): " + \
        "; ".join(losses) + "\n"
print(text, end="")
if out != "/dev/null":
    open(out, "w").write(text)
PY
exit $status
