#!/usr/bin/env bash
# On the lent GPU machine (issue 13, rast serve): the load test against the synthetic 7B Q4_K_M +
# 1.5B Q8_0 triple of rast bench, all layers on the GPU: 64 concurrent streaming clients for 60 s,
# two rounds (server RSS after each), -np 64. Needs starlette and uvicorn (and their wheels: anyio,
# h11, sniffio) among the wheels gpu_run.sh installs (WHEELS). Result -> $OUT/load_serve_7b.json
# Usage: bash benchmarks/gpu_serve.sh
set -uo pipefail
# set up the CUDA build through benchmarks/gpu_run.sh (its settings apply), then run the rest of this script
[ -n "${RAST_GPU_READY:-}" ] || RAST_GPU_READY=1 exec bash benchmarks/gpu_run.sh bash "$0" "$@"
REPO=$PWD
cd /tmp
python3 -c "from rast_gguf.bench import BenchSetup, synthetic_models
from pathlib import Path; synthetic_models(BenchSetup(small='qwen2.5-1.5b', workdir=Path('/tmp/bm')))"
python3 "$REPO/benchmarks/load_serve.py" --clients 64 --duration 60 --rounds 2 --max-tokens 128 \
  --json "$OUT/load_serve_7b.json" -- -m /tmp/bm/qwen2.5-7b-q4_k_m-s1.gguf \
  --base /tmp/bm/qwen2.5-1.5b-q8_0-s2.gguf --tuned /tmp/bm/qwen2.5-1.5b-q8_0-s3.gguf -ngl 99 -np 64 -c 1024
