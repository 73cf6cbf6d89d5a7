#!/usr/bin/env bash
# QLoRA training speed and memory on the GPU: bench_lora_peer.py's Mistral-7B-shaped bf16 model
# with random weights, quantized by `lmtune convert -q` (affine 4-bit, group 64), trained by
# `lmtune lora` with LoRA rank 8 (scale 20, dropout 0) on all 7 linear layers of all 32 blocks,
# batch 1, sequence 2048, Adam lr 1e-5, gradient checkpointing; beside lmtune's own bf16 LoRA on
# the unquantized model with the same settings, and transformers + peft + bitsandbytes nf4 (the
# usual QLoRA) where bitsandbytes imports (`--bnb-wheel W`: pip-install it into a private folder
# first). Targets (issue 10): QLoRA peak <= 6 GiB and tok/s >= 0.9x lmtune's bf16 LoRA with
# checkpointing. Peaks are each tool's own allocator peak (lmtune: Peak mem; peer:
# torch.cuda.max_memory_allocated), printed in GB (1e9 bytes) and GiB (2^30 bytes).
# Usage: bench/bench_qlora_gpu.sh [--build DIR] [--table PATH] [--bnb-wheel WHEEL] [--warmup N] [--steps N]
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build"
table="" bnb_wheel="" warmup=5 steps=10
while (($#)); do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    --table) table="$2"; shift 2 ;;
    --bnb-wheel) bnb_wheel="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    *) echo "bench_qlora_gpu: unknown argument $1" >&2; exit 2 ;;
  esac
done
py="${LMTUNE_PYTHON:-$(command -v python3)}"
lmtune="$build/bin/lmtune"
seq=2048 report=5
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
status=0
start=$SECONDS
peer() { PYTHONUNBUFFERED=1 "$py" "$root/bench/bench_lora_peer.py" "$@"; }
echo "== model and data [$((SECONDS - start)) s]"
peer model "$tmp/model" || { echo "bench_qlora_gpu: cannot write the model"; exit 1; }
peer data "$tmp/data" --model "$tmp/model" --seq "$seq" || exit 1
echo "== lmtune convert -q [$((SECONDS - start)) s]"
"$lmtune" convert --hf-path "$tmp/model" --mlx-path "$tmp/q4" -q --q-bits 4 --q-group-size 64 || exit 1
cat >"$tmp/lora.yaml" <<YAML
lora_parameters:
  rank: 8
  scale: 20.0
  dropout: 0.0
  keys: [self_attn.q_proj, self_attn.k_proj, self_attn.v_proj, self_attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
YAML
iters=$((warmup + steps))
for m in model q4; do
  echo "== lmtune lora on $m, gradient checkpointing [$((SECONDS - start)) s]"
  "$lmtune" lora --model "$tmp/$m" --train --data "$tmp/data" --device cuda -c "$tmp/lora.yaml" \
    --fine-tune-type lora --optimizer adam --num-layers -1 --batch-size 1 --iters "$iters" \
    --steps-per-report "$report" --steps-per-eval 100000 --val-batches 1 --learning-rate 1e-5 \
    --max-seq-length "$seq" --save-every 100000 --seed 0 --adapter-path "$tmp/adapters-$m" --grad-checkpoint 2>&1 |
    grep -v '^\[WARNING\] Some sequences are longer' | tee "$tmp/lmtune-$m.txt"
  ((PIPESTATUS[0] == 0)) || { echo "lmtune lora on $m failed"; status=1; }
done
if [[ -n "$bnb_wheel" ]]; then
  echo "== transformers + peft + bitsandbytes nf4, gradient checkpointing [$((SECONDS - start)) s]"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$tmp/site" "$bnb_wheel" &&
    PYTHONPATH="$tmp/site${PYTHONPATH:+:$PYTHONPATH}" peer train --model "$tmp/model" --data "$tmp/data" --seq "$seq" \
      --warmup "$warmup" --steps "$steps" --json "$tmp/peer-nf4.json" --grad-checkpoint --nf4 2>&1 |
    grep -v -i -E 'warn|Loading weights' || true
  [[ -s "$tmp/peer-nf4.json" ]] || echo "bench_qlora_gpu: the bitsandbytes peer failed (see above)"
fi
echo "== done [$((SECONDS - start)) s]"
card="$(nvidia-smi -L 2>/dev/null | head -n 1 | sed 's/ (UUID.*//')"
"$py" - "$tmp" "$warmup" "$steps" "${card:-unknown GPU}" "${table:-/dev/null}" <<'PY'
import json, os, re, sys
tmp, warmup, steps, card, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
pat = re.compile(r"Iter (\d+): Train loss ([\d.naninf]+), Learning Rate \S+, It/sec [\d.]+, Tokens/sec ([\d.]+), "
                 r"Trained Tokens (\d+), Peak mem ([\d.]+) GB")
def ours(m):
    p = f"{tmp}/lmtune-{m}.txt"
    reps = [(int(x[1]), float(x[2]), float(x[3]), float(x[5])) for x in pat.finditer(open(p).read())] if os.path.exists(p) else []
    timed = [r for r in reps if r[0] > warmup]
    if not timed:
        return None
    return {"tps": len(timed) / sum(1 / r[2] for r in timed), "peak": reps[-1][3], "loss": (reps[0][1], reps[-1][1])}
rows = [("lmtune LoRA, bf16 base", ours("model")), ("lmtune QLoRA, affine 4-bit g64 base", ours("q4"))]
p = f"{tmp}/peer-nf4.json"
if os.path.exists(p) and os.path.getsize(p):
    j = json.load(open(p))
    rows.append((f"transformers {j['transformers']} + peft {j['peft']} + bitsandbytes nf4", {"tps": j["tokens_per_sec"], "peak": j["peak_gb"], "loss": (j["first_loss"], j["last_loss"])}))
lines = [f"{card}; Mistral-7B shape, LoRA rank 8 on all 7 linear layers of 32 blocks, batch 1, sequence 2048, "
         f"gradient checkpointing, Adam; {steps} timed steps after {warmup} warm-up",
         "", "| run | tok/s | vs lmtune bf16 LoRA | peak GB | peak GiB | loss first -> last |", "| --- | --- | --- | --- | --- | --- |"]
base = rows[0][1]
for name, r in rows:
    if not r:
        lines.append(f"| {name} | FAILED | - | - | - | - |")
        continue
    ratio = f"{r['tps'] / base['tps']:.2f}x" if base else "-"
    lines.append(f"| {name} | {r['tps']:.0f} | {ratio} | {r['peak']:.2f} | {r['peak'] * 1e9 / 2**30:.2f} | "
                 f"{r['loss'][0]:.3f} -> {r['loss'][1]:.3f} |")
q = rows[1][1]
if q and base:
    lines.append("")
    lines.append(f"targets: QLoRA peak {q['peak'] * 1e9 / 2**30:.2f} GiB <= 6 GiB: {'yes' if q['peak'] * 1e9 / 2**30 <= 6 else 'NO'}; "
                 f"QLoRA {q['tps'] / base['tps']:.2f}x of bf16 LoRA >= 0.9x: {'yes' if q['tps'] >= 0.9 * base['tps'] else 'NO'}")
text = "\n".join(lines) + "\n"
print(text, end="")
if out != "/dev/null":
    open(out, "w").write(text)
PY
exit $status
