#!/usr/bin/env bash
# The GPU measurement of the model track, one prepared call on one GPU, <= 6 minutes:
#   1. train     bench_train.py: the released training step (its own code, $CVF_RELEASED_CODE) vs cvf
#                eager fp32, fast on the fly and fast from cached tokens; first-step loss and
#                held-out loss agreement                                       (limit 155 s)
#   2. evaluate  bench_evaluate.py: the released per-episode loop vs model.evaluate's whole path,
#                fp32 (default), bf16, --compile; episodes/s, IoU agreement     (limit 120 s)
#   3. loader    bench_loader.py: `python -m model.train --max-steps N` (bf16, uncompiled) from
#                packed shards, the machine's cores as workers, vs decoding alone (limit 70 s)
# Each phase runs under its own hard `timeout` (and within the 360-s total), writes its JSON as
# it goes, and after every phase benchmarks/gpu_summary.py rewrites <device>-YYYYMMDD.json and
# .md in $OUT, so a run cut short still returns what it measured.
#
#   export CVF_RELEASED_CODE=/path/to/visual_prompting  # a clone of github.com/amirbar/visual_prompting
#                                            # at 6351e0d (or an ignored copy at .reference/visual_prompting)
#   bash benchmarks/gpu.sh                   # writes $OUT (default results/gpu/)
#   bash benchmarks/gpu.sh --tiny            # every phase on the CPU, tiny models (a check)
#
# Budget (estimated, not yet measured on an H200; from H100 timings of the released code
# and the CPU --tiny phase timings): train ~145 s = start-up and two ViT-L models ~20 s,
# released 21 steps x 0.14 s, cvf fp32 21 x ~0.6 s, compiling the fast step and tokenizer ~80 s (the
# H100 probe took ~80 s for both), fast rows ~10 s, curves 8 fp32 steps of 256 ~20 s; evaluate
# ~105 s = start-up ~10 s, released 260 episodes at ~30/s ~10 s, cvf rows ~15 s, compiling the
# inference path once ~60 s; loader ~55 s = 12,288 JPEGs written and packed ~15 s, decoding alone
# ~6 s, 48 training steps at batch 256 ~30 s, its final checkpoint (ViT-L + AdamW, ~4 GB) ~5 s. On the 2-core CPU (shared, loaded) --tiny took
# train 45 s, evaluate 85 s, loader 58 s. A phase that overruns its limit loses only its tail.
#
# On a GPU machine without the package installed (torch and timm present, no internet), run it
# from the working tree: it puts the tree on PYTHONPATH itself.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
OUT=${OUT:-results/gpu}
TINY=()
case ${1:-} in
  --tiny) TINY=(--tiny) ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu.sh [--tiny]" >&2; exit 2 ;;
esac
BUDGET_S=${GPU_BUDGET_S:-360}
START=$(date +%s)
mkdir -p "$OUT"
: > "$OUT/phases.tsv"
echo "bash benchmarks/gpu.sh $*" > "$OUT/command.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1 \
  || echo "no nvidia-smi" > "$OUT/gpu.txt"
# what the phases import, found or not (find_spec: no import, no time); a missing one is named here
$PY -c "import importlib.util as u; m=[n for n in ('torch','torchvision','timm','einops','numpy','PIL','scipy','yaml','tqdm') if u.find_spec(n) is None]; print('missing modules:', ' '.join(m) if m else 'none')" | tee "$OUT/env.txt"
$PY -c "from benchmarks.released import missing_reason as m; r = m(); print(f'released rows skipped: {r}') if r else None" | tee -a "$OUT/env.txt"

phase() {  # NAME LIMIT_S COMMAND...: COMMAND under a hard timeout, within what is left of BUDGET_S
  local name=$1 limit=$2 left t0 rc
  shift 2
  left=$(( BUDGET_S - ($(date +%s) - START) - 10 ))
  (( limit > left )) && limit=$left
  if (( limit < 15 )); then
    printf '%s\tskipped\t0\t%s\n' "$name" "$limit" >> "$OUT/phases.tsv"
    return
  fi
  echo "== $name (limit ${limit} s)"
  t0=$(date +%s)
  timeout -k 5 "$limit" "$@" 2>&1 | grep --line-buffered -v "^W[0-9]" | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$limit" >> "$OUT/phases.tsv"
  $PY benchmarks/gpu_summary.py "$OUT" > /dev/null || echo "gpu_summary failed" >&2
}

phase train "${TRAIN_LIMIT_S:-155}" $PY benchmarks/bench_train.py "${TINY[@]}" --out "$OUT/train.json"
phase evaluate "${EVAL_LIMIT_S:-120}" $PY benchmarks/bench_evaluate.py "${TINY[@]}" --out "$OUT/evaluate.json"
phase loader "${LOADER_LIMIT_S:-70}" $PY benchmarks/bench_loader.py "${TINY[@]}" --out "$OUT/loader.json"
$PY benchmarks/gpu_summary.py "$OUT"
echo "total $(( $(date +%s) - START )) s"
