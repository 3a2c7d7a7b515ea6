#!/usr/bin/env bash
# On the lent GPU machine (nothing can be downloaded there): build llama-cpp-python with CUDA from
# the pruned source in .dev/, build rast-gguf against it, probe the numpy import-order crash, and
# run the oracle tests with every layer offloaded. Outputs go to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/site /tmp/src
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .dev/*.whl || exit 1
export PYTHONPATH=/tmp/site
tar xzf .dev/llsrc.tar.gz -C /tmp/src
t0=$(date +%s)
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=off" CMAKE_BUILD_PARALLEL_LEVEL=16 \
  python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/site /tmp/src/llama_cpp_python-0.3.36 \
  > "$OUT/build_llama.log" 2>&1 || { tail -40 "$OUT/build_llama.log"; exit 1; }
echo "llama-cpp-python CUDA build: $(( $(date +%s) - t0 )) s"
python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/site . > "$OUT/build_rast.log" 2>&1 \
  || { tail -40 "$OUT/build_rast.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import numpy; print('numpy', numpy.__version__, numpy.__file__)"
cd /tmp
python3 - <<'PY'
import dataclasses, llama_cpp
from rast_gguf.synth import SHAPES, write_synthetic_gguf
shape = dataclasses.replace(SHAPES["tiny-qwen2"], n_embd=512, n_layer=8, n_head=8, n_head_kv=2, n_ff=1024)
write_synthetic_gguf("/tmp/probe.gguf", shape, seed=1, ftype="f16")
PY
for order in numpy-first llama-first rast-numpy-first; do
  PROBE_LIBS="$OUT/libs-$order.txt" timeout 120 python3 "$OLDPWD/benchmarks/import_order_probe.py" $order /tmp/probe.gguf \
    > "$OUT/probe-$order.log" 2>&1
  echo "probe $order: exit $?"; tail -3 "$OUT/probe-$order.log"
done
diff "$OUT/libs-llama-first.txt" "$OUT/libs-numpy-first.txt" > "$OUT/libs-diff.txt"; head -30 "$OUT/libs-diff.txt"
if ! grep -q "loaded: True" "$OUT/probe-numpy-first.log"; then
  timeout 180 cuda-gdb -q -batch -ex run -ex bt -ex "info sharedlibrary" --args python3 \
    "$OLDPWD/benchmarks/import_order_probe.py" numpy-first /tmp/probe.gguf > "$OUT/gdb-numpy-first.log" 2>&1
  grep -A 25 "SIGSEGV\|signal" "$OUT/gdb-numpy-first.log" | head -60
fi
cd "$OLDPWD" && cd /tmp && RAST_TEST_NGL=99 timeout 300 python3 -m pytest -q -p no:cacheprovider \
  "$OLDPWD/tests/test_oracle.py" "$OLDPWD/tests/test_sampler_chain.py" 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
