#!/usr/bin/env bash
# LoRA training speed on the CPU beside transformers + peft (torch CPU), same model, same data, one
# command: a Qwen2-shaped f32 model with random weights (bench_lora_peer.py model --shape qwen2-26m:
# hidden 512, 8 layers, 8 heads / 2 kv heads, n_ff 1536, vocab 2048, 26.2 M parameters), text
# records each truncated to --seq tokens (default 241: 240 supervised tokens a row), batch 4,
# LoRA rank 8 (scale 20, dropout 0) on all 7 linear layers of all 8 blocks, Adam lr 1e-5, W
# warm-up then S timed steps, --threads threads on both sides (OPENBLAS_NUM_THREADS for lmtune,
# torch.set_num_threads for the peer). The tools run in turns, --rounds times (A B A B ...), so a
# load change on the shared machine hits both; with --baseline DIR a second lmtune build (an older
# binary) takes a turn too, for an A/B of lmtune itself. Prints each turn's tokens/s and a table
# of the medians. --profile: lmtune's runs also print the CPU kernel profile (LMTUNE_CPU_PROFILE).
# --compile-peer: a third tool each round, the same peft model under torch.compile (inductor, f32 on the
# CPU; its first warm-up step compiles, ~50 s here).
# torch's OpenMP threads spin at each barrier and lose most when another process holds a core; on
# a shared machine OMP_WAIT_POLICY=PASSIVE in the environment (it reaches only the peer: lmtune
# uses no OpenMP) gives the peer its better figure.
# Usage: bench/bench_lora_cpu_peft.sh [--build DIR] [--baseline DIR] [--rounds N] [--warmup W]
#          [--steps S] [--batch N] [--seq N] [--threads N] [--profile] [--compile-peer]
# (defaults build/, none, 2, 5, 20, 4, 241, 2; W and S multiples of the 5-step report).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build" baseline=""
rounds=2 warmup=5 steps=20 batch=4 seq=241 threads=2 report=5 profile=0 compile_peer=0
while (($#)); do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    --baseline) baseline="$(cd "$2" && pwd)"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --seq) seq="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --profile) profile=1; shift ;;
    --compile-peer) compile_peer=1; shift ;;
    *) echo "bench_lora_cpu_peft: unknown argument $1" >&2; exit 2 ;;
  esac
done
if ((warmup % report || steps % report || warmup < report || steps < report)); then
  echo "bench_lora_cpu_peft: --warmup and --steps must be positive multiples of the $report-step report" >&2
  exit 2
fi
py="${LMTUNE_PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py="$(command -v python3)"; fi
fi
for b in "$build" ${baseline:+"$baseline"}; do
  [[ -x "$b/bin/lmtune" ]] || { echo "bench_lora_cpu_peft: $b/bin/lmtune not built" >&2; exit 1; }
done
export OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
peer() { PYTHONUNBUFFERED=1 "$py" "$root/bench/bench_lora_peer.py" "$@"; }
start=$SECONDS
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(grep -c ^processor /proc/cpuinfo) cores; threads $threads"
peer model "$tmp/model" --shape qwen2-26m || { echo "bench_lora_cpu_peft: cannot write the model"; exit 1; }
peer data "$tmp/data" --model "$tmp/model" --seq "$seq" --n-valid "$batch" || { echo "bench_lora_cpu_peft: cannot write the data"; exit 1; }
cat >"$tmp/lora.yaml" <<YAML
lora_parameters:
  rank: 8
  scale: 20.0
  dropout: 0.0
  keys: [self_attn.q_proj, self_attn.k_proj, self_attn.v_proj, self_attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
YAML
status=0
ours() {  # ours NAME BUILD ROUND
  local env=()
  ((profile)) && env=(LMTUNE_CPU_PROFILE="${LMTUNE_CPU_PROFILE:-1}")
  echo "== $1 (round $3) [$((SECONDS - start)) s], load $(cut -d' ' -f1-3 /proc/loadavg)"
  env "${env[@]}" "$2/bin/lmtune" lora --model "$tmp/model" --train --data "$tmp/data" --device cpu -c "$tmp/lora.yaml" \
    --fine-tune-type lora --optimizer adam --num-layers -1 --batch-size "$batch" --iters $((warmup + steps)) \
    --steps-per-report "$report" --steps-per-eval 100000 --val-batches 1 --learning-rate 1e-5 \
    --max-seq-length "$seq" --save-every 100000 --seed 0 --adapter-path "$tmp/adapters" 2>&1 |
    grep -v '^\[WARNING\] Some sequences are longer' >"$tmp/$1-$3.txt"
  ((PIPESTATUS[0] == 0)) || { echo "$1 failed"; status=1; }
  grep -E '^Iter|LMTUNE_CPU_PROFILE|^kernel|^[a-z_(].* +[0-9]+ +[0-9.]+ +[0-9.]+%' "$tmp/$1-$3.txt"
}
peer_turn() {  # peer_turn NAME JSON [--compile]
  echo "== $1 (round $r) [$((SECONDS - start)) s], load $(cut -d' ' -f1-3 /proc/loadavg)"
  peer train --cpu --model "$tmp/model" --data "$tmp/data" --seq "$seq" --batch "$batch" --threads "$threads" \
    --warmup "$warmup" --steps "$steps" --json "$tmp/$2-$r.json" "${@:3}" 2>&1 | grep -v -i -E 'warn|Loading weights'
  [[ -s "$tmp/$2-$r.json" ]] || { echo "$1 failed"; status=1; }
}
for ((r = 1; r <= rounds; r++)); do
  ours lmtune "$build" "$r"
  [[ -n "$baseline" ]] && ours baseline "$baseline" "$r"
  peer_turn "transformers + peft" peer
  if ((compile_peer)); then peer_turn "transformers + peft, torch.compile" compiled --compile; fi
done
echo "== done [$((SECONDS - start)) s], load $(cut -d' ' -f1-3 /proc/loadavg)"
"$py" - "$tmp" "$rounds" "$warmup" "$steps" "$batch" "$seq" "$threads" <<'PY' || status=1
import json, os, re, statistics, sys
tmp, rounds, warmup, steps, batch, seq, threads = sys.argv[1], *map(int, sys.argv[2:])
pat = re.compile(r"Iter (\d+): Train loss ([\d.naninf]+), Learning Rate \S+, It/sec [\d.]+, Tokens/sec ([\d.]+), "
                 r"Trained Tokens (\d+), Peak mem ([\d.]+) GB")
def ours(name, r):
    p = f"{tmp}/{name}-{r}.txt"
    if not os.path.exists(p):
        return None
    reps = [(int(m[1]), float(m[2]), float(m[3])) for m in pat.finditer(open(p).read())]
    timed = [x for x in reps if x[0] > warmup]
    if not timed or timed[-1][0] != warmup + steps:
        return None
    return {"tps": len(timed) / sum(1 / x[2] for x in timed), "loss": (reps[0][1], reps[-1][1])}
def peer(r, name="peer"):
    p = f"{tmp}/{name}-{r}.json"
    if not (os.path.exists(p) and os.path.getsize(p)):
        return None
    j = json.load(open(p))
    return {"tps": j["tokens_per_sec"], "loss": (j["first_loss"], j["last_loss"]), "v": j}
tools = [("lmtune", lambda r: ours("lmtune", r)), ("baseline", lambda r: ours("baseline", r)), ("peft", peer),
         ("peft + torch.compile", lambda r: peer(r, "compiled"))]
res = {n: [f(r) for r in range(1, rounds + 1)] for n, f in tools}
res = {n: v for n, v in res.items() if any(x is not None for x in v)}
v = next((x["v"] for x in res.get("peft", []) if x), None)
print(f"\nQwen2-shaped 26.2 M f32, LoRA rank 8 on all 7 linear layers, batch {batch} x {seq - 1} tokens, "
      f"{threads} threads, {steps} timed steps after {warmup}; " +
      (f"peer: torch {v['torch']}, transformers {v['transformers']}, peft {v['peft']}" if v else "peer failed"))
print("\n| tool | tok/s per round | median tok/s | / peft (median) | train loss first -> last (round 1) |")
print("| --- | --- | --- | --- | --- |")
med = {n: statistics.median([x["tps"] for x in v if x]) for n, v in res.items() if any(v)}
for n, v in res.items():
    per = " / ".join(f"{x['tps']:.0f}" if x else "FAILED" for x in v)
    ratio = f"{med[n] / med['peft']:.2f}" if "peft" in med else "-"
    first = next((x for x in v if x), None)
    loss = f"{first['loss'][0]:.3f} -> {first['loss'][1]:.3f}" if first else "-"
    print(f"| {n} | {per} | {med[n]:.0f} | {ratio} | {loss} |")
peers = [n for n in med if n.startswith("peft")]
if "lmtune" in med and len(peers) > 1:
    best = max(peers, key=lambda n: med[n])
    print(f"\nlmtune / the strongest peer ({best}), by medians: {med['lmtune'] / med[best]:.2f}")
if any(x is None for v in res.values() for x in v):
    sys.exit(1)
PY
exit $status
