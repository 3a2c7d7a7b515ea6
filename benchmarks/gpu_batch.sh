#!/usr/bin/env bash
# On the lent GPU machine: CUDA llama-cpp-python + rast-gguf (benchmarks/gpu_setup.sh), then
# bench_batch.py with every layer on the GPU. Extra arguments go to bench_batch.py; results in
# $OUT/bench_batch_gpu.json.
set -uo pipefail
source benchmarks/gpu_setup.sh
cd /tmp && python3 "$REPO/benchmarks/bench_batch.py" -ngl 99 --cache /tmp/bench --json "$OUT/bench_batch_gpu.json" "$@"
