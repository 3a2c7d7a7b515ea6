#!/usr/bin/env bash
# On the lent GPU machine: unpack the CUDA llama-cpp-python build brought back earlier
# (.dev/llcuda.tar.*, made by gpu_check.sh), build rast-gguf against it and run bench_batch.py with
# every layer on the GPU. Extra arguments go to bench_batch.py; results in $OUT/bench_batch_gpu.json.
set -uo pipefail
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
REPO=$PWD
mkdir -p "$OUT" /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .dev/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
case "$(ls .dev/llcuda.tar.* | head -1)" in *.zst.*) un="zstd -dc";; *) un="xz -dc";; esac
cat .dev/llcuda.tar.* | $un | tar x -C /tmp/site || exit 1
python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/site . > /tmp/build_rast.log 2>&1 \
  || { tail -40 /tmp/build_rast.log; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
cd /tmp && python3 "$REPO/benchmarks/bench_batch.py" -ngl 99 --cache /tmp/bench --json "$OUT/bench_batch_gpu.json" "$@"
