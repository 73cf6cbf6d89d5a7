#!/usr/bin/env bash
# `lmtune lora --pack` against padded batches, same model, same data, same token budget per step
# (the same --batch-size B and --max-seq-length L: at most B x L token slots a step): a chat dataset
# of 100-800-token examples (bench/make_pack_data.py) trained for one epoch (--epochs 1) on the
# Mistral-7B-shaped bf16 model of bench_lora_gpu.sh (bench_lora_peer.py model), LoRA rank 8 on all 7
# linear layers of every block, Adam lr 1e-5, on CUDA:
#   padded: B examples a step, each row padded to the longest of its length-sorted batch (so about
#           B x 460 of the B x L slots hold tokens);
#   packed: --pack: B rows of L - 1 input slots, filled with whole examples (best-fit decreasing).
# Prints tokens/s (supervised tokens over train time, the mean of the reports after the first),
# steps, peak memory and the last train loss of each, and the ratio (target: packed >= 2x padded).
# Usage: bench/bench_pack_gpu.sh [--build DIR] [--model DIR] [--batch B] [--seq L] [--n N]
#          [--table PATH] [--grad-checkpoint] [--smoke]
# (default build/, a fresh model in a temporary folder (or --model, reused), B 4, L 2048, N 2000
# training examples; --smoke: the CPU with bench_lora_peer.py's 2-layer f32 model, B 2, L 1600, N 40,
# a check of the script). LMTUNE_PYTHON: Python with torch + transformers + tokenizers (default
# .venv/bin/python if present, else python3).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build" model="" batch="" seq="" n="" table="" smoke=0 gc=()
while (($#)); do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    --model) model="$(cd "$2" && pwd)"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --seq) seq="$2"; shift 2 ;;
    --n) n="$2"; shift 2 ;;
    --table) table="$2"; shift 2 ;;
    --grad-checkpoint) gc=(--grad-checkpoint); shift ;;
    --smoke) smoke=1; shift ;;
    *) echo "bench_pack_gpu: unknown argument $1" >&2; exit 2 ;;
  esac
done
py="${LMTUNE_PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py="$(command -v python3)"; fi
fi
lmtune="$build/bin/lmtune"
[[ -x "$lmtune" ]] || { echo "bench_pack_gpu: $lmtune not built" >&2; exit 1; }
if ((smoke)); then
  device=cpu dtype=float32 smoke_flag=(--smoke) report=2
  batch="${batch:-2}" seq="${seq:-1600}" n="${n:-40}"
else
  device=cuda dtype=bfloat16 smoke_flag=() report=10
  batch="${batch:-4}" seq="${seq:-2048}" n="${n:-2000}"
fi
((batch >= 1 && seq >= 801)) || { echo "bench_pack_gpu: --batch must be >= 1 and --seq > 800" >&2; exit 2; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
if [[ -z "$model" ]]; then
  echo "== model [$((SECONDS - start)) s]"
  model="$tmp/model"
  PYTHONUNBUFFERED=1 "$py" "$root/bench/bench_lora_peer.py" model "$model" "${smoke_flag[@]}" ||
    { echo "bench_pack_gpu: cannot write the model" >&2; exit 1; }
fi
echo "== data [$((SECONDS - start)) s]"
"$py" "$root/bench/make_pack_data.py" "$tmp/data" --model "$model" --n-train "$n" --min 100 --max 800 ||
  { echo "bench_pack_gpu: cannot write the data" >&2; exit 1; }
cat >"$tmp/lora.yaml" <<EOF
lora_parameters:
  rank: 8
  scale: 20.0
  dropout: 0.0
EOF

status=0
run() {  # name, then the flags that differ
  local name="$1"
  shift
  echo "== lmtune lora, $name [$((SECONDS - start)) s]"
  local cmd=("$lmtune" lora --model "$model" --train --data "$tmp/data" --device "$device" --dtype "$dtype"
    -c "$tmp/lora.yaml" --fine-tune-type lora --optimizer adam --num-layers -1 --epochs 1
    --steps-per-report "$report" --steps-per-eval 1000000 --val-batches 1 --learning-rate 1e-5
    --save-every 1000000 --seed 0 --adapter-path "$tmp/adapters-$name" "${gc[@]}" "$@")
  echo "${cmd[*]}" | sed "s|$tmp/||g"
  "${cmd[@]}" >"$tmp/$name.txt" 2>&1
  local rc=$?
  grep -E '^(Packed|Iter [0-9]+: Train)' "$tmp/$name.txt" | sed -n '1p;$p'
  ((rc == 0)) || { echo "lmtune lora ($name) failed (rc $rc):"; tail -5 "$tmp/$name.txt"; status=1; }
}
run padded --batch-size "$batch" --max-seq-length "$seq"
run packed --pack --batch-size "$batch" --max-seq-length "$seq"

"$py" - "$tmp" "$batch" "$seq" "$n" "$device" "${table:-/dev/null}" <<'PY'
import re, sys
tmp, batch, seq, n, device, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
pat = re.compile(r"Iter (\d+): Train loss ([\d.]+), .*Tokens/sec ([\d.]+), Trained Tokens (\d+), Peak mem ([\d.]+) GB")
def parse(name):
    try:
        rows = [m.groups() for m in map(pat.search, open(f"{tmp}/{name}.txt")) if m]
    except OSError:
        return None
    if not rows:
        return None
    rates = [float(r[2]) for r in rows[1:]] or [float(rows[0][2])]
    return dict(steps=int(rows[-1][0]), loss=float(rows[-1][1]), tok_s=sum(rates) / len(rates),
                tokens=int(rows[-1][3]), peak=max(float(r[4]) for r in rows))
p, k = parse("padded"), parse("packed")
lines = [f"{n} chat examples of 100-800 tokens, one epoch, on {device}; budget {batch} x {seq} token slots a step",
         "", "| batches | steps | tok/s | trained tokens | peak GB | last train loss |", "| --- | --- | --- | --- | --- | --- |"]
for name, r, how in (("padded", p, f"--batch-size {batch} --max-seq-length {seq}"),
                     ("packed", k, f"--pack --batch-size {batch} --max-seq-length {seq}")):
    lines.append(f"| {name} ({how}) | " + (f"{r['steps']} | {r['tok_s']:.0f} | {r['tokens']} | {r['peak']:.2f} | "
                                         f"{r['loss']:.3f} |" if r else "FAILED | | | | |"))
if p and k:
    lines += ["", f"packed / padded tokens/s: {k['tok_s'] / p['tok_s']:.2f}x (target >= 2x); trained tokens "
              f"{'equal' if k['tokens'] == p['tokens'] else 'DIFFER'} ({k['tokens']} vs {p['tokens']})"]
text = "\n".join(lines) + "\n"
print(text, end="")
if out != "/dev/null":
    open(out, "w").write(text)
PY
exit $status
