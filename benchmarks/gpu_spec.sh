#!/usr/bin/env bash
# On the lent GPU machine: `rast bench --speculative` (cycle timings at fixed accepted lengths on
# synthetic models of real shapes, beside the large model alone and plain RAST, all in one run).
# STAGE=7b (default): 7B Q4_K_M with the 1.5B and the 0.5B Q8_0 pair (writes the models into /tmp/bm).
# STAGE=32b: 32B Q4_K_M + 1.5B Q8_0 (writing the 32B model takes about 5 minutes). Results: $OUT/spec-*.json.
# DRAFT_LENGTHS=1,2,3,4 times fewer draft lengths (default 1,2,3,4,6,8).
set -uo pipefail
# set up the CUDA build through benchmarks/gpu_run.sh (its settings apply), then run the rest of this script
[ -n "${RAST_GPU_READY:-}" ] || RAST_GPU_READY=1 exec bash benchmarks/gpu_run.sh bash "$0" "$@"
REPO=$PWD
cd /tmp
RAST=(python3 -c "from rast_gguf.cli.app import main; main()")
FILTER='^llama\|^load\|^print_info\|^\.\+$'
KS=${DRAFT_LENGTHS:-1,2,3,4,6,8}   # draft lengths k to time
if [ "${STAGE:-7b}" = 7b ]; then
  "${RAST[@]}" bench --speculative --large qwen2.5-7b --large qwen2.5-7b --small qwen2.5-1.5b --small qwen2.5-0.5b \
    -p 512 -n 128 -r 2 --no-transformers --models-dir /tmp/bm --draft-lengths "$KS" --json "$OUT/spec-7b.json" 2>&1 | grep -v "$FILTER"
else
  "${RAST[@]}" bench --speculative --large qwen2.5-32b --small qwen2.5-1.5b \
    -p 512 -n 128 -r 2 --no-transformers --models-dir /tmp/bm --draft-lengths "$KS" --json "$OUT/spec-32b.json" 2>&1 | grep -v "$FILTER"
fi
