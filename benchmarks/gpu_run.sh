#!/usr/bin/env bash
# Run a command against a CUDA build of llama-cpp-python + rast-gguf on a GPU machine that cannot
# download anything (a lent machine that receives a copy of this working tree).
#
#   bash benchmarks/gpu_run.sh COMMAND [ARGS...]        e.g.
#   bash benchmarks/gpu_run.sh rast bench --large qwen2.5-7b --small qwen2.5-1.5b --json "$OUT/bench.json"
#   bash benchmarks/gpu_run.sh env RAST_TEST_NGL=99 python3 -m pytest -q tests/test_oracle.py
#   bash benchmarks/gpu_run.sh python3 benchmarks/bench_batch.py -ngl 99 --json "$OUT/batch.json"
#
# It installs into $SITE (put first on PYTHONPATH, its bin/ first on PATH), then runs the command
# from the repository root:
#   1. the pure-Python dependencies from the wheels in $WHEELS (pip download them beforehand:
#      `pip download -d .dev/whl numpy gguf huggingface-hub typer tokenizers safetensors tqdm sympy
#      scikit-build-core nanobind ...`: rast-gguf is built from them without network);
#   2. llama-cpp-python with CUDA: unpacked from an earlier build ($BUILD: the parts
#      llcuda.tar.zst.aa, .ab, ... this script packed into $OUT, carried back), or, without one,
#      compiled from the source tarball $LLAMA_SRC (`pip download --no-binary :all: --no-deps
#      llama-cpp-python==0.3.36`; about 4.5 minutes on 16 cores) and packed into $OUT for next time;
#      a build already in $SITE (a machine still warm from an earlier call) is reused as it is;
#   3. rast-gguf itself from this tree (compiles the C++ sampler against that libllama).
#
# Settings (environment): SITE (default ${TMPDIR:-/tmp}/rast-site), OUT (default ./gpu-out),
# WHEELS (.dev/whl), LLAMA_SRC (.dev/llama_cpp_python-0.3.36.tar.gz), BUILD (.dev/llcuda.tar.zst.*),
# CUDA_ARCH (90: H100; 89: RTX 40xx; 86: RTX 30xx), JOBS (build parallelism, default: all cores).
set -euo pipefail
[ $# -ge 1 ] || { sed -n 2,25p "$0"; exit 2; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
SITE=${SITE:-${TMPDIR:-/tmp}/rast-site}
OUT=${OUT:-$REPO/gpu-out}
WHEELS=${WHEELS:-$REPO/.dev/whl}
LLAMA_SRC=${LLAMA_SRC:-$REPO/.dev/llama_cpp_python-0.3.36.tar.gz}
BUILD=${BUILD:-$REPO/.dev/llcuda.tar.zst.}
CUDA_ARCH=${CUDA_ARCH:-90}
JOBS=${JOBS:-$(nproc)}
export OUT PYTHONUNBUFFERED=1
mkdir -p "$SITE" "$OUT"
PIP=(python3 -m pip install -q --disable-pip-version-check --no-compile --target "$SITE")
t0=$(date +%s)

if [ -d "$WHEELS" ]; then
  "${PIP[@]}" --no-index --find-links "$WHEELS" --no-deps "$WHEELS"/*.whl
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"

if [ -f "$SITE/llama_cpp/lib/libggml-cuda.so" ]; then
  echo "gpu_run: reusing the CUDA llama-cpp-python in $SITE"
elif ls "$BUILD"* >/dev/null 2>&1; then
  case "$BUILD" in *zst*) unpack="zstd -dc";; *) unpack="xz -dc";; esac
  cat "$BUILD"* | $unpack | tar x -C "$SITE"
  echo "gpu_run: unpacked the CUDA llama-cpp-python build $BUILD*"
else
  [ -f "$LLAMA_SRC" ] || { echo "gpu_run: no build ($BUILD*) and no source tarball ($LLAMA_SRC)" >&2; exit 1; }
  CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH -DLLAVA_BUILD=off" CMAKE_BUILD_PARALLEL_LEVEL=$JOBS \
    "${PIP[@]}" --no-build-isolation --no-deps "$LLAMA_SRC" > "$OUT/build_llama.log" 2>&1 \
    || { tail -40 "$OUT/build_llama.log"; exit 1; }
  echo "gpu_run: compiled llama-cpp-python with CUDA in $(( $(date +%s) - t0 )) s"
  # pack it (15 MB parts fit what one call brings back); carry the parts as $BUILD* next time
  # (some GPU images have no zstd: then xz, and carry the parts as BUILD=.dev/llcuda.tar.xz.)
  if command -v zstd >/dev/null; then pack=(zstd -T0 -19 -q); ext=zst; else pack=(xz -T0 -6); ext=xz; fi
  # pip copies each library three times (libX.so, .so.0, .so.0.N); keep one, link the others
  (cd "$SITE/llama_cpp/lib" && for f in *.so.*.*; do b=${f%%.so.*}.so
     for d in "$b" "${f%.*.*}"; do [ -f "$d" ] && [ ! -L "$d" ] && cmp -s "$f" "$d" && ln -sf "$f" "$d"; done; done) || true
  (cd "$SITE" && tar c llama_cpp llama_cpp_python-*.dist-info include 2>/dev/null | "${pack[@]}" \
    | split -b 15M - "$OUT/llcuda.tar.$ext.")
fi

"${PIP[@]}" --no-build-isolation --no-deps --upgrade "$REPO" > "$OUT/build_rast.log" 2>&1 \
  || { tail -40 "$OUT/build_rast.log"; exit 1; }
echo "gpu_run: ready in $(( $(date +%s) - t0 )) s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
cd "$REPO"
exec "$@"
