#!/usr/bin/env bash
# On the lent GPU machine: CUDA llama-cpp-python + rast-gguf (benchmarks/gpu_setup.sh), the numpy
# import-order probes, and the oracle tests with every layer offloaded. Logs come back in $OUT/logs.tgz.
set -uo pipefail
trap 'tar czf "${OUT:-/tmp/out}/logs.tgz" -C /tmp logs' EXIT
source benchmarks/gpu_setup.sh
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
