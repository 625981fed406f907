#!/usr/bin/env bash
# The GPU measurements of the model track, for one lent H100: training-step img/s, MFU, peak
# memory and the loss curves (bench_train.py, ~4 min), then the whole evaluation's episodes/s,
# released one-at-a-time fp32 vs ours, eager and compiled (bench_evaluate.py, ~4 min).
#
#   bash benchmarks/gpu.sh              # both, ~8 min: writes results/gpu/ (or $OUT)
#   bash benchmarks/gpu.sh train        # one of them per call, where a call is limited to
#   bash benchmarks/gpu.sh evaluate     #   10 minutes and each needs its own minutes
#
# Needs only what the GPU image has (torch, torchvision, numpy, pillow, tqdm, pyyaml, scipy):
# the repository runs from its folder, uninstalled. Each benchmark has a time limit
# (TRAIN_LIMIT_S, EVAL_LIMIT_S), and every line reaches the logs as it is printed, so a
# benchmark cut short still says what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
OUT=${OUT:-results/gpu}
WHICH=${1:-all}
case $WHICH in all|train|evaluate) ;; *) echo "usage: bash benchmarks/gpu.sh [all|train|evaluate]" >&2; exit 2;; esac
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
if [[ $WHICH != evaluate ]]; then
  timeout "${TRAIN_LIMIT_S:-300}" $PY benchmarks/bench_train.py 2>&1 | grep -v "^W[0-9]" | tee "$OUT/bench_train.txt"
  echo "bench_train exit: ${PIPESTATUS[0]}" | tee -a "$OUT/bench_train.txt"
fi
if [[ $WHICH != train ]]; then
  timeout "${EVAL_LIMIT_S:-270}" $PY benchmarks/bench_evaluate.py --out "$OUT/bench_evaluate.json" 2>&1 \
    | grep -v "^W[0-9]" | tee "$OUT/bench_evaluate.txt"
  echo "bench_evaluate exit: ${PIPESTATUS[0]}" | tee -a "$OUT/bench_evaluate.txt"
fi
