#!/usr/bin/env bash
# On the lent GPU machine: rast bench for 32B Q4_K_M + 1.5B Q8_0 pair. Writing the 32B model (a Q8_0
# intermediate, then llama.cpp's quantizer) takes most of one 10-minute call, so STAGE=models writes
# the files into /tmp/bm and STAGE=bench (the next call, on the still-warm machine) measures.
set -uo pipefail
source benchmarks/gpu_setup.sh
cd /tmp
df -h /tmp | tail -1
RAST=(python3 -c "from rast_gguf.cli.app import main; main()")
if [ "${STAGE:-models}" = models ]; then
  t0=$(date +%s)
  timeout 560 python3 - <<'PY'
import time
from pathlib import Path
from rast_gguf.bench import BenchSetup, synthetic_models
t0 = time.time()
print(synthetic_models(BenchSetup(large="qwen2.5-32b", small="qwen2.5-1.5b", workdir=Path("/tmp/bm"))))
print(f"written in {time.time() - t0:.0f} s")
PY
  ls -la /tmp/bm; df -h /tmp | tail -1
else
  "${RAST[@]}" bench --large qwen2.5-32b --small qwen2.5-1.5b -p 512 -n 128 -r 2 --no-transformers \
    --models-dir /tmp/bm --json "$OUT/bench-32b.json" 2>&1 | grep -v "^llama\|^load\|^print_info\|^\.\+$"
fi
