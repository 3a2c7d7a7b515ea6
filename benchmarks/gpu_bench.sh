#!/usr/bin/env bash
# On the lent GPU machine: benchmarks/gpu_check.sh (CUDA build, import-order probes, GPU oracle
# tests), then `rast bench` for the issue's configurations. Results: $OUT/bench.json, $OUT/bench.png.
set -uo pipefail
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
bash benchmarks/gpu_check.sh
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,clocks.mem --format=csv,noheader
cd /tmp
RAST=(python3 -c "from rast_gguf.cli.app import main; main()")
"${RAST[@]}" doctor
"${RAST[@]}" bench --large qwen2.5-7b --large qwen2.5-7b --small qwen2.5-1.5b --small qwen2.5-0.5b \
  -p 512 -n 128 -r 3 --models-dir /tmp/bm --json "$OUT/bench.json" --plot "$OUT/bench.png"
"${RAST[@]}" bench --large qwen2.5-7b --small qwen2.5-1.5b -ngls 0 -t 8 --modes sequential,overlap \
  --no-transformers -p 512 -n 64 -r 2 --models-dir /tmp/bm --json "$OUT/bench-cpu-pair.json"
