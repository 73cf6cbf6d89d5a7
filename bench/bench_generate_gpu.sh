#!/usr/bin/env bash
# Generation speed on the GPU: bench_generate (lmtune's runtime, CUDA bf16) and then
# bench_generate_peer.py (transformers' generate, bf16 sdpa) on a Mistral-7B-shaped model with
# random weights, batch 1, 512-token prompt, 128 generated tokens; prints one table with prompt
# and decode tok/s side by side (lmtune's decode also without its CUDA graph, LMTUNE_CUDA_GRAPH=0)
# and decode as a share of the memory-bandwidth bound (weight bytes
# per token over the copy bandwidth bench_generate measures). Targets: decode >= 70% of the bound,
# prompt >= 10k tok/s. About 1-2 minutes on an H100 once built.
# Usage: bench/bench_generate_gpu.sh [--build DIR] [--table PATH] [--smoke]   (default build/;
# --smoke: both on the CPU at tiny sizes, a check of the scripts). LMTUNE_PYTHON: the Python with
# torch + transformers (default python3).
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
    *) echo "bench_generate_gpu: unknown argument $1" >&2; exit 2 ;;
  esac
done
py="${LMTUNE_PYTHON:-$(command -v python3)}"
if [[ ! -x "$build/bin/bench_generate" ]]; then
  echo "bench_generate_gpu: $build/bin/bench_generate not built (needs the CUDA backend)" >&2
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
status=0
start=$SECONDS
echo "== bench_generate (lmtune)"
"$build/bin/bench_generate" --json "$tmp/lmtune.json" "${smoke[@]}" || { echo "bench_generate failed ($?)"; status=1; }
echo "== bench_generate, decode without the CUDA graph (LMTUNE_CUDA_GRAPH=0) [$((SECONDS - start)) s]"
LMTUNE_CUDA_GRAPH=0 "$build/bin/bench_generate" --json "$tmp/eager.json" "${smoke[@]}" ||
  { echo "bench_generate (eager) failed ($?)"; status=1; }
echo "== bench_generate_peer.py (transformers) [$((SECONDS - start)) s]"
PYTHONUNBUFFERED=1 "$py" "$root/bench/bench_generate_peer.py" --json "$tmp/peer.json" "${smoke[@]}" ||
  { echo "bench_generate_peer.py failed ($?)"; status=1; }
echo "== done [$((SECONDS - start)) s]"
"$py" - "$tmp/lmtune.json" "$tmp/peer.json" "${table:-/dev/null}" "$tmp/eager.json" <<'PY'
import json, os, sys
load = lambda p: json.load(open(p)) if os.path.exists(p) and os.path.getsize(p) else None
o, p, out, e = load(sys.argv[1]), load(sys.argv[2]), sys.argv[3], load(sys.argv[4])
f = lambda r, k, fmt: fmt.format(r[k]) if r else "FAILED"
lines = []
if o:
    lines.append(f"{o['device']}: copy bandwidth {o['copy_gbps']:.0f} GB/s; {o['bytes_per_token'] / 1e9:.3f} GB read per "
                 f"decode token -> bound {o['bound_tps']:.1f} tok/s; prompt {o['prompt']}, decode {o['gen']} tokens")
if o and "gemv_ms_per_token" in o:
    lines.append(f"one token's weight products alone: {o['gemv_ms_per_token']:.3f} ms through gemv.cu, "
                 f"{o['cublas_ms_per_token']:.3f} ms through cuBLASLt; the whole token at the bound: "
                 f"{1e3 / o['bound_tps']:.3f} ms")
if p:
    lines.append(f"peer: torch {p['torch']}, transformers {p['transformers']}")
lines += ["", "| batch 1, bf16 | lmtune | transformers | lmtune / transformers | target |", "| --- | --- | --- | --- | --- |"]
ratio = lambda k: f"{o[k] / p[k]:.2f}" if o and p and p[k] > 0 else "-"
pt = (">= 10000 tok/s: " + ("met" if o["prompt_tps"] >= 10000 else "MISSED")) if o else ""
lines.append(f"| prompt tok/s | {f(o, 'prompt_tps', '{:.0f}')} | {f(p, 'prompt_tps', '{:.0f}')} | {ratio('prompt_tps')} | {pt} |")
lines.append(f"| decode tok/s | {f(o, 'decode_tps', '{:.1f}')} | {f(p, 'decode_tps', '{:.1f}')} | {ratio('decode_tps')} | |")
if o:
    share = lambda r: f"{100 * r['decode_tps'] / o['bound_tps']:.1f}%" if r else "-"
    dt = ">= 70%: " + ("met" if o["decode_tps"] >= 0.7 * o["bound_tps"] else "MISSED")
    lines.append(f"| decode / bound ({o['bound_tps']:.1f} tok/s) | {share(o)} | {share(p)} | | {dt} |")
if e:
    lines.append(f"| decode tok/s, no CUDA graph (LMTUNE_CUDA_GRAPH=0) | {e['decode_tps']:.1f} | | | |")
lines.append(f"| peak memory GB | {f(o, 'peak_gb', '{:.2f}')} | {f(p, 'peak_gb', '{:.2f}')} | | |")
text = "\n".join(lines) + "\n"
print(text, end="")
if out != "/dev/null":
    open(out, "w").write(text)
PY
exit $status
