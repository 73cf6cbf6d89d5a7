#!/usr/bin/env bash
# Quantized decoding on the GPU: bench_quantized (each Mistral-7B decode product, 4-bit group 64:
# the fused quantized GEMV against dequantize + cuBLASLt, beside the copy bandwidth), then the whole
# model: bench_lora_peer.py's Mistral-7B-shaped bf16 model with random weights, quantized by
# `lmtune convert -q` (affine 4-bit group 64), run by `lmtune benchmark` (batch 1, 512-token prompt,
# 128 generated tokens), with decode's share of the bound (packed bytes per token over the copy
# bandwidth bench_quantized measured), also with a 16-token prompt (as llama-bench's tg128).
# --llamacpp DIR: llama.cpp built there by bench/bench_llamacpp_gpu.sh build (waited for), run on
# the same weights (Q4_0 and Q4_K_M); --tokenizer TARBALL: Llama 2's tokenizer files put into the
# model folder first (llama.cpp's converter needs a tokenizer it knows); --ncu: ncu sections of each
# fused product and the duration of every kernel of a short generation (into $OUT). --ab: also the
# per-product times of the GEMV's variants named by LMTUNE_BENCH_AB (default "7:1 9:1 7:1 9:1", each
# VARIANT:RING_X_SMEM: 7 the default, 8 the ring, 9 the CUDA-core kernel), and the whole model's decode (prompts
# 16 and 512) with each (runtime_config.h; session 6 compared LMTUNE_CUDA_DECODE_SPLIT,
# session 5 the fused epilogues the same way). --kernels: the kernel table (LMTUNE_CUDA_PROFILE=1) of a
# 16-token prompt and 64 decode steps without a graph: each kernel's share of a decode step.
# Usage: bench/bench_quantized_gpu.sh [--build DIR] [--table PATH] [--llamacpp DIR] [--tokenizer TARBALL] [--ncu] [--ab]
#   [--kernels] [--ab-gqa]
# --ab-gqa: the 4-bit decode at prompts 512 and 4096 with LMTUNE_CUDA_DECODE_GQA=0 and 1, twice each.
# LMTUNE_BENCH_AB_ENV="A=0,B=0 A=1,B=0 ...": also the whole model's decode (prompts 16 and 512) under each
# comma-separated set of environment switches, in the order given (alternate them to see the drift);
# LMTUNE_BENCH_AB_ONLY=1 leaves out everything else but the model and its convert (no table then).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build"
table="" llamacpp="" tokenizer="" profile=0 ab=0 kernels=0 ab_gqa=0
while (($#)); do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    --table) table="$2"; shift 2 ;;
    --llamacpp) llamacpp="$2"; shift 2 ;;
    --tokenizer) tokenizer="$2"; shift 2 ;;
    --ncu) profile=1; shift ;;
    --ab) ab=1; shift ;;
    --ab-gqa) ab_gqa=1; shift ;;
    --kernels) kernels=1; shift ;;
    *) echo "bench_quantized_gpu: unknown argument $1" >&2; exit 2 ;;
  esac
done
py="${LMTUNE_PYTHON:-$(command -v python3)}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
status=0
start=$SECONDS
only_ab="${LMTUNE_BENCH_AB_ONLY:-0}"  # 1: only the model, its convert and the LMTUNE_BENCH_AB_ENV runs (a short call)
if ((!only_ab)) && [[ -x "$build/bin/bench_stream" ]]; then
  echo "== bench_stream: reads alone, row-major tile order against contiguous [$((SECONDS - start)) s]"
  "$build/bin/bench_stream" || status=1
fi
if ((!only_ab)); then
  echo "== bench_quantized [$((SECONDS - start)) s]"
  "$build/bin/bench_quantized" 2>&1 | tee "$tmp/products.txt" || status=1
fi
if ((ab)); then
  for vs in ${LMTUNE_BENCH_AB:-7:1 9:1 7:1 9:1}; do
    echo "== bench_quantized --rows 1, LMTUNE_CUDA_QGEMV_VARIANT=${vs%:*} LMTUNE_CUDA_QGEMV_RING_X_SMEM=${vs#*:} [$((SECONDS - start)) s]"
    LMTUNE_CUDA_QGEMV_VARIANT=${vs%:*} LMTUNE_CUDA_QGEMV_RING_X_SMEM=${vs#*:} "$build/bin/bench_quantized" --rows 1 2>&1 |
      grep -v "^#" || status=1
  done
fi
logdir="${OUT:-$tmp}"
if ((profile)) && command -v ncu >/dev/null; then
  echo "== ncu: one call of each fused product, M = 1 [$((SECONDS - start)) s]"
  ncu --clock-control none --kernel-name regex:qgemv --section SpeedOfLight --section MemoryWorkloadAnalysis \
    --section Occupancy --section WarpStateStats --section SchedulerStats --section LaunchStats \
    --metrics sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,sm__inst_executed_pipe_tensor_op_hmma.sum \
    "$build/bin/bench_quantized" --rows 1 --once >"$logdir/ncu-qgemv.txt" 2>&1 || echo "ncu failed (see ncu-qgemv.txt)"
  grep -E "qgemv|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Issue Slots Busy|No Eligible|Stall|hmma|inst_executed" \
    "$logdir/ncu-qgemv.txt" | head -n 80
  echo "== ncu: the same with LMTUNE_CUDA_QGEMV_VARIANT=3 (shared-memory staging) [$((SECONDS - start)) s]"
  LMTUNE_CUDA_QGEMV_VARIANT=3 ncu --clock-control none --kernel-name regex:qgemv --section SpeedOfLight \
    --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables --section WarpStateStats \
    --metrics dram__bytes_read.sum.per_second,lts__t_sector_hit_rate.pct,dram__sectors_read.sum,lts__t_sectors_srcunit_tex_op_read.sum \
    "$build/bin/bench_quantized" --rows 1 --once >"$logdir/ncu-qgemv-v3.txt" 2>&1 || echo "ncu failed (see ncu-qgemv-v3.txt)"
  grep -E "qgemv|Duration|DRAM Throughput|dram__bytes_read|hit_rate|dram__sectors|srcunit_tex|Stall" \
    "$logdir/ncu-qgemv-v3.txt" | head -n 80
fi
if ((!only_ab)); then
  echo "== lmtune perplexity on the CPU and on CUDA: models/default and its 4-bit convert [$((SECONDS - start)) s]"
  "$build/bin/lmtune" convert --hf-path "$root/models/default" --mlx-path "$tmp/default-q4" -q >/dev/null || status=1
  for m in "$root/models/default" "$tmp/default-q4"; do
    for dev in cpu cuda; do
      echo "-- $(basename "$m") on $dev"
      "$build/bin/lmtune" perplexity --model "$m" --device "$dev" --data-path "$root/examples/data" \
        --sequence-length 64 --num-samples 32 --batch-size 8 2>&1 | grep -E "Perplexity|Error|error" || status=1
    done
  done
fi
echo "== model [$((SECONDS - start)) s]"
PYTHONUNBUFFERED=1 "$py" "$root/bench/bench_lora_peer.py" model "$tmp/model" || exit 1
if [[ -n "$tokenizer" ]]; then  # Llama 2's tokenizer (vocabulary 32000): llama.cpp's converter knows it
  tar xJf "$tokenizer" -C "$tmp" && cp "$tmp"/llama2-tokenizer/* "$tmp/model/" || exit 1
fi
echo "== lmtune convert -q [$((SECONDS - start)) s]"
"$build/bin/lmtune" convert --hf-path "$tmp/model" --mlx-path "$tmp/q4" -q --q-bits 4 --q-group-size 64 || exit 1
if [[ -n "$llamacpp" ]]; then
  echo "== llama.cpp: convert_hf_to_gguf.py, llama-quantize, llama-bench [$((SECONDS - start)) s]"
  LMTUNE_PYTHON="$py" bash "$root/bench/bench_llamacpp_gpu.sh" run "$llamacpp" "$tmp/model" "$tmp/llamacpp.md" || status=1
fi
rm -rf "$tmp/model"
if ((!only_ab)); then
  echo "== lmtune benchmark [$((SECONDS - start)) s]"
  "$build/bin/lmtune" benchmark --model "$tmp/q4" --device cuda -p 512 -g 128 -n 3 2>&1 | tee "$tmp/bench.txt" || status=1
  echo "== lmtune benchmark, prompt 16 (llama-bench's tg128 starts from an empty cache) [$((SECONDS - start)) s]"
  "$build/bin/lmtune" benchmark --model "$tmp/q4" --device cuda -p 16 -g 128 -n 3 2>&1 | tee "$tmp/bench16.txt" ||
    status=1
fi
if ((ab_gqa)); then  # decoding's attention a block a query head (A) against blocks of the heads sharing a kv head (B)
  for gqa in 0 1 0 1; do
    for prompt in 512 4096; do
      echo "== lmtune benchmark -p $prompt -g 128, LMTUNE_CUDA_DECODE_GQA=$gqa [$((SECONDS - start)) s]"
      LMTUNE_CUDA_DECODE_GQA=$gqa "$build/bin/lmtune" benchmark --model "$tmp/q4" --device cuda -p $prompt -g 128 -n 2 \
        2>&1 | grep -E "Averages|Peak" || status=1
    done
  done
fi
if ((kernels)); then
  echo "== lmtune benchmark -p 16 -g 64 under LMTUNE_CUDA_PROFILE=1, no graph: the kernel table [$((SECONDS - start)) s]"
  LMTUNE_CUDA_PROFILE=1 LMTUNE_CUDA_GRAPH=0 "$build/bin/lmtune" benchmark --model "$tmp/q4" --device cuda -p 16 -g 64 -n 1 \
    2>&1 | head -n 60 || status=1
fi
if ((ab)); then
  for vs in ${LMTUNE_BENCH_AB:-7:1 9:1 7:1 9:1}; do
    for prompt in 16 512; do
      echo "== lmtune benchmark -p $prompt -g 128, LMTUNE_CUDA_QGEMV_VARIANT=${vs%:*} LMTUNE_CUDA_QGEMV_RING_X_SMEM=${vs#*:} [$((SECONDS - start)) s]"
      LMTUNE_CUDA_QGEMV_VARIANT=${vs%:*} LMTUNE_CUDA_QGEMV_RING_X_SMEM=${vs#*:} "$build/bin/lmtune" benchmark \
        --model "$tmp/q4" --device cuda -p $prompt -g 128 -n 3 2>&1 | grep -E "Averages|Peak" || status=1
    done
  done
fi
if [[ -n "${LMTUNE_BENCH_AB_ENV:-}" ]]; then  # whole-model decode under each set of switches, in the order given
  for spec in $LMTUNE_BENCH_AB_ENV; do
    IFS=, read -r -a assigns <<<"$spec"
    for prompt in 16 512; do
      echo "== lmtune benchmark -p $prompt -g 128, ${assigns[*]} [$((SECONDS - start)) s]"
      env "${assigns[@]}" "$build/bin/lmtune" benchmark --model "$tmp/q4" --device cuda -p $prompt -g 128 -n 3 2>&1 |
        grep -E "Averages|Peak" || status=1
    done
  done
fi
if ((profile)) && command -v ncu >/dev/null; then
  echo "== ncu: every kernel of a 3-token prompt and 3 decode steps, no graph [$((SECONDS - start)) s]"
  LMTUNE_CUDA_GRAPH=0 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
    "$build/bin/lmtune" generate --model "$tmp/q4" --device cuda --prompt "a b c" --max-tokens 4 --temp 0 --ignore-chat-template \
    >"$logdir/ncu-decode.csv" 2>"$logdir/ncu-decode.err" || echo "ncu failed (see ncu-decode.err)"
  "$py" - "$logdir/ncu-decode.csv" <<'PY'
import csv, collections, sys
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
if not rows:
    sys.exit("no ncu rows")
h = rows[0]
ki, vi, ii = h.index("Kernel Name"), h.index("Metric Value"), h.index("ID")
num = lambda v: float(v.replace(",", ""))  # ncu prints thousands separators ("3,616")
ks = [(int(num(r[ii])), r[ki].split("(")[0].split("<")[0][-40:] + ("<" + r[ki].split("<")[1].split(">")[0][:30] + ">" if "<" in r[ki] else ""), num(r[vi]) / 1e3) for r in rows[1:]]
n = len(ks)
# The last decode step: the kernels after the last lm_head-sized product are the sampler's; take the
# final quarter of the run, which is one of the three decode steps when the prompt step is similar.
step = ks[3 * n // 4:]
tot = collections.defaultdict(float); cnt = collections.Counter()
for _, k, us in step:
    tot[k] += us; cnt[k] += 1
print(f"ncu: {n} kernels in all; the last quarter ({len(step)} kernels, about one decode step): {sum(tot.values()):.0f} us")
for k, us in sorted(tot.items(), key=lambda x: -x[1])[:25]:
    print(f"  {us:9.1f} us  {cnt[k]:4d} x  {k}")
PY
fi
((only_ab)) && exit "$status"  # the table needs the runs left out
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
try:
    m16 = re.search(r"Averages: prompt_tps=([\d.]+), generation_tps=([\d.]+)", open(f"{tmp}/bench16.txt").read())
    if m16:
        lines.append(f"lmtune benchmark -p 16 -g 128: decode {float(m16[2]):.1f} tok/s")
except OSError:
    pass
try:
    lines += ["", "llama.cpp (llama-bench, CUDA, -ngl 99 -fa 0, same weights through convert_hf_to_gguf.py + llama-quantize):", open(f"{tmp}/llamacpp.md").read().strip()]
except OSError:
    pass
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
