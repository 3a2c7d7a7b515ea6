#!/usr/bin/env bash
# On the lent GPU machine: CUDA build (benchmarks/gpu_setup.sh), the stream-priority and GPU oracle
# tests, then benchmarks/priority_probe.py on 7B Q4_K_M + 1.5B / 0.5B Q8_0 pairs and
# benchmarks/gpu_overlap_probe.py on the 1.5B pair. Results in $OUT/prio-*.json.
set -uo pipefail
source benchmarks/gpu_setup.sh
cd /tmp
t0=$(date +%s)
python3 - <<'PY'
from pathlib import Path
from rast_gguf.bench import BenchSetup, synthetic_models
for small in ("qwen2.5-1.5b", "qwen2.5-0.5b"):
    print(synthetic_models(BenchSetup(small=small, workdir=Path("/tmp/bm"))))
PY
echo "models: $(( $(date +%s) - t0 )) s"
RAST_TEST_NGL=99 timeout 200 python3 -m pytest -q -p no:cacheprovider "$REPO/tests/test_stream_priority.py" \
  "$REPO/tests/test_oracle.py" 2>&1 | tail -6
M=/tmp/bm; L=$M/qwen2.5-7b-q4_k_m-s1.gguf
for s in 1.5b 0.5b; do
  python3 "$REPO/benchmarks/priority_probe.py" $L $M/qwen2.5-$s-q8_0-s3.gguf $M/qwen2.5-$s-q8_0-s2.gguf -r ${REPEAT:-3} \
    --json "$OUT/prio-$s.json" 2>&1 | grep -v "^llama\|^load\|^print_info\|^\.\+$"
done
python3 "$REPO/benchmarks/gpu_overlap_probe.py" $L $M/qwen2.5-1.5b-q8_0-s3.gguf $M/qwen2.5-1.5b-q8_0-s2.gguf 2>&1 \
  | grep -v "^llama\|^load\|^print_info\|^\.\+$"
