#!/usr/bin/env bash
# LoRA training speed on the CPU, two tools one after the other in one run: `lmtune lora --device
# cpu` and mlx_lm.lora (MLX's CPU backend, through bench/bench_lora_mlx.py, which runs mlx_lm.lora's
# own main() and prints its per-report dict as the classic Iter line) on the same model, data and
# flags: models/default (3.67 M-parameter Llama, 4 blocks) copied to f32 so that both compute in
# f32, examples/data (WordNet definitions, completions format), LoRA rank 8 (scale 20, dropout 0)
# on all 7 linear layers of all blocks, batch 4, Adam lr 1e-5, max sequence 512, W warm-up
# iterations then S timed ones; both validate on all of valid.jsonl before the first step (the
# same loss is expected: a check that model and data are the same). Prints one table: tokens/s
# (supervised tokens over train time, the reports after the warm-up) and peak memory as each tool
# reports it.
# Usage: bench/bench_lora_cpu.sh [--build DIR] [--warmup W] [--steps S] [--batch N] [--threads N]
# (defaults: build/, 10, 30, 4, 2; W and S multiples of the 10-step report). .venv needs mlx-lm.
# The peer transformers + peft (torch CPU) on a 26M Qwen2-shaped model: bench/bench_lora_cpu_peft.sh.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build"
warmup=10 steps=30 batch=4 threads=2 report=10 seq=512
while (($#)); do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    *) echo "bench_lora_cpu: unknown argument $1" >&2; exit 2 ;;
  esac
done
if ((warmup % report || steps % report || warmup < report || steps < report)); then
  echo "bench_lora_cpu: --warmup and --steps must be positive multiples of the $report-step report" >&2
  exit 2
fi
py="${LMTUNE_PYTHON:-$root/.venv/bin/python}"
lmtune="$build/bin/lmtune"
[[ -x "$lmtune" ]] || { echo "bench_lora_cpu: $lmtune not built" >&2; exit 1; }
export OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
iters=$((warmup + steps))
data="$root/examples/data"

# models/default in f32 (its file is bf16): lmtune computes in f32 on the CPU either way, MLX
# would compute in bf16.
"$py" - "$root/models/default" "$tmp/model" <<'PY' || { echo "bench_lora_cpu: cannot make the f32 model"; exit 1; }
import json, os, shutil, sys
from safetensors.torch import load_file, save_file
src, dst = sys.argv[1:3]
os.makedirs(dst)
save_file({k: v.float().contiguous() for k, v in load_file(f"{src}/model.safetensors").items()},
          f"{dst}/model.safetensors", metadata={"format": "pt"})
c = json.load(open(f"{src}/config.json"))
c["torch_dtype"] = c["dtype"] = "float32"
json.dump(c, open(f"{dst}/config.json", "w"), indent=2)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(f"{src}/{f}", f"{dst}/{f}")
PY
cat >"$tmp/lora.yaml" <<EOF
model: $tmp/model
train: true
data: $data
fine_tune_type: lora
num_layers: -1
lora_parameters:
  rank: 8
  scale: 20.0
  dropout: 0.0
  keys: [self_attn.q_proj, self_attn.k_proj, self_attn.v_proj, self_attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
optimizer: adam
batch_size: $batch
iters: $iters
learning_rate: 1.0e-5
steps_per_report: $report
steps_per_eval: 100000
val_batches: -1
save_every: 100000
max_seq_length: $seq
seed: 0
EOF

mlxv="$("$py" -c 'import mlx.core as mx, mlx_lm; print(f"mlx {mx.__version__} ({mx.default_device()}), mlx-lm {mlx_lm.__version__}")')"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; threads $threads; $mlxv"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
status=0
start=$SECONDS
echo "== lmtune lora [$((SECONDS - start)) s]"
/usr/bin/time -f "lmtune: %e s wall, %U s user, %M KB max RSS" \
  "$lmtune" lora -c "$tmp/lora.yaml" --device cpu --adapter-path "$tmp/adapters-lmtune" 2>&1 | tee "$tmp/lmtune.txt"
((PIPESTATUS[0] == 0)) || { echo "lmtune lora failed"; status=1; }
echo "== mlx_lm.lora (bench_lora_mlx.py) [$((SECONDS - start)) s]"
NO_COLOR=1 /usr/bin/time -f "mlx_lm: %e s wall, %U s user, %M KB max RSS" \
  "$py" "$root/bench/bench_lora_mlx.py" -c "$tmp/lora.yaml" --adapter-path "$tmp/adapters-mlx" 2>&1 |
  grep -v -i -E 'warn|deprecat' | tee "$tmp/mlx.txt"
((PIPESTATUS[0] == 0)) || { echo "mlx_lm.lora failed"; status=1; }
echo "== done [$((SECONDS - start)) s]; load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

"$py" - "$tmp" "$warmup" "$steps" "$threads" "$batch" "$report" <<'PY' || status=1
import re, sys
tmp, warmup, steps, threads, batch, report = sys.argv[1], *map(int, sys.argv[2:4]), sys.argv[4], *map(int, sys.argv[5:7])
pat = re.compile(r"Iter (\d+): Train loss ([\d.naninf]+), Learning Rate \S+, It/sec [\d.]+, Tokens/sec ([\d.]+), "
                 r"Trained Tokens (\d+), Peak mem ([\d.]+) GB")
def parse(name, pad_targets):
    t = open(f"{tmp}/{name}.txt").read()
    reps = [(int(m[1]), float(m[2]), float(m[3]), int(m[4]), float(m[5])) for m in pat.finditer(t)]
    val = re.search(r"Iter 1: Val loss ([\d.]+)", t)
    rss = re.search(r"([\d]+) KB max RSS", t)
    if not reps or reps[-1][0] != warmup + steps:
        return None
    # Tokens/sec of a report = its tokens / its train time; the timed stretch is sum(tokens) / sum(time).
    toks, real, secs = 0, 0, 0.0
    for i, r in enumerate(reps):
        if r[0] <= warmup:
            continue
        n = r[3] - reps[i - 1][3]
        toks += n
        real += n - pad_targets * batch * report
        secs += n / r[2]
    return {"tps": toks / secs, "real_tps": real / secs, "peak": reps[-1][4], "val": float(val[1]) if val else None,
            "rss": int(rss[1]) / 1e6 if rss else None, "loss": (reps[0][1], reps[-1][1])}
# mlx-lm's loss mask (steps <= length) also counts one padding target per row (PR #1697; no row of
# examples/data reaches max_seq_length, so every row has one); lmtune counts real targets only.
rows = [("lmtune lora", parse("lmtune", 0)), ("mlx_lm.lora (MLX CPU)", parse("mlx", 1))]
ours = rows[0][1]
print(f"\nLoRA rank 8 on all 7 linear layers of the 4 blocks of models/default (f32), examples/data, batch {batch}, "
      f"{threads} threads; {steps} timed iterations after {warmup} warm-up\n")
print("| tool | tokens/s as reported | tokens/s, real targets | lmtune / tool (real) | peak mem GB (own report) | "
      "max RSS GB | val loss, iter 1 | train loss, first -> last report |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for name, r in rows:
    if r is None:
        print(f"| {name} | FAILED | - | - | - | - | - | - |")
        continue
    ratio = f"{ours['real_tps'] / r['real_tps']:.2f}" if ours else "-"
    val = f"{r['val']:.3f}" if r["val"] is not None else "-"
    rss = f"{r['rss']:.3f}" if r["rss"] is not None else "-"
    print(f"| {name} | {r['tps']:.1f} | {r['real_tps']:.1f} | {ratio} | {r['peak']:.3f} | {rss} | {val} | "
          f"{r['loss'][0]:.3f} -> {r['loss'][1]:.3f} |")
print("\nmlx-lm's loss mask (steps <= length, PR #1697) adds one padding target per row to its loss and its token "
      "count; 'real targets' subtracts them (batch x steps). That target is also why its val loss differs.")
if any(r is None for _, r in rows):
    sys.exit(1)
PY
exit $status
