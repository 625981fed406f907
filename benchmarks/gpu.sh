#!/usr/bin/env bash
# The GPU measurements of the model track in one command, for one lent H100 (about 8 minutes):
# training-step img/s, MFU, peak memory and the loss curves (bench_train.py), then the whole
# evaluation's episodes/s, released one-at-a-time fp32 vs ours (bench_evaluate.py).
#
#   bash benchmarks/gpu.sh                 # writes results/gpu/*.txt|json (or under $OUT)
#
# Needs only what the GPU image has (torch, torchvision, numpy, pillow, tqdm, pyyaml, scipy):
# the repository runs from its folder, uninstalled. Each benchmark has its own time limit, and
# every line is flushed to the logs as it is printed, so a benchmark cut short still says
# what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
timeout ${TRAIN_LIMIT_S:-300} $PY benchmarks/bench_train.py "$@" 2>&1 | grep -v "^W[0-9]" | tee "$OUT/bench_train.txt"
echo "bench_train exit: ${PIPESTATUS[0]}" | tee -a "$OUT/bench_train.txt"
timeout ${EVAL_LIMIT_S:-200} $PY benchmarks/bench_evaluate.py --out "$OUT/bench_evaluate.json" 2>&1 \
  | grep -v "^W[0-9]" | tee "$OUT/bench_evaluate.txt"
echo "bench_evaluate exit: ${PIPESTATUS[0]}" | tee -a "$OUT/bench_evaluate.txt"
