#!/usr/bin/env bash
# lmtune server's continuous batching on the GPU beside its two peers, in one run and with one client:
# a Mistral-7B-shaped bf16 model with random weights (bench_lora_peer.py model, Llama 2's tokenizer so
# that every id decodes), then one server at a time on it:
#   lmtune        `lmtune server --device cuda --decode-concurrency 64 --prompt-cache-size 0`
#   lmtune-graph  the same with LMTUNE_CUDA_BATCH_GRAPH=1 (batched decoding steps replayed as CUDA graphs)
#   lmtune-gqa    the same with LMTUNE_CUDA_DECODE_GQA=1 (decoding's attention a block for the query heads
#                 that share a kv head: the B of an A/B against the default, a block a head)
#   lmtune-profile  lmtune again at 32 streams only, under LMTUNE_CUDA_PROFILE=1: its kernel time by name
#                 over that run (every kernel timed with CUDA events, so its tok/s row is not a figure to
#                 quote) goes to the log and to TABLE's -profile.txt beside it
#   transformers  `transformers serve MODEL --continuous-batching --device cuda --dtype bfloat16` (the
#                 packages it needs from --serve-site, made by scripts/gpu-peers)
#   llamacpp      llama.cpp's `llama-server` built with CUDA from --llamacpp-src (scripts/gpu-peers), on
#                 the model converted to F16 GGUF by llama.cpp's convert_hf_to_gguf.py; all layers on the
#                 GPU, 64 slots of 1,024 positions, continuous batching, its prompt reuse off
# and bench_server_client.py's streamed /v1/completions at 1, 8, 32 and 64 concurrent streams (512-token
# prompts, 256 output tokens, EOS banned: logit_bias for lmtune, the same plus ignore_eos for llama-server,
# generation_config's eos_token_id -1 for transformers, which ignores logit_bias on /v1/completions):
# aggregate output tok/s and time to first token p50 / p99. A peer whose inputs are missing or that fails
# gets a "not run" row and makes the exit status 1.
#
# llama-server is built without its web UI (-DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF: an empty
# asset table, nothing fetched) and, unless LLAMACPP_FA=ON, without ggml's CUDA flash-attention kernels
# (they double a ~6 min build on 16 cores) and so runs with -fa off. The build goes to
# BUILD/llama-server (kept: a later call on the same warm machine reuses it); scripts/gpu-check --server
# starts it in the background at its beginning (`--only-build-llamacpp --llamacpp-src T --build B` touches
# B/llama-server/done when it ends; this script's --llamacpp-wait names that file).
#
# On the GPU machine through scripts/gpu-check, after scripts/gpu-deps and scripts/gpu-peers here; the
# device call carries only what --server needs (.gpu whole, with bitsandbytes, is over 64 MiB with the
# tree): command `bash scripts/gpu-check --server --skip-tests --skip-cpu-tests --skip-bench
# --skip-generate --skip-lora --targets lmtune`, carry [".gpu/debs", ".gpu/peers/llama.cpp-src.tar.xz",
# ".gpu/peers/llama2-tokenizer.tar.xz", ".gpu/peers/transformers-serve-py312.tar.xz"], timeout 600 s.
# Expected 6-8 min: lmtune's build ~1 min while llama-server builds in the background (~4 min), the
# model ~30 s, lmtune ~45 s, transformers serve ~1.5-2 min (loading, then its Python-paced steps), the
# GGUF conversion ~1 min, llama-server ~1 min. The table: $OUT/gpu-server.md and the summary.
#
# Usage: bench/bench_server_gpu.sh [--build DIR] [--table PATH] --tokenizer TARBALL [--streams LIST]
#   [--peers lmtune,transformers,llamacpp] [--llamacpp-src TARBALL | --llamacpp-bin DIR] [--llamacpp-wait FILE]
#   [--serve-site TARBALL] [--smoke]
# --smoke: models/default on the CPU with short prompts, a check of the scripts (transformers serve then
# needs its packages on the PYTHONPATH given; llama-server a CPU build from --llamacpp-bin; the GGUF comes
# from `lmtune gguf`, since llama.cpp's converter does not know models/default's tokenizer).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build" table="" tokenizer="" streams="1,8,32,64" smoke=0 peers="lmtune,transformers,llamacpp"
llamacpp_src="" llamacpp_bin="" llamacpp_wait="" serve_site="" only_build=0
while (($#)); do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    --table) table="$2"; shift 2 ;;
    --tokenizer) tokenizer="$2"; shift 2 ;;
    --streams) streams="$2"; shift 2 ;;
    --peers) peers="$2"; shift 2 ;;
    --llamacpp-src) llamacpp_src="$(realpath "$2")"; shift 2 ;;
    --llamacpp-bin) llamacpp_bin="$(cd "$2" && pwd)"; shift 2 ;;
    --llamacpp-wait) llamacpp_wait="$2"; shift 2 ;;
    --serve-site) serve_site="$(realpath "$2")"; shift 2 ;;
    --smoke) smoke=1; shift ;;
    --only-build-llamacpp) only_build=1; shift ;;
    *) echo "bench_server_gpu: unknown argument $1" >&2; exit 2 ;;
  esac
done
py="${LMTUNE_PYTHON:-$(command -v python3)}"
tmp="$(mktemp -d)"
server_pid=""
stop_server() {
  if [[ -n "$server_pid" ]]; then
    kill "$server_pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
  fi
  server_pid=""
}
trap 'stop_server; rm -rf "$tmp"' EXIT
start=$SECONDS
status=0
declare -A notrun=()
want() { [[ ",$peers," == *",$1,"* ]]; }

# llama-server: built here unless a build was given or is under way (gpu-check's background build).
llamacpp_build() {  # TARBALL DIR CUDA(ON|OFF)
  local src="$1" dir="$2" cuda="$3"
  [[ -x "$dir/build/bin/llama-server" ]] && return 0
  mkdir -p "$dir/src"
  tar xJf "$src" -C "$dir/src" --strip-components=1 || return 1
  local args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA="$cuda" -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF
    -DLLAMA_USE_PREBUILT_UI=OFF)
  if [[ "$cuda" == ON ]]; then
    args+=(-DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_FA="${LLAMACPP_FA:-OFF}")
  else  # portable AVX2 kernels, as scripts/build-llamacpp builds them (a native build hit SIGILL on a VM)
    args+=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF
      -DGGML_AMX_INT8=OFF -DGGML_OPENMP=OFF)
  fi
  cmake -S "$dir/src" -B "$dir/build" "${args[@]}" >"$dir/configure.log" 2>&1 || { tail -n 30 "$dir/configure.log"; return 1; }
  ninja -C "$dir/build" -j "${JOBS:-$(nproc)}" llama-server >"$dir/build.log" 2>&1 || { tail -n 30 "$dir/build.log"; return 1; }
}
if ((only_build)); then  # gpu-check's background build: BUILD/llama-server/done always, built on success
  [[ -n "$llamacpp_src" ]] || { echo "bench_server_gpu: --only-build-llamacpp needs --llamacpp-src" >&2; exit 2; }
  rm -f "$build/llama-server/done" "$build/llama-server/built"
  ((smoke)) && cuda=OFF || cuda=ON
  llamacpp_build "$llamacpp_src" "$build/llama-server" "$cuda" && touch "$build/llama-server/built"
  rc=$?
  touch "$build/llama-server/done"
  exit $rc
fi
if want llamacpp && [[ -z "$llamacpp_bin" && -n "$llamacpp_src" && -z "$llamacpp_wait" ]]; then
  echo "== llama-server: building from $(basename "$llamacpp_src") in the background [$((SECONDS - start)) s]"
  ((smoke)) && cuda=OFF || cuda=ON
  (llamacpp_build "$llamacpp_src" "$build/llama-server" "$cuda" >"$tmp/llamacpp-build.log" 2>&1
    touch "$tmp/llamacpp-done") &
  llamacpp_wait="$tmp/llamacpp-done"
  llamacpp_bin="$build/llama-server/build/bin"
elif want llamacpp && [[ -n "$llamacpp_wait" && -z "$llamacpp_bin" ]]; then
  llamacpp_bin="$build/llama-server/build/bin"
fi

if ((smoke)); then
  model="$root/models/default" device=cpu eos=0
  client_args=(--prompt-tokens 64 --max-tokens 16 --word the)
else
  [[ -n "$tokenizer" ]] || { echo "bench_server_gpu: --tokenizer is required (Llama 2's, from scripts/gpu-peers)" >&2; exit 2; }
  echo "== model [$((SECONDS - start)) s]"
  PYTHONUNBUFFERED=1 "$py" "$root/bench/bench_lora_peer.py" model "$tmp/model" || exit 1
  tar xJf "$tokenizer" -C "$tmp" && cp "$tmp"/llama2-tokenizer/* "$tmp/model/" || exit 1
  model="$tmp/model" device=cuda eos=2
  client_args=()
fi

# Ready: /health answers 200, or (transformers serve, which has no /health) any 404 from the app.
wait_ready() {  # port log
  for _ in $(seq 1200); do
    code="$("$py" -c "import urllib.request, urllib.error, sys
try: print(urllib.request.urlopen('http://127.0.0.1:$1/health', timeout=2).status)
except urllib.error.HTTPError as e: print(e.code)
except Exception: print(0)" 2>/dev/null)"
    [[ "$code" == 200 || "$code" == 404 ]] && return 0
    kill -0 "$server_pid" 2>/dev/null || { echo "the server exited:"; tail -n 40 "$2"; return 1; }
    sleep 0.5
  done
  echo "the server did not get ready:"; tail -n 40 "$2"; return 1
}

run_peer() {  # name extra-body-json model-field command...
  local name="$1" extra="$2" mfield="$3" port=$((20000 + RANDOM % 20000))
  shift 3
  echo "== $name on port $port [$((SECONDS - start)) s]"
  "$@" --port "$port" >"$tmp/$name.log" 2>&1 &
  server_pid=$!
  if wait_ready "$port" "$tmp/$name.log"; then
    echo "ready [$((SECONDS - start)) s]"
    local sm=()
    [[ "$name" == lmtune* ]] && sm=(--step-metrics)
    "$py" "$root/bench/bench_server_client.py" --port "$port" --streams "$streams" --eos-id "$eos" "${client_args[@]}" "${sm[@]}" \
      --model "$mfield" --extra-body "$extra" --json "$tmp/$name.json" ||
      { status=1; notrun[$name]="client errors"; echo "$name's log:"; tail -n 40 "$tmp/$name.log"; }
    [[ "$name" == lmtune* ]] && "$py" -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$port/metrics').read().decode())" |
      grep -E "^lmtune_batch_(steps|tokens|graph_steps|forward_seconds|host_seconds|decode_steps|decode_step_seconds)_total" || true
  else
    status=1
    notrun[$name]="the server did not start (log above)"
  fi
  stop_server
}

lmtune_server=("$build/bin/lmtune" server --model "$model" --device "$device" --decode-concurrency 64
  --prompt-cache-size 0 --max-queued-requests 64 --max-tokens 256 --log-level WARNING)
if want lmtune; then
  run_peer lmtune '{}' default_model env LMTUNE_CUDA_BATCH_GRAPH=0 "${lmtune_server[@]}"
fi
if want lmtune-gqa; then
  run_peer lmtune-gqa '{}' default_model env LMTUNE_CUDA_BATCH_GRAPH=0 LMTUNE_CUDA_DECODE_GQA=1 "${lmtune_server[@]}"
fi
if want lmtune-graph; then
  run_peer lmtune-graph '{}' default_model env LMTUNE_CUDA_BATCH_GRAPH=1 "${lmtune_server[@]}"
fi
if want lmtune-profile; then
  all_streams="$streams"
  streams=32
  run_peer lmtune-profile '{}' default_model env LMTUNE_CUDA_BATCH_GRAPH=0 LMTUNE_CUDA_PROFILE=1 "${lmtune_server[@]}"
  streams="$all_streams"
  echo "== lmtune-profile: CUDA kernel time by name over its 32-stream run (prefill and decode steps)"
  prof="${table:+${table%.md}-profile.txt}"
  grep '^\[profile\]' "$tmp/lmtune-profile.log" | head -n 60 | tee "${prof:-/dev/null}"
  [[ -s "${prof:-/dev/null}" ]] || grep -q '^\[profile\]' "$tmp/lmtune-profile.log" ||
    { status=1; echo "lmtune-profile: no profile in its log (did the server exit cleanly?)"; tail -n 20 "$tmp/lmtune-profile.log"; }
fi

if want transformers; then
  tpath=""
  if [[ -n "$serve_site" ]]; then
    mkdir -p "$tmp/serve-site" && tar xJf "$serve_site" -C "$tmp/serve-site" && tpath="$tmp/serve-site"
  fi
  mkdir -p "$tmp/hf-cache"
  if PYTHONPATH="$tpath${PYTHONPATH:+:$PYTHONPATH}" "$py" -c "import fastapi, uvicorn, openai, transformers
from transformers.utils.import_utils import is_serve_available
assert is_serve_available()
print('transformers', transformers.__version__, 'fastapi', fastapi.__version__, 'uvicorn', uvicorn.__version__, 'openai', openai.__version__)"; then
    # On the CPU its cache and batch buffers would be sized from 80% of the free RAM (the OOM killer took it): fixed.
    ((smoke)) && tdev=(--device cpu --cb-num-blocks 64 --cb-max-batch-tokens 512) || tdev=(--device cuda --dtype bfloat16)
    # eos_token_id -1 in the request's generation_config: its continuous batching then never stops at EOS.
    run_peer transformers '{"generation_config": "{\"do_sample\": false, \"eos_token_id\": -1}"}' "$model" \
      env PYTHONPATH="$tpath${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_CACHE="$tmp/hf-cache" "$py" -c \
      "import sys; sys.argv = ['transformers', 'serve'] + sys.argv[1:]; from transformers.cli.transformers import main; main()" \
      "$model" --continuous-batching "${tdev[@]}" --host 127.0.0.1 --log-level warning
  else
    status=1
    notrun[transformers]="its packages are missing (scripts/gpu-peers' transformers-serve-py312.tar.xz, --serve-site)"
  fi
fi

if want llamacpp; then
  if [[ -n "$llamacpp_wait" ]]; then
    echo "== llama-server: waiting for its build [$((SECONDS - start)) s]"
    for _ in $(seq 1800); do [[ -e "$llamacpp_wait" ]] && break; sleep 1; done
    [[ -x "$llamacpp_bin/llama-server" ]] || tail -n 30 "$tmp/llamacpp-build.log" 2>/dev/null
  fi
  if [[ -n "$llamacpp_bin" && -x "$llamacpp_bin/llama-server" ]]; then
    echo "== GGUF F16 of the model [$((SECONDS - start)) s]"
    if ((smoke)); then
      "$build/bin/lmtune" gguf --model "$model" --gguf-path "$tmp/model-f16.gguf" --gguf-type f16 >"$tmp/gguf.log" 2>&1
    else
      src="$(dirname "$llamacpp_bin")/../src"
      PYTHONPATH="$src/gguf-py${PYTHONPATH:+:$PYTHONPATH}" "$py" "$src/convert_hf_to_gguf.py" "$model" --outtype f16 \
        --outfile "$tmp/model-f16.gguf" >"$tmp/gguf.log" 2>&1
    fi
    if [[ -s "$tmp/model-f16.gguf" ]]; then
      ((smoke)) && lc=(-c 1024 -np 8) || lc=(-ngl 99 -c 65536 -np 64)
      [[ "${LLAMACPP_FA:-OFF}" == ON ]] && lc+=(-fa on) || lc+=(-fa off)
      # The server's prompt reuse off (every stream sends the same prompt; lmtune runs without its cache).
      run_peer llamacpp '{"ignore_eos": true, "cache_prompt": false}' default_model \
        "$llamacpp_bin/llama-server" -m "$tmp/model-f16.gguf" --host 127.0.0.1 "${lc[@]}" --cont-batching \
        --no-webui
    else
      tail -n 30 "$tmp/gguf.log"
      status=1
      notrun[llamacpp]="the GGUF conversion failed"
    fi
  else
    status=1
    notrun[llamacpp]="no llama-server build (--llamacpp-src from scripts/gpu-peers, or --llamacpp-bin)"
  fi
fi
echo "== done [$((SECONDS - start)) s]"

nr="$(for k in "${!notrun[@]}"; do printf '%s=%s\n' "$k" "${notrun[$k]}"; done)"
"$py" - "$tmp" "${table:-/dev/null}" "$device" "$peers" "$nr" <<'PY'
import json, os, sys
tmp, table, device, peers, nr = sys.argv[1:]
notrun = dict(l.split("=", 1) for l in nr.splitlines() if l)
labels = {"lmtune": "lmtune server", "lmtune-graph": "lmtune server (batch graph)",
          "lmtune-gqa": "lmtune server (LMTUNE_CUDA_DECODE_GQA=1)",
          "lmtune-profile": "lmtune server (LMTUNE_CUDA_PROFILE=1: slowed, not a figure)", "transformers": "transformers serve (CB)", "llamacpp": "llama.cpp llama-server"}
rs_all = {p: json.load(open(os.path.join(tmp, p + ".json"))) for p in peers.split(",")
          if os.path.exists(os.path.join(tmp, p + ".json"))}
first = next(iter(rs_all.values()), [{}])[0] if rs_all else {}
lines = [f"streamed /v1/completions on {device}, prompt {first.get('prompt_tokens', '?')} tokens (lmtune's count), "
         f"{first.get('max_tokens', '?')} output tokens a stream", "",
         "| server | streams | output tok/s | TTFT p50 | TTFT p99 | failed |", "| --- | --- | --- | --- | --- | --- |"]
for p in peers.split(","):
    for r in rs_all.get(p, []):
        lines.append(f"| {labels.get(p, p)} | {r['streams']} | {r['tok_s']:.1f} | {r['ttft_p50_s'] * 1e3:.0f} ms | "
                     f"{r['ttft_p99_s'] * 1e3:.0f} ms | {r['n_errors']} |")
    if p in notrun:
        lines.append(f"| {labels.get(p, p)} | not run: {notrun[p]} | | | | |")
print("\n".join(lines))
if table != "/dev/null":
    open(table, "w").write("\n".join(lines) + "\n")
PY
exit $status
