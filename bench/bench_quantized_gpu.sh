#!/usr/bin/env bash
# Quantized decoding on the GPU: bench_quantized (each Mistral-7B decode product, 4-bit group 64:
# the fused quantized GEMV against dequantize + cuBLASLt, beside the copy bandwidth), then the whole
# model: bench_lora_peer.py's Mistral-7B-shaped bf16 model with random weights, quantized by
# `lmtune convert -q` (affine 4-bit group 64), run by `lmtune benchmark` (batch 1, 512-token prompt,
# 128 generated tokens), with decode's share of the bound (packed bytes per token over the copy
# bandwidth bench_quantized measured). Usage: bench/bench_quantized_gpu.sh [--build DIR] [--table PATH]
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build"
table=""
while (($#)); do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    --table) table="$2"; shift 2 ;;
    *) echo "bench_quantized_gpu: unknown argument $1" >&2; exit 2 ;;
  esac
done
py="${LMTUNE_PYTHON:-$(command -v python3)}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
status=0
start=$SECONDS
echo "== bench_quantized [$((SECONDS - start)) s]"
"$build/bin/bench_quantized" 2>&1 | tee "$tmp/products.txt" || status=1
echo "== model [$((SECONDS - start)) s]"
PYTHONUNBUFFERED=1 "$py" "$root/bench/bench_lora_peer.py" model "$tmp/model" || exit 1
echo "== lmtune convert -q [$((SECONDS - start)) s]"
"$build/bin/lmtune" convert --hf-path "$tmp/model" --mlx-path "$tmp/q4" -q --q-bits 4 --q-group-size 64 || exit 1
rm -rf "$tmp/model"
echo "== lmtune benchmark [$((SECONDS - start)) s]"
"$build/bin/lmtune" benchmark --model "$tmp/q4" --device cuda -p 512 -g 128 -n 3 2>&1 | tee "$tmp/bench.txt" || status=1
# Bytes a decode step streams: every tensor but the embedding (of which it gathers one row).
"$py" - "$tmp/q4" >"$tmp/bytes.txt" <<'PY'
import glob, json, struct, sys
total = 0
for f in glob.glob(sys.argv[1] + "/*.safetensors"):
    with open(f, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
    total += sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()
                 if k != "__metadata__" and not k.startswith("model.embed_tokens."))
print(total)
PY
echo "== done [$((SECONDS - start)) s]"
card="$(nvidia-smi -L 2>/dev/null | head -n 1 | sed 's/ (UUID.*//')"
"$py" - "$tmp" "${card:-unknown GPU}" "${table:-/dev/null}" <<'PY'
import re, sys
tmp, card, out = sys.argv[1:4]
bench = open(f"{tmp}/bench.txt").read()
m = re.search(r"Averages: prompt_tps=([\d.]+), generation_tps=([\d.]+)", bench)
products = open(f"{tmp}/products.txt").read()
bw = re.search(r"copy bandwidth \(d2d, read \+ write\):? ([\d.]+) GB/s", products)
nbytes = int(open(f"{tmp}/bytes.txt").read().strip() or 0)
lines = [f"{card}; Mistral-7B shape, affine 4-bit group 64 (lmtune convert -q), batch 1, prompt 512, generate 128"]
if m:
    lines.append(f"lmtune benchmark: prompt {float(m[1]):.0f} tok/s, decode {float(m[2]):.1f} tok/s")
if m and bw and nbytes:
    bound = float(bw[1]) * 1e9 / nbytes
    lines.append(f"decode bound: {nbytes / 1e9:.3f} GB of packed weights, scales and biases per token (all but the embedding) "
                 f"at {float(bw[1]):.0f} GB/s copy bandwidth = {bound:.1f} tok/s; decode = {100 * float(m[2]) / bound:.1f}% of it")
text = "\n".join(lines) + "\n"
print(text, end="")
if out != "/dev/null":
    open(out, "w").write(text)
PY
exit $status
