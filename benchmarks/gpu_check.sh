#!/usr/bin/env bash
# On the lent GPU machine (nothing can be downloaded there): build llama-cpp-python with CUDA from
# the pruned source in .dev/ (or unpack a build brought back earlier: .dev/llcuda.tar.zst.*), build
# rast-gguf against it, probe the numpy import-order crash, and run the oracle tests with every layer
# offloaded. Logs come back in $OUT/logs.tgz; a fresh build is packed into $OUT/llcuda.tar.zst.* for later calls.
set -uo pipefail
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out} LOGS=/tmp/logs
mkdir -p $LOGS
trap 'tar czf "$OUT/logs.tgz" -C /tmp logs' EXIT
REPO=$PWD
mkdir -p "$OUT" /tmp/site /tmp/src
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .dev/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
t0=$(date +%s)
# parts of a build brought back earlier: in .dev/, or left in /tmp/keep by an earlier call on this
# still-warm machine (the working tree may be too big to carry every part at once)
parts=$(ls .dev/llcuda.tar.* /tmp/keep/llcuda.tar.* 2>/dev/null | sort -t/ -k3 | awk -F/ '!seen[$NF]++')
if [ "$(echo "$parts" | grep -c llcuda)" -ge "${LLCUDA_PARTS:-3}" ]; then
  case "$(echo "$parts" | head -1)" in *.zst.*) un="zstd -dc";; *) un="xz -dc";; esac
  cat $(for p in $parts; do echo "$(basename "$p") $p"; done | sort | cut -d' ' -f2) | $un | tar x -C /tmp/site || exit 1
  # the packed build holds the package, not the headers pip put in /tmp/site/include: take them from the source
  tar xzf .dev/llsrc.tar.gz -C /tmp/src --wildcards '*/vendor/llama.cpp/include/*' '*/vendor/llama.cpp/ggml/include/*'
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
import hashlib, os, pathlib
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
  du -sh /tmp/site/llama_cpp; ls -la /tmp/site/llama_cpp/lib
  if command -v zstd >/dev/null; then pack="zstd -T0 -19 -q"; ext=zst; else pack="xz -T0 -6"; ext=xz; fi
  (cd /tmp/site && tar c llama_cpp llama_cpp_python-*.dist-info | $pack | split -b 15M - "$OUT/llcuda.tar.$ext.")
  ls -la "$OUT"
fi
python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/site . > "$LOGS/build_rast.log" 2>&1 \
  || { tail -40 "$LOGS/build_rast.log"; exit 1; }
echo "builds done: $(( $(date +%s) - t0 )) s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import numpy; print('numpy', numpy.__version__, numpy.__file__)"
ldd /tmp/site/llama_cpp/lib/libggml-cuda.so | head -30
cd /tmp
python3 - <<'PY'
import dataclasses, llama_cpp
from rast_gguf.synth import SHAPES, write_synthetic_gguf
shape = dataclasses.replace(SHAPES["tiny-qwen2"], n_embd=512, n_layer=8, n_head=8, n_head_kv=2, n_ff=1024)
write_synthetic_gguf("/tmp/probe.gguf", shape, seed=1, ftype="f16")
PY
for order in ${PROBE_ORDERS:-numpy-first llama-first rast-numpy-first numpy-llama-rast}; do
  PROBE_LIBS="$LOGS/libs-$order.txt" timeout 120 python3 "$REPO/benchmarks/import_order_probe.py" $order /tmp/probe.gguf \
    > "$LOGS/probe-$order.log" 2>&1
  echo "probe $order: exit $?"; tail -4 "$LOGS/probe-$order.log"
done
for order in ${BINDING_ORDERS-numpy-first llama-first rast-numpy-first}; do
  LD_DEBUG=bindings LD_DEBUG_OUTPUT=/tmp/bind-$order timeout 120 python3 "$REPO/benchmarks/import_order_probe.py" \
    $order /tmp/probe.gguf > /dev/null 2>&1
  echo "== C++ runtime bindings, $order:"; python3 "$REPO/benchmarks/bind_summary.py" /tmp/bind-$order.* | head -12
done
env | grep -i -E "flags|^cc=|^cxx=" ; g++ --version | head -1
python3 -c "import numpy, rast_gguf; from rast_gguf import _preload; import llama_cpp.llama_cpp as C; print('runtime', _preload.runtime_report(C._lib))"
diff "$LOGS/libs-llama-first.txt" "$LOGS/libs-numpy-first.txt" > "$LOGS/libs-diff.txt"; head -40 "$LOGS/libs-diff.txt"
if [ -n "${PROBE_GDB:-}" ] && ! grep -q "loaded: True" "$LOGS/probe-numpy-first.log"; then
  timeout 150 cuda-gdb -q -batch -ex run -ex bt -ex "info sharedlibrary" --args python3 \
    "$REPO/benchmarks/import_order_probe.py" numpy-first /tmp/probe.gguf > "$LOGS/gdb-numpy-first.log" 2>&1
  grep -B2 -A 30 "SIGSEGV" "$LOGS/gdb-numpy-first.log" | head -70
  grep -i "gomp\|openblas\|stdc\|cuda\|ggml\|llama" "$LOGS/gdb-numpy-first.log" | grep -v "^#" | head -40
fi
cd /tmp && RAST_TEST_NGL=99 timeout 240 python3 -m pytest -q -p no:cacheprovider \
  "$REPO/tests/test_oracle.py" "$REPO/tests/test_sampler_chain.py" "$REPO/tests/test_overlap.py" "$REPO/tests/test_import_order.py" 2>&1 | tee "$LOGS/gpu_tests.log" | tail -15
