#!/usr/bin/env bash
# Re-makes the hashes of tests/unit/test_ggml_quants.cpp with llama.cpp's own quantizers and checks
# that the test holds them: builds tests/ref/ggml_quant_golden.c against the libggml-base of
# scripts/build-llamacpp's build (no FMA, as ggml-base is built) and looks up each printed
# "TYPE BYTES HASH" in the test. Usage: ggml_quant_golden.sh [WORK_DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
work="${1:-${TMPDIR:-/tmp}/lmtune-ggml-golden}"
bin="$(bash "$root/scripts/build-llamacpp" | tail -1)"
dest="$(cd "$bin/../.." && pwd)"
mkdir -p "$work"
cc -O2 -ffp-contract=off -c -I"$dest/src/ggml/include" "$root/tests/ref/ggml_quant_golden.c" -o "$work/golden.o"
c++ "$work/golden.o" "$dest/build/ggml/src/libggml-base.a" -lm -lpthread -o "$work/golden"
"$work/golden" | tee "$work/golden.txt"
fail=0
while read -r name bytes hash; do
  if ! grep -q "{\"$name\", g::encode_[a-z0-9_]*, g::decode_[a-z0-9_]*, $bytes, $hash}" \
    "$root/tests/unit/test_ggml_quants.cpp"; then
    echo "ggml_quant_golden: test_ggml_quants.cpp lacks $name $bytes $hash (ggml's quantizer)" >&2
    fail=1
  fi
done <"$work/golden.txt"
[[ $fail == 0 ]] && echo "ggml_quant_golden: all $(wc -l <"$work/golden.txt") hashes match"
exit $fail
