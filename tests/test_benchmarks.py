"""The GPU benchmarks of the model track run end to end on the CPU (`--tiny`), through their
compiled paths too, so a session that is lent a GPU spends its minutes measuring, not debugging.
No timings are asserted: what is checked is what the benchmarks claim besides speed."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_benchmark(name: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_bench_train_compiled_step_follows_the_eager_fp32_loss(tmp_path):
    out = run_benchmark("bench_train.py", "--tiny", "--compile", "--steps", "2", "--curve-steps", "5")
    for row in ("released (eager fp16", "fast, tokens on the fly", "fast, cached tokens"):
        assert re.search(rf"^{re.escape(row)}.*\s[\d.]+\s+[\d.]+\s+[\d.]+%", out, re.M), out
    # the compiled bf16 MAE step fed exact tokens tracks the eager fp32 step closely
    cached = re.search(r"fast cached vs eager fp32: max \|diff\| ([\d.]+)", out)
    assert cached and float(cached.group(1)) < 5e-3, out
    agree = re.search(r"picks the eager fp32 token for ([\d.]+)% of patches", out)
    assert agree and float(agree.group(1)) > 80, out
    # every run's weights end up equally good on held-out batches scored the same way
    held = dict((n, float(v)) for n, v in re.findall(r"(eager fp32|fast on the fly|fast cached|released fp16) "
                                                     r"([\d.]+)", out.split("held-out loss")[1]))
    assert set(held) == {"eager fp32", "fast on the fly", "fast cached", "released fp16"}, out
    assert all(abs(v - held["eager fp32"]) < 0.02 for v in held.values()), held


def test_bench_evaluate_compiled_path_gives_the_same_scores(tmp_path):
    report_file = tmp_path / "eval.json"
    out = run_benchmark("bench_evaluate.py", "--tiny", "--compile", "--released-episodes", "8",
                        "--episodes", "32", "--batch-size", "16", "--out", str(report_file))
    report = json.loads(report_file.read_text())
    assert report == json.loads(out[out.index("{"):])
    assert report["released_one_at_a_time_fp32"]["episodes"] == 8
    assert report["ours"]["episodes"] == report["compiled"]["episodes"] == 32
    for run in ("released_one_at_a_time_fp32", "ours", "compiled"):
        assert report[run]["episodes_per_s"] > 0 and report[run]["peak_memory_gib"] > 0
    assert report["model_gflops_per_episode"] > 0
    # the same 32 episodes through the compiled model: same answers up to kernel rounding
    assert abs(report["compiled"]["iou"] - report["ours"]["iou"]) < 0.01
