#!/usr/bin/env bash
# On the lent GPU machine (issue 10, the throughput engine): CUDA llama-cpp-python + rast-gguf via
# benchmarks/gpu_run.sh, then every ratio of the issue, each against the plain llama.cpp loop:
#   bench  - rast bench -ngl 99 --parallel 1,8,32 for 7B Q4_K_M + 1.5B Q8_0 and + 0.5B Q8_0:
#            batch-1 ms/token of plain / plain3 / alone / RAST (host overhead), tok/s at B=8, 32,
#            shared-prompt prefill, mixed-length occupancy   -> $OUT/bench_throughput.json
#   batch  - benchmarks/bench_batch.py, the workload (64 records x 4 samples, max_tokens
#            32..512) at -np 32 for both pairs, with plain/plain3 at B=32 -> $OUT/bench_batch_{1.5b,0.5b}.json
# Usage: bash benchmarks/gpu_throughput.sh [bench|batch|all]   (default all; each stage < 10 min)
set -uo pipefail
STAGE=${1:-all}
# set up the CUDA build through benchmarks/gpu_run.sh (its settings apply), then run the rest of this script
[ -n "${RAST_GPU_READY:-}" ] || RAST_GPU_READY=1 exec bash benchmarks/gpu_run.sh bash "$0" "$@"
REPO=$PWD
cd /tmp
RAST=(python3 -c "from rast_gguf.cli.app import main; main()")
if [ "$STAGE" = bench ] || [ "$STAGE" = all ]; then
  "${RAST[@]}" bench --large qwen2.5-7b --large qwen2.5-7b --small qwen2.5-1.5b --small qwen2.5-0.5b \
    -ngl 99 --parallel 1,8,32 -p 512 -n 256 -r 2 --no-transformers --models-dir /tmp/bm \
    --json "$OUT/bench_throughput.json"
fi
if [ "$STAGE" = batch ] || [ "$STAGE" = all ]; then
  for small in 1.5b 0.5b; do
    # the synthetic files rast bench uses (written here when the bench stage did not run on this machine)
    python3 -c "from rast_gguf.bench import BenchSetup, synthetic_models
from pathlib import Path; synthetic_models(BenchSetup(small='qwen2.5-$small', workdir=Path('/tmp/bm')))"
    python3 "$REPO/benchmarks/bench_batch.py" -ngl 99 --files /tmp/bm/qwen2.5-7b-q4_k_m-s1.gguf \
      "/tmp/bm/qwen2.5-$small-q8_0-s2.gguf" "/tmp/bm/qwen2.5-$small-q8_0-s3.gguf" \
      --records 64 --samples 4 --min-tokens 32 --max-tokens 512 \
      --parallel 32 --plain-tokens 256 --json "$OUT/bench_batch_$small.json"
  done
fi
