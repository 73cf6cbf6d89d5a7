#!/usr/bin/env bash
# lmtune server beside mlx_lm.server (MLX's CPU backend) on the CPU, the same model (models/default, a
# Hugging Face llama folder both load), in one run: bench_server_client.py's streamed /v1/completions at
# 1 and 8 concurrent streams (128-token prompts of "the", 128 output tokens a stream, EOS banned through
# logit_bias, greedy), aggregate output tok/s and time to first token p50 / p99. One server at a time
# (they would share the cores), each with its prompt cache off (every stream sends the same prompt) and
# its default batching (--decode-concurrency 32 both). Usage: bench/bench_server_cpu.sh [--build DIR]
# [--streams LIST] [--prompt-tokens N] [--max-tokens N] [--table PATH]
# mlx_lm.server comes from the Python of LMTUNE_PYTHON (the project's .venv: mlx[cpu], mlx-lm).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build" streams="1,8" prompt_tokens=128 max_tokens=128 table=""
while (($#)); do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    --streams) streams="$2"; shift 2 ;;
    --prompt-tokens) prompt_tokens="$2"; shift 2 ;;
    --max-tokens) max_tokens="$2"; shift 2 ;;
    --table) table="$2"; shift 2 ;;
    *) echo "bench_server_cpu: unknown argument $1" >&2; exit 2 ;;
  esac
done
py="${LMTUNE_PYTHON:-$root/.venv/bin/python}"
model="$root/models/default"
tmp="$(mktemp -d)"
server_pid=""
stop_server() { [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null; server_pid=""; }
trap 'stop_server; rm -rf "$tmp"' EXIT
client=(--streams "$streams" --prompt-tokens "$prompt_tokens" --max-tokens "$max_tokens" --word the --eos-id 0)
status=0

wait_health() {  # port, log
  for _ in $(seq 600); do
    "$py" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$1/v1/models', timeout=2)" 2>/dev/null && return 0
    kill -0 "$server_pid" 2>/dev/null || { echo "the server exited:"; cat "$2"; return 1; }
    sleep 0.5
  done
  return 1
}

run_one() {  # name, command...
  local name="$1" port=$((20000 + RANDOM % 20000))
  shift
  echo "== $name on port $port (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  "$@" --port "$port" >"$tmp/$name.log" 2>&1 &
  server_pid=$!
  if wait_health "$port" "$tmp/$name.log"; then
    "$py" "$root/bench/bench_server_client.py" --port "$port" "${client[@]}" --json "$tmp/$name.json" || status=1
  else
    status=1
  fi
  stop_server
}

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; mlx $("$py" -c 'import mlx.core as m; print(m.__version__)' 2>/dev/null)," \
  "mlx-lm $("$py" -c 'import mlx_lm; print(mlx_lm.__version__)' 2>/dev/null)"
run_one lmtune "$build/bin/lmtune" server --model "$model" --device cpu --prompt-cache-size 0 --max-tokens "$max_tokens" \
  --log-level WARNING
run_one mlx_lm "$py" -m mlx_lm.server --model "$model" --prompt-cache-size 0 --max-tokens "$max_tokens" --log-level WARNING

"$py" - "$tmp" "${table:-/dev/null}" "$prompt_tokens" "$max_tokens" <<'PY'
import json, os, sys
tmp, table, p, n = sys.argv[1:]
lines = [f"streamed /v1/completions on the CPU, models/default, {p}-token prompts, {n} output tokens a stream", "",
         "| server | streams | output tok/s | TTFT p50 | TTFT p99 | failed |", "| --- | --- | --- | --- | --- | --- |"]
for name, label in [("lmtune", "lmtune server"), ("mlx_lm", "mlx_lm.server (MLX CPU)")]:
    path = os.path.join(tmp, name + ".json")
    for r in json.load(open(path)) if os.path.exists(path) else []:
        lines.append(f"| {label} | {r['streams']} | {r['tok_s']:.1f} | {r['ttft_p50_s'] * 1e3:.0f} ms | "
                     f"{r['ttft_p99_s'] * 1e3:.0f} ms | {r['n_errors']} |")
print("\n".join(lines))
if table != "/dev/null":
    open(table, "w").write("\n".join(lines) + "\n")
PY
exit $status
