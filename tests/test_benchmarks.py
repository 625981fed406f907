"""The GPU measurement runs end to end on the CPU (`bash benchmarks/gpu.sh --tiny`: every phase,
tiny models, the released code beside cvf's), and the compiled paths run too, so that time on a
GPU goes to measuring, not debugging. No timings are asserted: what is
checked is what the benchmarks claim besides speed (agreement with the released code, the
result file's fields)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import released  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIELDS = ("device", "torch", "command", "released_train_img_s", "train_onthefly_img_s", "train_cached_img_s",
          "train_heldout_loss_gap", "released_eval_episodes_s", "eval_episodes_s", "eval_iou_agreement",
          "released_train_peak_memory_gib", "train_onthefly_peak_memory_gib", "train_cached_peak_memory_gib",
          "released_eval_peak_memory_gib", "eval_peak_memory_gib", "train_end_to_end_img_s", "targets")


def run_benchmark(name: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_gpu_sh_tiny_measures_both_sides_and_writes_the_result(tmp_path):
    reason = released.missing_reason()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "benchmarks/gpu.sh", "--tiny"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    phases = [line.split("\t") for line in (tmp_path / "phases.tsv").read_text().splitlines()]
    assert [(p[0], p[1]) for p in phases] == [("train", "0"), ("evaluate", "0"), ("loader", "0")], phases
    result = json.loads((tmp_path / f"cpu-{__import__('time').strftime('%Y%m%d')}.json").read_text())
    assert set(FIELDS) <= set(result)
    assert result["command"] == "bash benchmarks/gpu.sh --tiny"
    for field in ("released_train_img_s", "train_onthefly_img_s", "train_cached_img_s", "released_eval_episodes_s",
                  "eval_episodes_s", "train_end_to_end_img_s", "loader_only_img_s"):
        assert result[field] > 0, field
    # the released forward and cvf's on the same weights, batch and mask noise: the same loss
    assert result["train_first_loss_abs_diff"] < 1e-5, result["raw"]["train"]["agreement"]
    assert abs(result["train_heldout_loss_gap"]) < 0.02
    # the released loop ran the same episodes as model.evaluate, and both scored them alike
    evaluate = result["raw"]["evaluate"]
    assert evaluate["released"]["episodes"] == evaluate["cvf_fp32"]["episodes"] == 6
    assert evaluate["cvf_fp32"]["iou_agreement_within_0.001"] >= 0.8
    # one episode at a time, model.evaluate's fp32 path gives the released loop's IoU exactly
    assert evaluate["cvf_fp32_batch1"]["iou_agreement"] == 1.0, evaluate["cvf_fp32_batch1"]
    assert abs(evaluate["released"]["iou"] - evaluate["cvf_fp32"]["iou"]) < 0.005
    assert (tmp_path / f"cpu-{__import__('time').strftime('%Y%m%d')}.md").read_text().count("|") > 20


@pytest.mark.slow
def test_bench_train_compiled_step_follows_the_eager_fp32_loss(tmp_path):
    out = tmp_path / "train.json"
    run_benchmark("bench_train.py", "--tiny", "--compile", "--no-released", "--steps", "1", "--repeats", "1",
                  "--curve-steps", "3", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["compiled"] is True
    assert set(report["rows"]) == {"cvf_fp32", "cvf_fast_onthefly", "cvf_fast_cached"}
    # the compiled bf16 step fed exact tokens tracks the eager fp32 step closely
    fp32, cached = report["curves"]["cvf_fp32"], report["curves"]["cvf_fast_cached"]
    assert max(abs(a - b) for a, b in zip(fp32, cached)) < 5e-3, report["curves"]
    assert report["bf16_tokenizer_agreement"] > 0.8
    assert all(abs(v) < 0.02 for v in report["held_out_loss_gap"].values()), report["held_out_loss_gap"]


@pytest.mark.slow
def test_bench_evaluate_compiled_path_gives_the_same_scores(tmp_path):
    out = tmp_path / "eval.json"
    run_benchmark("bench_evaluate.py", "--tiny", "--compile", "--no-released", "--episodes", "4",
                  "--batch-size", "4", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["released"] == {"skipped": "--no-released"}
    assert report["cvf_compiled_fp32"]["episodes"] == report["cvf_fp32"]["episodes"] == 4
    # the same episodes through the compiled model: same answers up to kernel rounding
    assert abs(report["cvf_compiled_fp32"]["iou"] - report["cvf_fp32"]["iou"]) < 0.01


def test_summary_picks_the_fastest_accurate_evaluation_and_says_what_is_missing(tmp_path):
    from benchmarks import gpu_summary

    (tmp_path / "evaluate.json").write_text(json.dumps({
        "device": "NVIDIA H200", "torch": "2.11.0",
        "released": {"episodes_per_s": 40.0, "peak_memory_gib": 2.0},
        "cvf_fp32": {"episodes_per_s": 300.0, "iou_agreement": 0.995, "peak_memory_gib": 9.0},
        "cvf_bf16": {"episodes_per_s": 900.0, "iou_agreement": 0.7, "peak_memory_gib": 6.0},
        "cvf_compiled_fp32": {"episodes_per_s": 500.0, "iou_agreement": 0.993, "peak_memory_gib": 8.0}}))
    (tmp_path / "phases.tsv").write_text("train\t124\t160\t160\nevaluate\t0\t90\t120\n")
    assert gpu_summary.main([str(tmp_path)]) == 0
    name = f"h200-{__import__('time').strftime('%Y%m%d')}"
    r = json.loads((tmp_path / f"{name}.json").read_text())
    assert (r["eval_path"], r["eval_episodes_s"], r["eval_ratio"]) == ("cvf_compiled_fp32", 500.0, 12.5)
    assert r["targets"]["eval_ratio"]["met"] is True and r["targets"]["train_cached_ratio"]["met"] is None
    assert r["released_train_img_s"] is None and r["phases"]["train"]["timed_out"] is True
    md = (tmp_path / f"{name}.md").read_text()
    assert "train 160 s (timed out)" in md and "not measured" in md
    assert re.search(r"evaluation, whole path .*\| 40\.0 \| 500\.0 \| 12\.5x", md), md


def test_bench_decode_tiny_cached_equals_plain():
    """The sequential-decoding benchmark runs; it fails unless the cached and plain decodes agree."""
    out = run_benchmark("bench_decode.py", "--preset", "tiny", "--batch", "2", "--repeats", "1",
                        "--threads", "1")
    assert "same codes: True" in out and "cached" in out
