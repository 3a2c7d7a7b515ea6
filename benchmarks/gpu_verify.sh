#!/usr/bin/env bash
# Second GPU pass: CUDA build + probes + GPU oracle tests (benchmarks/gpu_check.sh), then where a
# token's time goes (benchmarks/decode_split.py) on 7B Q4_K_M + 1.5B Q8_0.
set -uo pipefail
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
PROBE_ORDERS="numpy-first rast-numpy-first numpy-llama-rast" BINDING_ORDERS="" bash benchmarks/gpu_check.sh
export PYTHONPATH=/tmp/site
cd /tmp && python3 - <<'PY'
import rast_gguf
from rast_gguf.bench import BenchSetup, synthetic_models
from pathlib import Path
print(synthetic_models(BenchSetup(workdir=Path("/tmp/bm"))))
PY
python3 "$OLDPWD/benchmarks/decode_split.py" /tmp/bm/qwen2.5-7b-q4_k_m-s1.gguf /tmp/bm/qwen2.5-1.5b-q8_0-s3.gguf \
  /tmp/bm/qwen2.5-1.5b-q8_0-s2.gguf -ngl 99 -n 96
