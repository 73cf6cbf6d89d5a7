#!/usr/bin/env bash
# lmtune server's continuous batching on the GPU: a Mistral-7B-shaped bf16 model with random weights
# (bench_lora_peer.py model, Llama 2's tokenizer so that every id decodes), `lmtune server --device cuda`,
# and bench_server_client.py's streamed /v1/completions at 1, 8, 32 and 64 concurrent streams (512-token
# prompts, 256 output tokens, EOS banned): aggregate output tok/s and time to first token p50 / p99 (issue
# 12's load), with the prompt cache off (every stream has the same prompt). Peers (transformers serve,
# llama.cpp's llama-server) are not part of this script yet. Usage: bench/bench_server_gpu.sh [--build DIR]
# [--table PATH] --tokenizer TARBALL [--streams LIST] [--smoke]   (--smoke: models/default on the CPU,
# short, a check of the scripts)
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build" table="" tokenizer="" streams="1,8,32,64" smoke=0
while (($#)); do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    --table) table="$2"; shift 2 ;;
    --tokenizer) tokenizer="$2"; shift 2 ;;
    --streams) streams="$2"; shift 2 ;;
    --smoke) smoke=1; shift ;;
    *) echo "bench_server_gpu: unknown argument $1" >&2; exit 2 ;;
  esac
done
py="${LMTUNE_PYTHON:-$(command -v python3)}"
tmp="$(mktemp -d)"
server_pid=""
cleanup() { [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
start=$SECONDS
if ((smoke)); then
  model="$root/models/default" device=cpu client_args=(--prompt-tokens 64 --max-tokens 16 --word the --eos-id 0)
else
  [[ -n "$tokenizer" ]] || { echo "bench_server_gpu: --tokenizer is required (Llama 2's, from scripts/gpu-peers)" >&2; exit 2; }
  echo "== model [$((SECONDS - start)) s]"
  PYTHONUNBUFFERED=1 "$py" "$root/bench/bench_lora_peer.py" model "$tmp/model" || exit 1
  tar xJf "$tokenizer" -C "$tmp" && cp "$tmp"/llama2-tokenizer/* "$tmp/model/" || exit 1
  model="$tmp/model" device=cuda client_args=()
fi
port=$((20000 + RANDOM % 20000))
echo "== lmtune server on port $port [$((SECONDS - start)) s]"
"$build/bin/lmtune" server --model "$model" --device "$device" --port "$port" --decode-concurrency 64 --prompt-cache-size 0 \
  --max-queued-requests 64 --max-tokens 256 --log-level WARNING >"$tmp/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 600); do
  "$py" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=2)" 2>/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || { echo "the server exited:"; cat "$tmp/server.log"; exit 1; }
  sleep 0.5
done
echo "== bench_server_client.py, streams $streams [$((SECONDS - start)) s]"
"$py" "$root/bench/bench_server_client.py" --port "$port" --streams "$streams" "${client_args[@]}" --json "$tmp/r.json"
status=$?
"$py" -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$port/metrics').read().decode())" | grep -E "^lmtune_batch_(steps|tokens|graph_steps)_total" || true
echo "== done [$((SECONDS - start)) s]"
"$py" - "$tmp/r.json" "${table:-/dev/null}" "$device" <<'PY'
import json, os, sys
rs = json.load(open(sys.argv[1])) if os.path.exists(sys.argv[1]) else []
lines = [f"lmtune server ({sys.argv[3]}), streamed /v1/completions, prompt {rs[0]['prompt_tokens'] if rs else '?'} tokens, "
         f"{rs[0]['max_tokens'] if rs else '?'} output tokens a stream", "", "| streams | output tok/s | TTFT p50 | TTFT p99 | failed |", "| --- | --- | --- | --- | --- |"]
for r in rs:
    lines.append(f"| {r['streams']} | {r['tok_s']:.1f} | {r['ttft_p50_s'] * 1e3:.0f} ms | {r['ttft_p99_s'] * 1e3:.0f} ms | {r['n_errors']} |")
print("\n".join(lines))
if sys.argv[2] != "/dev/null":
    open(sys.argv[2], "w").write("\n".join(lines) + "\n")
PY
exit $status
