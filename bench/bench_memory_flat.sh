#!/usr/bin/env bash
# Memory that stays flat (issue 13): resident memory (and, with --device cuda, the GPU memory that
# nvidia-smi gives the process, or the device's used memory where it lists no process) sampled over a 1,000-step LoRA run and a 10,000-token generation of
# a small model (models/default unless --model), by bench/memory_sampler.py. Prints, for each, a
# table over time and the RSS at warm-up, at the end and the largest growth after warm-up.
#   training:   `lmtune lora`, 1,000 iterations (batch 4, validation every 200, saves every 250);
#               warm-up = iteration 100.
#   generation: `lmtune benchmark -p 16 -g 10000 -n RUNS` (EOS ignored): a 10,000-token warm-up
#               run, then RUNS timed 10,000-token runs (progress = runs finished). Within one run
#               the KV cache grows by design (layers x 2 x kv heads x head_dim x 4 bytes a token,
#               printed); warm-up = the end of the first run, so the growth after it is what
#               identical runs add; the peak of each run is printed too.
# Usage: bench/bench_memory_flat.sh [--build DIR] [--model DIR] [--device cpu|cuda] [--threads N]
#        [--iters N] [--tokens N] [--runs N] [--only training|generation] [--out DIR]
#        (defaults: build/, models/default, cpu, 1, 1000, 10000, 2, both, build/bench-memory-flat;
#        the samples go to OUT/*.csv)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build"
model="$root/models/default"
device=cpu threads=1 iters=1000 tokens=10000 runs=2 only="" out=""
while (($#)); do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --iters) iters="$2"; shift 2 ;;
    --tokens) tokens="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "bench_memory_flat: unknown argument $1" >&2; exit 2 ;;
  esac
done
out="${out:-$build/bench-memory-flat}"
mkdir -p "$out"
lmtune="$build/bin/lmtune"
[[ -x "$lmtune" ]] || { echo "bench_memory_flat: $lmtune not built" >&2; exit 2; }
gpu=()
[[ "$device" == cuda ]] && gpu=(--gpu --gpu-device)
export OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads
sampler=(python3 "$root/bench/memory_sampler.py")

echo "bench_memory_flat: $(date -u '+%Y-%m-%d %H:%M UTC'), $(lscpu | sed -n 's/^Model name: *//p' | head -1), device $device," \
  "$threads thread(s), model $model"

if [[ "$only" != generation ]]; then
rm -rf "$out/adapters"
"${sampler[@]}" --label "training ($iters steps)" --progress '^Iter ([0-9]+): Train loss' --warmup $((iters / 10)) \
  --every $((iters / 10)) --csv "$out/training.csv" "${gpu[@]}" -- \
  "$lmtune" lora --model "$model" --train --data "$root/examples/data" --adapter-path "$out/adapters" \
  --iters "$iters" --batch-size 4 --max-seq-length 128 --num-layers -1 --steps-per-report 10 \
  --steps-per-eval 200 --val-batches 4 --save-every 250 --learning-rate 1e-4 --device "$device"
fi
[[ "$only" == training ]] && exit 0

kv=$(python3 -c "
import json, sys
c = json.load(open(sys.argv[1] + '/config.json'))
hd = c.get('head_dim') or c['hidden_size'] // c['num_attention_heads']
print(c['num_hidden_layers'] * 2 * c.get('num_key_value_heads', c['num_attention_heads']) * hd * 4)" "$model")
echo
echo "generation: the KV cache takes $kv bytes a token in f32: $(python3 -c "print(f'{$kv * ($tokens + 16) / 2**20:.1f}')") MiB" \
  "for $((tokens + 16)) tokens (the growth expected within one run)"
"${sampler[@]}" --label "generation ($tokens tokens, $((runs + 1)) runs)" --progress '^(?:Timing with|Trial [0-9]+:)' --warmup 1 --every 1 \
  --csv "$out/generation.csv" "${gpu[@]}" -- \
  "$lmtune" benchmark --model "$model" -p 16 -g "$tokens" -n "$runs" --device "$device"
