#!/usr/bin/env bash
# Where a LoRA training step's GPU time goes: `lmtune lora --device cuda` under LMTUNE_CUDA_PROFILE=1
# (every kernel and cuBLASLt product timed with CUDA events, summed by name), on a model with random
# weights written by bench/hf_compiled_lora.py --save (a copy of ../shared/peers/hf_compiled_lora.py,
# unchanged), which also gives the torch.compile peer's tokens/s and peak on the very same weights
# when --peer is given. Prints lmtune's tokens/s and peak, the time a step by family (the base GEMMs,
# the LoRA GEMMs, attention forward and backward, cross-entropy, norms, rope, activations,
# elementwise, the optimizer, copies) and the 30 costliest kernels, and writes them to --table.
# The figures cover every step of the run, warm-up included (--iters 6 by default, even: the tokens/s is the last two steps'; the first step's
# share is small; cuBLASLt's plans are made once). Kernel time only: the gaps between kernels (host
# work, launches) are the difference between the step's wall time and the kernels' sum, printed too.
# Usage: bench/profile_lora_gpu.sh [--build DIR] [--shape mistral-7b|qwen2-0.5b|llama3-8b] [--batch N]
#          [--seq N] [--ckpt off|on] [--iters N] [--peer] [--dora] [--table PATH] [--keep DIR]
#          [-- extra lmtune lora flags]
# --keep DIR: the model folder is DIR, written there on the first run and reused by later ones of the
# same shape (without --peer the writing run trains one uncompiled step only).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build" shape=mistral-7b batch=1 seq=2048 ckpt=off iters=6 peer=0 table="" dora=0 keep=""
extra=()
while (($#)); do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    --shape) shape="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --seq) seq="$2"; shift 2 ;;
    --ckpt) ckpt="$2"; shift 2 ;;
    --iters) iters="$2"; shift 2 ;;
    --peer) peer=1; shift ;;
    --dora) dora=1; shift ;;
    --table) table="$2"; shift 2 ;;
    --keep) keep="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "profile_lora_gpu: unknown argument $1" >&2; exit 2 ;;
  esac
done
py="${LMTUNE_PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py="$(command -v python3)"; fi
fi
lmtune="$build/bin/lmtune"
# On the device machine the Debian libraries lmtune links (ICU, OpenBLAS) are not installed;
# scripts/gpu-check unpacks them into .gpu/root and removes it at exit: unpacked again here (from the
# carried .gpu/debs, into a temporary folder) when lmtune cannot find them.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if ldd "$lmtune" 2>/dev/null | grep -q "not found" && compgen -G "$root/.gpu/debs/*.deb" >/dev/null; then
  debs=()
  for deb in "$root"/.gpu/debs/*.deb; do
    [[ $deb == *-dev_* ]] || debs+=("$deb")  # headers and static libraries: not needed to run
  done
  PYTHON="$py" bash "$root/scripts/unpack-debs" "$tmp/root" "${debs[@]}" || exit 1
  libdir="$tmp/root/usr/lib/x86_64-linux-gnu"
  for so in libgfortran.so.5 libquadmath.so.0; do  # the image's own builds of these stay
    if ldconfig -p 2>/dev/null | grep -q "$so "; then rm -f "$libdir/$so" "$libdir/$so".*; fi
  done
  export LD_LIBRARY_PATH="$libdir/openblas-pthread:$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if ldd "$lmtune" 2>/dev/null | grep "not found"; then echo "profile_lora_gpu: $lmtune misses libraries" >&2; exit 1; fi
[[ -x "$lmtune" ]] || { echo "profile_lora_gpu: $lmtune not built" >&2; exit 1; }
case "$ckpt" in off) ckflag=() pk=() ;; on) ckflag=(--grad-checkpoint) pk=(--ckpt) ;;
  *) echo "profile_lora_gpu: --ckpt must be off or on" >&2; exit 2 ;; esac
start=$SECONDS
: >"$tmp/peer.txt"
model="${keep:-$tmp/model}"
if ((peer)) || [[ ! -f "$model/config.json" ]]; then
  echo "== model ($shape) [$((SECONDS - start)) s]"
  if ((peer)); then pargs=(--warmup 3 --steps 5); else pargs=(--warmup 0 --steps 1 --no-compile); fi
  "$py" "$root/bench/hf_compiled_lora.py" --shape "$shape" --seq "$seq" --batch "$batch" --save "$model" \
    "${pargs[@]}" "${pk[@]}" 2>&1 | grep -v -i warn | tee "$tmp/peer-out.txt"
  ((peer)) && cp "$tmp/peer-out.txt" "$tmp/peer.txt"
  cp "$root/models/default/tokenizer.json" "$root/models/default/tokenizer_config.json" "$model/"
fi
"$py" "$root/bench/bench_lora_peer.py" data "$tmp/data" --model "$model" --seq "$seq" --n-train $((4 * batch)) --n-valid $batch \
  >/dev/null || { echo "profile_lora_gpu: cannot write the data"; exit 1; }
cat >"$tmp/lora.yaml" <<YAML
lora_parameters:
  rank: 8
  scale: 20.0
  dropout: 0.0
  keys: [self_attn.q_proj, self_attn.k_proj, self_attn.v_proj, self_attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
YAML
ftt=lora
((dora)) && ftt=dora
echo "== lmtune lora ($ftt, checkpointing $ckpt, batch $batch, $iters steps) under LMTUNE_CUDA_PROFILE=1 [$((SECONDS - start)) s]"
LMTUNE_CUDA_PROFILE=1 "$lmtune" lora --model "$model" --train --data "$tmp/data" --device cuda -c "$tmp/lora.yaml" \
  --fine-tune-type "$ftt" --optimizer adam --num-layers -1 --batch-size "$batch" --iters "$iters" \
  --steps-per-report 2 --steps-per-eval 100000 --val-batches 1 --learning-rate 1e-5 --max-seq-length "$seq" \
  --save-every 100000 --seed 0 --adapter-path "$tmp/adapters" "${ckflag[@]}" "${extra[@]}" >"$tmp/lmtune.txt" 2>&1
rc=$?
grep -v '^\[profile\]' "$tmp/lmtune.txt" | grep -v 'Some sequences are longer' | tail -n 5
((rc == 0)) || { echo "profile_lora_gpu: lmtune lora failed (rc $rc)"; tail -n 20 "$tmp/lmtune.txt"; exit 1; }
echo "== done [$((SECONDS - start)) s]"
card="$(nvidia-smi -L 2>/dev/null | head -n 1 | sed 's/ (UUID.*//')"
"$py" - "$tmp" "$shape" "$batch" "$seq" "$ckpt" "$iters" "${card:-unknown GPU}" "$ftt" "${table:-/dev/null}" <<'PY'
import json, re, sys
tmp, shape, batch, seq, ckpt, iters, card, ftt, out = sys.argv[1:10]
batch, seq, iters = int(batch), int(seq), int(iters)
text = open(f"{tmp}/lmtune.txt").read()
m = re.findall(r"Tokens/sec ([\d.]+), Trained Tokens (\d+), Peak mem ([\d.]+) GB", text)
tps, peak = (float(m[-1][0]), float(m[-1][2])) if m else (float("nan"), float("nan"))
rows = []
for line in text.splitlines():
    r = re.match(r"\[profile\]\s+[\d.]+%\s+([\d.]+)\s+(\d+)\s+([\d.]+)\s+(.*)$", line)
    if r:
        rows.append((r[4], float(r[1]), int(r[2])))
total = sum(r[1] for r in rows)
def family(name):
    g = re.match(r"cublasLt gemm M(\d+) N(\d+) K(\d+)", name)
    if g:
        return "GEMM, LoRA (a side <= 64)" if min(int(g[1]), int(g[2]), int(g[3])) <= 64 else "GEMM, base"
    n = name.lower()
    for key, fam in (("flash_backward", "attention backward"), ("flash", "attention forward"), ("attention", "attention (other)"),
                     ("xent", "cross-entropy"), ("cross", "cross-entropy"), ("softmax", "cross-entropy"),
                     ("rms", "norms"), ("norm", "norms"), ("rope", "rope"), ("swiglu", "activations"), ("silu", "activations"),
                     ("adam", "optimizer"), ("optim", "optimizer"), ("sgd", "optimizer"), ("copy", "copies, casts"),
                     ("cast", "copies, casts"), ("convert", "copies, casts"), ("transpose", "copies, casts"),
                     ("reduce", "reductions"), ("sum", "reductions"), ("binary", "elementwise"), ("unary", "elementwise"),
                     ("fill", "elementwise"), ("dora", "DoRA"), ("lora", "LoRA (fused)")):
        if key in n:
            return fam
    return "other"
fams = {}
for name, ms, calls in rows:
    f = fams.setdefault(family(name), [0.0, 0])
    f[0] += ms; f[1] += calls
step_ms = 1000.0 * batch * (seq - 1) / tps if tps == tps and tps > 0 else float("nan")
peer = ""
for line in open(f"{tmp}/peer.txt"):
    if line.startswith("{"):
        p = json.loads(line)
        peer = f"torch.compile peer (bench/hf_compiled_lora.py, same weights): {p['tokens_per_s']:.0f} tok/s at {p['peak_gib']:.2f} GiB ({p['peer']})"
lines = [f"{card}; {shape}, {ftt} rank 8 on all 7 linear layers, batch {batch}, sequence {seq}, checkpointing {ckpt}, {iters} steps",
         f"lmtune: {tps:.0f} tok/s (last report), peak {peak:.2f} GB = {peak * 1e9 / 2**30:.2f} GiB; a step {step_ms:.1f} ms wall",
         f"kernel time a step (all {iters} steps' sum / {iters}): {total / iters:.1f} ms; gaps (wall - kernels): {step_ms - total / iters:.1f} ms"]
if peer:
    lines.append(peer)
lines += ["", "| family | ms a step | share of kernel time | launches a step |", "| --- | --- | --- | --- |"]
for f, (ms, calls) in sorted(fams.items(), key=lambda kv: -kv[1][0]):
    lines.append(f"| {f} | {ms / iters:.2f} | {100 * ms / total:.1f}% | {calls / iters:.0f} |")
lines += ["", "| kernel | ms a step | share | launches a step | mean us |", "| --- | --- | --- | --- | --- |"]
for name, ms, calls in sorted(rows, key=lambda r: -r[1])[:30]:
    lines.append(f"| {name} | {ms / iters:.2f} | {100 * ms / total:.1f}% | {calls / iters:.1f} | {1000 * ms / calls:.1f} |")
s = "\n".join(lines) + "\n"
print(s, end="")
if out != "/dev/null":
    open(out, "w").write(s)
PY
