#!/usr/bin/env bash
# The bounded load run of issue 12: `lmtune server` on models/default (CPU by default) and
# bench/bench_server_load.py's 64 concurrent clients sending 2,000 short requests in all (chat and
# completions, whole and streamed, greedy and sampled, 4-16 output tokens), every answer checked.
# Prints the failures (must be 0), latency percentiles (total time and time to first token), the
# throughput, the server's resident memory before and after, and /metrics' request count.
# Usage: bench/bench_server_load.sh [--build DIR] [--clients N] [--requests N] [--device cpu|cuda]
#        [--model DIR] [--json PATH]
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build" clients=64 requests=2000 device=cpu model="$root/models/default" json=""
while (($#)); do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    --clients) clients="$2"; shift 2 ;;
    --requests) requests="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --json) json="$2"; shift 2 ;;
    *) echo "bench_server_load: unknown argument $1" >&2; exit 2 ;;
  esac
done
py="${LMTUNE_PYTHON:-$(command -v python3)}"
tmp="$(mktemp -d)"
server_pid=""
cleanup() { [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

"$build/bin/lmtune" server --model "$model" --device "$device" --port 0 --log-level WARNING 2>"$tmp/server.log" &
server_pid=$!
port=""
for _ in $(seq 600); do
  port="$(grep -oE 'http://127\.0\.0\.1:[0-9]+' "$tmp/server.log" | head -n 1 | sed 's/.*://')"
  [[ -n "$port" ]] && break
  kill -0 "$server_pid" 2>/dev/null || { echo "the server exited:"; cat "$tmp/server.log"; exit 1; }
  sleep 0.1
done
[[ -n "$port" ]] || { echo "the server did not start:"; cat "$tmp/server.log"; exit 1; }
rss() { awk '/VmRSS/ {printf "%.1f MB", $2 / 1024}' "/proc/$server_pid/status"; }
metric() {
  "$py" -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$port/metrics').read().decode())" |
    awk -v n="$1" 'index($0, n) == 1 && $0 !~ /^#/ {s += $NF} END {print s + 0}'
}
echo "lmtune server: $model on $device, port $port; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$py" -c "import urllib.request, json; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:$port/v1/completions',
  json.dumps({'prompt': 'hello', 'max_tokens': 4}).encode(), {'Content-Type': 'application/json'})).read()"
echo "server RSS after one request: $(rss)"
"$py" "$root/bench/bench_server_load.py" --port "$port" --clients "$clients" --requests "$requests" ${json:+--json "$json"}
status=$?
echo "server RSS after the run: $(rss); /metrics: $(metric lmtune_requests_total) requests answered" \
  "(the first one included), $(metric lmtune_requests_in_flight) in flight"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
kill -0 "$server_pid" 2>/dev/null || { echo "the server died"; exit 1; }
exit $status
