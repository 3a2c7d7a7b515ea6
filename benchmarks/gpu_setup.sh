#!/usr/bin/env bash
# Sourced by the benchmarks/gpu_*.sh scripts on the lent GPU machine (nothing can be downloaded
# there). Puts a CUDA llama-cpp-python and rast-gguf into /tmp/site (PYTHONPATH):
# - a build brought back earlier (.dev/llcuda.tar.{xz,zst}.*, with its headers in .dev/llhdr.tar.gz)
#   is unpacked; its parts may come over two calls (the working tree plus every part can exceed
#   what one call carries): parts from an earlier call on this still-warm machine wait in /tmp/keep;
#   with KEEP_ONLY=1 this call only parks the parts it carried there and exits;
# - otherwise llama-cpp-python is compiled from the pruned source .dev/llsrc.tar.gz (about 4.5 min)
#   and the build is packed into $OUT/llcuda.tar.*.* to bring back.
REPO=$PWD
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out} LOGS=${LOGS:-/tmp/logs}
mkdir -p "$OUT" "$LOGS" /tmp/site /tmp/src /tmp/keep
if [ -n "${KEEP_ONLY:-}" ]; then
  cp .dev/llcuda.tar.* /tmp/keep/ && ls -la /tmp/keep && exit 0
fi
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .dev/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
t0=$(date +%s)
parts=$(ls .dev/llcuda.tar.* /tmp/keep/llcuda.tar.* 2>/dev/null | awk -F/ '!seen[$NF]++')
if [ "$(echo "$parts" | grep -c llcuda)" -ge "${LLCUDA_PARTS:-3}" ]; then
  case "$(echo "$parts" | head -1)" in *.zst.*) un="zstd -dc";; *) un="xz -dc";; esac
  cat $(for p in $parts; do echo "$(basename "$p") $p"; done | sort | cut -d' ' -f2) | $un | tar x -C /tmp/site || exit 1
  # the packed build holds the package, not the headers pip put in /tmp/site/include
  tar xzf .dev/llhdr.tar.gz -C /tmp/src
  mkdir -p /tmp/site/include && cp /tmp/src/llama_cpp_python-*/vendor/llama.cpp/include/*.h \
    /tmp/src/llama_cpp_python-*/vendor/llama.cpp/ggml/include/*.h /tmp/site/include/
  echo "unpacked CUDA llama-cpp-python build"
else
  tar xzf .dev/llsrc.tar.gz -C /tmp/src
  CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=off" CMAKE_BUILD_PARALLEL_LEVEL=16 \
    python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/site /tmp/src/llama_cpp_python-0.3.36 \
    > "$LOGS/build_llama.log" 2>&1 || { tail -40 "$LOGS/build_llama.log"; exit 1; }
  echo "llama-cpp-python CUDA build: $(( $(date +%s) - t0 )) s"
  # pip copies libX.so, libX.so.0 and libX.so.0.N as three files: keep one, link the others.
  python3 - <<'PY'
import hashlib, pathlib
lib = pathlib.Path("/tmp/site/llama_cpp/lib")
seen = {}
for p in sorted(lib.iterdir(), key=lambda p: -len(p.name)):
    if p.is_symlink() or not p.is_file():
        continue
    digest = hashlib.sha1(p.read_bytes()).hexdigest()
    if digest in seen:
        p.unlink(); p.symlink_to(seen[digest])
    else:
        seen[digest] = p.name
PY
  if command -v zstd >/dev/null; then pack="zstd -T0 -19 -q"; ext=zst; else pack="xz -T0 -6"; ext=xz; fi
  (cd /tmp/site && tar c llama_cpp llama_cpp_python-*.dist-info | $pack | split -b 15M - "$OUT/llcuda.tar.$ext.")
fi
python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/site . > "$LOGS/build_rast.log" 2>&1 \
  || { tail -40 "$LOGS/build_rast.log"; exit 1; }
echo "builds done: $(( $(date +%s) - t0 )) s"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader
