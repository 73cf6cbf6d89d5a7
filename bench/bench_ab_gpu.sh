#!/usr/bin/env bash
# Two builds of lmtune side by side on the same GPU in one run, for a change that must not cost
# speed (a refactor): bench_generate (decode and prompt tok/s, Mistral-7B shape, bf16, batch 1)
# alternated A B A B, then `lmtune lora --device cuda` of each (bench_lora_gpu.sh's model, data and
# flags: rank 8 on all 7 linear layers of 32 blocks, batch 1, sequence 2048, 5 warm-up + 20 timed
# steps) with and without gradient checkpointing. One table: each figure for A and B and B / A.
# Usage: bench/bench_ab_gpu.sh --a BUILD_DIR --b BUILD_DIR [--label-a NAME] [--label-b NAME] [--table PATH]
# LMTUNE_PYTHON: the Python with torch + transformers (writes the random model). About 6-8 minutes.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
a="" b="" la=A lb=B table=""
while (($#)); do
  case "$1" in
    --a) a="$(cd "$2" && pwd)"; shift 2 ;;
    --b) b="$(cd "$2" && pwd)"; shift 2 ;;
    --label-a) la="$2"; shift 2 ;;
    --label-b) lb="$2"; shift 2 ;;
    --table) table="$2"; shift 2 ;;
    *) echo "bench_ab_gpu: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -n "$a" && -n "$b" ]] || { echo "bench_ab_gpu: --a and --b are required" >&2; exit 2; }
py="${LMTUNE_PYTHON:-$(command -v python3)}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
status=0
for round in 1 2; do
  for side in a b; do
    dir="${!side}"
    echo "== bench_generate $side round $round [$((SECONDS - start)) s]"
    "$dir/bin/bench_generate" --json "$tmp/gen-$side-$round.json" || { echo "bench_generate $side failed"; status=1; }
  done
done
echo "== model and data [$((SECONDS - start)) s]"
PYTHONUNBUFFERED=1 "$py" "$root/bench/bench_lora_peer.py" model "$tmp/model" || exit 1
PYTHONUNBUFFERED=1 "$py" "$root/bench/bench_lora_peer.py" data "$tmp/data" --model "$tmp/model" --seq 2048 || exit 1
printf 'lora_parameters:\n  rank: 8\n  scale: 20.0\n  dropout: 0.0\n  keys: [self_attn.q_proj, self_attn.k_proj, self_attn.v_proj, self_attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]\n' >"$tmp/lora.yaml"
for gc in off on; do
  for side in a b; do
    dir="${!side}"
    gcflag=()
    [[ $gc == on ]] && gcflag=(--grad-checkpoint)
    echo "== lmtune lora $side, gradient checkpointing $gc [$((SECONDS - start)) s]"
    "$dir/bin/lmtune" lora --model "$tmp/model" --train --data "$tmp/data" --device cuda -c "$tmp/lora.yaml" \
      --fine-tune-type lora --optimizer adam --num-layers -1 --batch-size 1 --iters 25 --steps-per-report 5 \
      --steps-per-eval 100000 --val-batches 1 --learning-rate 1e-5 --max-seq-length 2048 --save-every 100000 \
      --seed 0 --adapter-path "$tmp/adapters-$side-$gc" "${gcflag[@]}" 2>&1 |
      grep -v '^\[WARNING\] Some sequences are longer' | tee "$tmp/lora-$side-$gc.txt"
    ((PIPESTATUS[0] == 0)) || { echo "lmtune lora $side ($gc) failed"; status=1; }
  done
done
card="$(nvidia-smi -L 2>/dev/null | head -n 1 | sed 's/ (UUID.*//')"
"$py" - "$tmp" "$la" "$lb" "${card:-unknown GPU}" "${table:-/dev/null}" <<'PY'
import json, os, re, statistics, sys
tmp, la, lb, card, out = sys.argv[1:6]
def gen(side):
    rs = [json.load(open(p)) for r in (1, 2) if os.path.exists(p := f"{tmp}/gen-{side}-{r}.json")]
    return rs
pat = re.compile(r"Iter (\d+): Train loss [\d.naninf]+, Learning Rate \S+, It/sec [\d.]+, Tokens/sec ([\d.]+), "
                 r"Trained Tokens \d+, Peak mem ([\d.]+) GB")
def lora(side, gc):
    p = f"{tmp}/lora-{side}-{gc}.txt"
    reps = [(int(m[1]), float(m[2]), float(m[3])) for m in pat.finditer(open(p).read())] if os.path.exists(p) else []
    timed = [r for r in reps if r[0] > 5]
    if len(timed) != 4:
        return None
    return len(timed) / sum(1 / r[1] for r in timed), reps[-1][2]
ga, gb = gen("a"), gen("b")
lines = [f"{card}; A = {la}, B = {lb}; generation runs alternate A B A B (each figure: the two runs, then B / A of the means)",
         "", f"| metric | A: {la} | B: {lb} | B / A |", "| --- | --- | --- | --- |"]
def row(name, xa, xb, fmt):
    if not xa or not xb:
        lines.append(f"| {name} | {' / '.join(fmt.format(x) for x in xa) or 'FAILED'} | "
                     f"{' / '.join(fmt.format(x) for x in xb) or 'FAILED'} | - |")
        return
    lines.append(f"| {name} | {' / '.join(fmt.format(x) for x in xa)} | {' / '.join(fmt.format(x) for x in xb)} | "
                 f"{statistics.mean(xb) / statistics.mean(xa):.3f} |")
row("decode tok/s (CUDA graph)", [r["decode_tps"] for r in ga], [r["decode_tps"] for r in gb], "{:.1f}")
row("decode / bound", [100 * r["decode_tps"] / r["bound_tps"] for r in ga], [100 * r["decode_tps"] / r["bound_tps"] for r in gb], "{:.1f}%")
row("prompt tok/s", [r["prompt_tps"] for r in ga], [r["prompt_tps"] for r in gb], "{:.0f}")
for gc, name in (("off", "LoRA tok/s, no checkpointing"), ("on", "LoRA tok/s, gradient checkpointing")):
    oa, ob = lora("a", gc), lora("b", gc)
    row(name, [oa[0]] if oa else [], [ob[0]] if ob else [], "{:.0f}")
    row(name.replace("tok/s", "peak GB"), [oa[1]] if oa else [], [ob[1]] if ob else [], "{:.2f}")
text = "\n".join(lines) + "\n"
print(text, end="")
if out != "/dev/null":
    open(out, "w").write(text)
PY
exit $status
