#!/usr/bin/env bash
# On the lent GPU machine: CUDA build (benchmarks/gpu_setup.sh), then benchmarks/gpu_overlap_probe.py
# on 7B Q4_K_M + 1.5B / 0.5B Q8_0 pairs ($PAIRS), once without CUDA graphs, and a CUPTI kernel
# timeline (benchmarks/gpu_timeline.py, through torch.profiler) of the large model alone and of all three.
set -uo pipefail
source benchmarks/gpu_setup.sh
cd /tmp
t0=$(date +%s)
python3 - <<'PY'
from pathlib import Path
from rast_gguf.bench import BenchSetup, synthetic_models
for small in ["qwen2.5-" + s for s in __import__("os").environ.get("PAIRS", "1.5b 0.5b").split()]:
    synthetic_models(BenchSetup(small=small, workdir=Path("/tmp/bm")))
PY
echo "models: $(( $(date +%s) - t0 )) s"
M=/tmp/bm; L=$M/qwen2.5-7b-q4_k_m-s1.gguf
quiet() { grep -v "^llama\|^load\|^print_info\|^\.\+$\|^graph_\|^sched_\|^init\|^common\|^ggml"; }
P15="$M/qwen2.5-1.5b-q8_0-s3.gguf $M/qwen2.5-1.5b-q8_0-s2.gguf"
for s in ${PAIRS:-1.5b 0.5b}; do
  echo "== 7B Q4_K_M + $s Q8_0 pair"
  python3 "$REPO/benchmarks/gpu_overlap_probe.py" $L $M/qwen2.5-$s-q8_0-s3.gguf $M/qwen2.5-$s-q8_0-s2.gguf 2>&1 | quiet
done
echo "== 1.5B pair, GGML_CUDA_DISABLE_GRAPHS=1"
GGML_CUDA_DISABLE_GRAPHS=1 python3 "$REPO/benchmarks/gpu_overlap_probe.py" $L $P15 2>&1 | quiet
timeout 240 python3 "$REPO/benchmarks/gpu_timeline.py" $L $P15 --trace-dir /tmp 2>&1 | quiet
(cd /tmp && tar czf "$OUT/timelines.tgz" timeline-*.json)
