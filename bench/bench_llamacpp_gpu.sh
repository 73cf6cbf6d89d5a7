#!/usr/bin/env bash
# llama.cpp's CUDA build as the quantized-decode peer (issue 10), from the llama.cpp source vendored
# in PyPI's llama-cpp-python sdist (scripts/gpu-peers trims it into .gpu/peers/llama.cpp-src.tar.xz).
#   bench/bench_llamacpp_gpu.sh build TARBALL DIR
#       unpacks TARBALL into DIR/src and builds llama-bench and llama-quantize with CUDA for sm_90
#       into DIR/build (without ggml's flash-attention kernels, GGML_CUDA_FA=OFF: they double the
#       build, ~6 min on the GPU machine's 16 cores, and tg128 attends over at most 128 tokens, a
#       fraction of a percent of a decode step); touches DIR/built when done.
#   bench/bench_llamacpp_gpu.sh prebuild TARBALL BIN_TARBALL   (here, on the CPU machine: ~25 min on 2 cores)
#       the same build for sm_90, made where no GPU (and no libcuda) is: the driver's symbols come from a stub
#       libcuda.so.1 that the real driver replaces at run time, cuBLAS's headers and libraries from .deps/cublas
#       (scripts/fetch-cublas); llama-bench, llama-quantize and their libraries, stripped, go to BIN_TARBALL (~29 MB
#       of xz), so that a device call spends no time on the build (scripts/gpu-check takes
#       .gpu/peers/llamacpp-sm90-bin.tar.xz when it is there).
#   bench/bench_llamacpp_gpu.sh unpack TARBALL BIN_TARBALL DIR
#       on the GPU machine: the source (for the converter) and the prebuilt binaries into DIR; touches DIR/built
#       when every library they need resolves (ldd), else exits 1 (gpu-check then builds instead).
#   bench/bench_llamacpp_gpu.sh run DIR MODEL OUT
#       waits for DIR/built, converts the Hugging Face folder MODEL with llama.cpp's own
#       convert_hf_to_gguf.py to F16, quantizes it with llama-quantize to Q4_0 and Q4_K_M, and runs
#       llama-bench (all layers on the GPU, -fa 0, pp512 and tg128, 3 repetitions) on
#       both (LLAMACPP_QUANTS="Q4_0" for one); the markdown table goes to OUT.
set -uo pipefail
cmd="${1:-}"
# The prebuilt binaries' run path names this machine's folders: on the GPU machine their own libraries come first,
# then the folders of the CUDA runtime and cuBLAS there (the toolkit beside nvcc, or the Python packages' copies).
bench_llamacpp_libpath() {
  local cuda path="$1/build/bin" lib f
  cuda="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")")"
  for lib in libcudart.so.13 libcublas.so.13; do
    f="$(find "$cuda" /usr/local /usr/lib /opt $(python3 -c 'import site; print(*site.getsitepackages())' 2>/dev/null) \
      -name "$lib" 2>/dev/null | head -n 1)"
    [[ -n "$f" ]] && path="$path:$(dirname "$f")"
  done
  echo "$path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}
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
  prebuild)
    tarball="$(realpath "$2")" bin="$(realpath -m "$3")" cublas="$(cd "$(dirname "$0")/.." && pwd)/.deps/cublas"
    [[ -f "$cublas/include/cublas_v2.h" ]] || { echo "bench_llamacpp_gpu: no cuBLAS in $cublas (scripts/fetch-cublas)"; exit 1; }
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/src" "$work/stub" "$work/pkg/build"
    tar xJf "$tarball" -C "$work/src" --strip-components=1 || exit 1
    # The driver calls ggml-cuda makes, as symbols only: the stub is never loaded at run time.
    for f in cuDeviceGet cuDeviceGetAttribute cuGetErrorString cuMemAddressFree cuMemAddressReserve cuMemCreate \
      cuMemGetAllocationGranularity cuMemMap cuMemRelease cuMemSetAccess cuMemUnmap; do
      echo "int $f(void) { return 0; }"
    done >"$work/stub/stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$work/stub/libcuda.so" "$work/stub/stub.c" || exit 1
    ln -s libcuda.so "$work/stub/libcuda.so.1"
    cmake -S "$work/src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_FA=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=OFF -DCMAKE_LIBRARY_PATH="$cublas/lib" \
      -DCMAKE_CUDA_FLAGS="-I$cublas/include" -DCMAKE_CXX_FLAGS="-I$cublas/include" \
      -DCUDA_cuda_driver_LIBRARY="$work/stub/libcuda.so" -DCMAKE_SKIP_RPATH=ON >"$work/configure.log" 2>&1 ||
      { tail -n 30 "$work/configure.log"; exit 1; }
    LD_LIBRARY_PATH="$work/stub:$cublas/lib" ninja -C "$work/build" -j "${JOBS:-$(nproc)}" llama-bench llama-quantize ||
      exit 1
    cp -a "$work/build/bin" "$work/pkg/build/" && strip --strip-unneeded "$work/pkg/build/bin"/*.so.* \
      "$work/pkg/build/bin"/llama-* || exit 1
    tar cJf "$bin.part" -C "$work/pkg" build && mv "$bin.part" "$bin"
    ls -la "$bin"
    ;;
  unpack)
    tarball="$2" bin="$3" dir="$4"
    mkdir -p "$dir/src"
    tar xJf "$tarball" -C "$dir/src" --strip-components=1 && tar xJf "$bin" -C "$dir" || exit 1
    bench_llamacpp_libpath "$dir" >"$dir/ld_library_path"  # found once here, read by run
    export LD_LIBRARY_PATH="$(cat "$dir/ld_library_path")"
    missing="$(ldd "$dir/build/bin/llama-bench" "$dir/build/bin/llama-quantize" | grep "not found" | sort -u)"
    [[ -z "$missing" ]] || { echo "bench_llamacpp_gpu: the prebuilt binaries lack: $missing"; exit 1; }
    touch "$dir/built"
    ;;
  run)
    dir="$2" model="$3" out="$4"
    for _ in $(seq 1 900); do
      [[ -e "$dir/built" ]] && break
      sleep 1
    done
    # Prebuilt binaries (unpack) carry no usable run path; a build made here has its own.
    [[ -f "$dir/ld_library_path" ]] && export LD_LIBRARY_PATH="$(cat "$dir/ld_library_path")"
    [[ -e "$dir/built" ]] || { echo "bench_llamacpp_gpu: llama.cpp did not build (see its log)"; exit 1; }
    py="${LMTUNE_PYTHON:-$(command -v python3)}"
    work="$(dirname "$out")/llamacpp-gguf"
    mkdir -p "$work"
    PYTHONPATH="$dir/src/gguf-py${PYTHONPATH:+:$PYTHONPATH}" "$py" "$dir/src/convert_hf_to_gguf.py" "$model" \
      --outtype f16 --outfile "$work/f16.gguf" >"$work/convert.log" 2>&1 || { tail -n 30 "$work/convert.log"; exit 1; }
    tail -n 3 "$work/convert.log"
    quants=(${LLAMACPP_QUANTS:-Q4_0 Q4_K_M})  # LLAMACPP_QUANTS="Q4_0": one quantization, a shorter call
    for q in "${quants[@]}"; do
      "$dir/build/bin/llama-quantize" "$work/f16.gguf" "$work/$q.gguf" "$q" >"$work/quantize.log" 2>&1 ||
        { tail -n 30 "$work/quantize.log"; exit 1; }
      grep -E "model size|quant size" "$work/quantize.log"
    done
    rm -f "$work/f16.gguf"
    models=()
    for q in "${quants[@]}"; do models+=(-m "$work/$q.gguf"); done
    "$dir/build/bin/llama-bench" "${models[@]}" -ngl 99 -fa 0 -p 512 -n 128 -r 3 \
      -o md | tee "$out"
    rc=${PIPESTATUS[0]}
    rm -rf "$work"
    exit "$rc"
    ;;
  *)
    echo "usage: bench_llamacpp_gpu.sh build TARBALL DIR | prebuild TARBALL BIN_TARBALL | unpack TARBALL BIN_TARBALL DIR" \
      "| run DIR MODEL OUT" >&2
    exit 2
    ;;
esac
