#!/usr/bin/env bash
# Runs bench_gpu (lmtune, CUDA bf16) and bench_gpu_peer.py (PyTorch bf16 on the same GPU) one
# after the other and prints one markdown table "what | lmtune | torch | ratio", ratio being
# torch's time over lmtune's (above 1: lmtune is faster). Targets: every GEMM >= 0.90 of
# torch.matmul; the block forward+backward >= 1.00. The two ceilings (copy bandwidth, peak bf16
# matmul) come from torch alone, copy also from lmtune.
# Usage: bench/run_gpu.sh [--build DIR] [--table PATH] [--smoke]   (default build/; --table also
# writes the table there; --smoke runs both programs on the CPU at tiny sizes, a check of the
# scripts rather than a measurement). LMTUNE_PYTHON picks the Python with torch + transformers
# (default python3).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build"
table=""
smoke=()
while (($#)); do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    --table) table="$2"; shift 2 ;;
    --smoke) smoke=(--smoke); shift ;;
    *) echo "run_gpu: unknown argument $1" >&2; exit 2 ;;
  esac
done
py="${LMTUNE_PYTHON:-$(command -v python3)}"
if [[ ! -x "$build/bin/bench_gpu" ]]; then
  echo "run_gpu: $build/bin/bench_gpu not built (needs the CUDA backend: cmake finds nvcc and cuBLAS)" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
status=0
echo "== bench_gpu (lmtune)"
"$build/bin/bench_gpu" --json "$tmp/lmtune.jsonl" "${smoke[@]}" || { echo "run_gpu: bench_gpu failed ($?)"; status=1; }
echo "== bench_gpu_peer.py (torch)"
PYTHONUNBUFFERED=1 "$py" "$root/bench/bench_gpu_peer.py" --json "$tmp/torch.jsonl" "${smoke[@]}" ||
  { echo "run_gpu: bench_gpu_peer.py failed ($?)"; status=1; }
touch "$tmp/lmtune.jsonl" "$tmp/torch.jsonl"

"$py" - "$tmp/lmtune.jsonl" "$tmp/torch.jsonl" "${table:-/dev/null}" <<'EOF'
import json
import sys

ours_path, torch_path, table_path = sys.argv[1:4]
load = lambda p: {r["name"]: r for r in map(json.loads, filter(str.strip, open(p)))}
ours, peer = load(ours_path), load(torch_path)
names = list(peer) + [n for n in ours if n not in peer]

def cell(r):
    if r is None:
        return "not run"
    if r["error"]:
        return "FAILED"
    if r["tflops"]:
        return f"{r['tflops']:.1f} TFLOP/s ({r['ms']:.3f} ms)"
    if r["gbps"]:
        return f"{r['gbps']:.0f} GB/s ({r['ms']:.3f} ms)"
    return f"{r['ms']:.3f} ms"

def target(name):
    if name.startswith("gemm_"):
        return 0.90
    if name == "block_fwd_bwd" or name == "model1_fwd_bwd":
        return 1.00
    return None

lines = ["| what | lmtune | torch | ratio | target |", "| --- | --- | --- | --- | --- |"]
for n in names:
    o, p = ours.get(n), peer.get(n)
    ratio, verdict = "-", ""
    if o and p and not o["error"] and not p["error"] and o["ms"] > 0 and p["ms"] > 0:
        r = p["ms"] / o["ms"]
        ratio = f"{r:.2f}"
        t = target(n)
        if t is not None:
            verdict = f">= {t:.2f}: " + ("met" if r >= t else "MISSED")
    elif n in ("peak_matmul_8192",):
        verdict = "ceiling"
    lines.append(f"| {n} | {cell(o)} | {cell(p)} | {ratio} | {verdict} |")
errors = [f"{src} {r['name']}: {r['error']}" for src, d in (("lmtune", ours), ("torch", peer))
          for r in d.values() if r["error"]]
text = "\n".join(lines) + "\n" + "".join(f"\nfailed: {e}" for e in errors) + ("\n" if errors else "")
print("\nratio = torch time / lmtune time (above 1: lmtune faster)\n")
print(text, end="")
if table_path != "/dev/null":
    open(table_path, "w").write(text)
EOF
exit $status
