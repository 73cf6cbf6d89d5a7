#!/usr/bin/env bash
# Runs bench_cpu (lmtune, f32) and bench_cpu_peer.py (PyTorch CPU, f32) one after the other on
# the same machine with the same thread count, and prints one markdown table
# "op | shape | lmtune | torch | lmtune/torch". GEMV and rms_norm are memory-bound: their rate
# is bytes moved (each operand read once, each output written once); the others are FLOP/s.
# Usage: bench/run_cpu.sh [--threads N] [--build DIR]   (defaults: nproc, build/)
# LMTUNE_PYTHON picks the Python with torch (default .venv/bin/python, else python3).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
threads="$(nproc)"
build="$root/build"
while (($#)); do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    *) echo "run_cpu: unknown argument $1" >&2; exit 2 ;;
  esac
done
py="${LMTUNE_PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py="$(command -v python3)"; fi
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if [[ ! -f "$build/build.ninja" ]]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >"$tmp/cmake.log" 2>&1 ||
    { cat "$tmp/cmake.log" >&2; exit 1; }
fi
ninja -C "$build" -j "${LMTUNE_JOBS:-$(nproc)}" bench_cpu >"$tmp/build.log" 2>&1 ||
  { cat "$tmp/build.log" >&2; exit 1; }
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
OPENBLAS_NUM_THREADS="$threads" "$build/bin/bench_cpu" --benchmark_out="$tmp/lmtune.json" \
  --benchmark_out_format=json >"$tmp/lmtune.txt" 2>&1 || { cat "$tmp/lmtune.txt" >&2; exit 1; }
"$py" "$root/bench/bench_cpu_peer.py" --threads "$threads" >"$tmp/torch.jsonl"
torch_version="$("$py" -c 'import torch; print(torch.__version__)')"
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
# Other processes on a small machine skew the numbers (OpenMP's spinning threads most): say so.
echo "$cpu, $(nproc) cores; load average $load_before before, $load_after after"

"$py" - "$tmp/lmtune.json" "$tmp/torch.jsonl" "$threads" "$torch_version" <<'EOF'
import json
import sys

ours_path, torch_path, threads, torch_version = sys.argv[1:5]
ours = {}
for b in json.load(open(ours_path))["benchmarks"]:
    if b.get("aggregate_name") == "median":
        ours[b["run_name"].split("/min_time:")[0]] = b
peer = {r["name"]: r for r in map(json.loads, open(torch_path))}

def metric(name):
    # Memory-bound ops are judged by bytes per second, the rest by FLOP/s.
    return "bytes" if name.startswith("rms_norm/") or name.startswith("linear/1x") else "flops"

def fmt(rate, seconds, kind):
    unit = "GB/s" if kind == "bytes" else "GFLOP/s"
    return f"{rate / 1e9:.1f} {unit} ({seconds * 1e3:.2f} ms)"

print(f"CPU f32, {threads} threads; torch {torch_version}; median of 3 repetitions of >= 0.2 s each")
print()
print("| op | shape | lmtune | torch | lmtune/torch |")
print("| --- | --- | --- | --- | --- |")
for name, b in ours.items():
    op, shape = name.split("/", 1)
    kind = metric(name)
    scale = {"ms": 1e-3, "us": 1e-6, "ns": 1e-9, "s": 1.0}[b["time_unit"]]
    ours_s = b["real_time"] * scale
    p = peer.get(name)
    theirs = fmt(p[kind], p["seconds"], kind) if p else "missing"
    ratio = f"{b[kind] / p[kind]:.2f}" if p and p[kind] else "-"
    print(f"| {op} | {shape} | {fmt(b[kind], ours_s, kind)} | {theirs} | {ratio} |")
EOF
