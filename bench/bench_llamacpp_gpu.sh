#!/usr/bin/env bash
# llama.cpp's CUDA build as the quantized-decode peer (issue 10), from the llama.cpp source vendored
# in PyPI's llama-cpp-python sdist (scripts/gpu-peers trims it into .gpu/peers/llama.cpp-src.tar.xz).
#   bench/bench_llamacpp_gpu.sh build TARBALL DIR
#       unpacks TARBALL into DIR/src and builds llama-bench and llama-quantize with CUDA for sm_90
#       into DIR/build (without ggml's flash-attention kernels, GGML_CUDA_FA=OFF: they double the
#       build, ~6 min on the GPU machine's 16 cores, and tg128 attends over at most 128 tokens, a
#       fraction of a percent of a decode step); touches DIR/built when done.
#   bench/bench_llamacpp_gpu.sh run DIR MODEL OUT
#       waits for DIR/built, converts the Hugging Face folder MODEL with llama.cpp's own
#       convert_hf_to_gguf.py to F16, quantizes it with llama-quantize to Q4_0 and Q4_K_M, and runs
#       llama-bench (all layers on the GPU, -fa 0, pp512 and tg128, 3 repetitions) on
#       both; the markdown table goes to OUT.
set -uo pipefail
cmd="${1:-}"
case "$cmd" in
  build)
    tarball="$2" dir="$3"
    mkdir -p "$dir/src"
    tar xJf "$tarball" -C "$dir/src" --strip-components=1 || exit 1
    cmake -S "$dir/src" -B "$dir/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_FA=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >"$dir/configure.log" 2>&1 ||
      { tail -n 30 "$dir/configure.log"; exit 1; }
    ninja -C "$dir/build" -j "${JOBS:-$(nproc)}" llama-bench llama-quantize || exit 1
    touch "$dir/built"
    ;;
  run)
    dir="$2" model="$3" out="$4"
    for _ in $(seq 1 900); do
      [[ -e "$dir/built" ]] && break
      sleep 1
    done
    [[ -e "$dir/built" ]] || { echo "bench_llamacpp_gpu: llama.cpp did not build (see its log)"; exit 1; }
    py="${LMTUNE_PYTHON:-$(command -v python3)}"
    work="$(dirname "$out")/llamacpp-gguf"
    mkdir -p "$work"
    PYTHONPATH="$dir/src/gguf-py${PYTHONPATH:+:$PYTHONPATH}" "$py" "$dir/src/convert_hf_to_gguf.py" "$model" \
      --outtype f16 --outfile "$work/f16.gguf" >"$work/convert.log" 2>&1 || { tail -n 30 "$work/convert.log"; exit 1; }
    tail -n 3 "$work/convert.log"
    for q in Q4_0 Q4_K_M; do
      "$dir/build/bin/llama-quantize" "$work/f16.gguf" "$work/$q.gguf" "$q" >"$work/quantize.log" 2>&1 ||
        { tail -n 30 "$work/quantize.log"; exit 1; }
      grep -E "model size|quant size" "$work/quantize.log"
    done
    rm -f "$work/f16.gguf"
    "$dir/build/bin/llama-bench" -m "$work/Q4_0.gguf" -m "$work/Q4_K_M.gguf" -ngl 99 -fa 0 -p 512 -n 128 -r 3 \
      -o md | tee "$out"
    rc=${PIPESTATUS[0]}
    rm -rf "$work"
    exit "$rc"
    ;;
  *)
    echo "usage: bench_llamacpp_gpu.sh build TARBALL DIR | run DIR MODEL OUT" >&2
    exit 2
    ;;
esac
