"""Assemble evaluation runs into the paper's Table 1: `python -m model.report RUN_DIR ... --out DIR`.

Rows are (model, pre-training data); columns are foreground segmentation mIoU on the four
Pascal-5i folds, single-object detection mIoU on the same four class folds, and colorization
MSE and LPIPS, as in Bar et al. (2022), Table 1. Every `results.json` under each RUN_DIR (what
`python -m model.evaluate --out` writes, `--fold all` included) is one cell or more:
  segmentation   its fold's `iou` (mean over seeds)
  detection      its episodes (episodes.csv) split by the query's class into the folds' classes
                 (fold f: VOC classes 5f+1..5f+5), the mean `iou` of each
  colorization   `mse` and, when evaluated with --lpips, `lpips`
The model is what the run loaded (results.json `model_kind`), the pre-training data what
`--pretraining` said (else "?"). Two runs for one cell are refused, naming both.

Writes <out>/table.md and <out>/table.csv (one row per model and data, empty where not run).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from model import cli, voc
from model.files import atomic_write
from model.inpainters import KINDS, LABELS

SEG = [f"seg_fold{f}" for f in range(voc.N_FOLDS)]
DET = [f"det_fold{f}" for f in range(voc.N_FOLDS)]
COLUMNS = SEG + DET + ["color_mse", "color_lpips"]
HEADERS = ([f"Seg. {f}" for f in range(voc.N_FOLDS)] + [f"Det. {f}" for f in range(voc.N_FOLDS)]
           + ["Color. MSE ↓", "Color. LPIPS ↓"])


def kind_of_results(results: dict) -> str:
    """results.json's model kind (older files only describe it in words)."""
    if results.get("model_kind") in KINDS:
        return results["model_kind"]
    text = str(results.get("model", ""))
    return "mae" if text.startswith("pixel MAE") else "mae-vqgan"


def detection_per_fold(run_dir: Path) -> dict[str, float]:
    """Mean IoU of a detection run's episodes per class fold, from its episodes.csv."""
    path = run_dir / "episodes.csv"
    if not path.is_file():
        raise ValueError(f"{run_dir}: a detection run without episodes.csv")
    per_fold: dict[int, list[float]] = {}
    folds = {c: f for f in range(voc.N_FOLDS) for c in voc.fold_classes(f)}
    for row in csv.DictReader(path.open()):
        fold = folds.get(int(row["class_id"]))
        if fold is not None and row.get("iou") not in (None, "", "nan"):
            per_fold.setdefault(fold, []).append(float(row["iou"]))
    return {f"det_fold{f}": sum(v) / len(v) for f, v in per_fold.items() if v}


def cells_of(run_dir: Path, results: dict) -> dict[str, float]:
    summary = results.get("summary", {})
    task = results.get("task")
    if task == "segmentation":
        return {f"seg_fold{int(results['fold'])}": summary["iou"]["mean"]}
    if task == "detection":
        return detection_per_fold(run_dir)
    if task == "colorization":
        out = {"color_mse": summary["mse"]["mean"]}
        if "lpips" in summary:
            out["color_lpips"] = summary["lpips"]["mean"]
        return out
    return {}                                             # synthetic tasks: not in Table 1


def collect(run_dirs) -> dict[tuple[str, str], dict[str, float]]:
    """(model kind, pre-training) -> column -> value, from every results.json under the dirs."""
    table: dict[tuple[str, str], dict[str, float]] = {}
    sources: dict[tuple, Path] = {}
    found = 0
    for run_dir in map(Path, run_dirs):
        if not run_dir.is_dir():
            raise FileNotFoundError(f"run folder not found: {run_dir}")
        for path in sorted(run_dir.rglob("results.json")):
            try:
                results = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"{path} is not a results.json of model.evaluate ({e})") from None
            found += 1
            row = (kind_of_results(results), results.get("pretraining") or "?")
            for column, value in cells_of(path.parent, results).items():
                if (row, column) in sources:
                    raise ValueError(f"two runs for {LABELS[row[0]]} / {row[1]} / {column}: "
                                     f"{sources[(row, column)]} and {path.parent}")
                sources[(row, column)] = path.parent
                table.setdefault(row, {})[column] = value
    if not found:
        raise ValueError(f"no results.json under {', '.join(map(str, run_dirs))} (model.evaluate --out folders)")
    return table


def ordered_rows(table):
    return sorted(table, key=lambda r: (KINDS.index(r[0]), r[1]))


def markdown(table) -> str:
    lines = ["| Model | Pre-training | " + " | ".join(HEADERS) + " |", "|---|---|" + "---:|" * len(COLUMNS)]
    for row in ordered_rows(table):
        cells = [f"{table[row][c]:.4f}" if c in table[row] else "–" for c in COLUMNS]
        lines.append(f"| {LABELS[row[0]]} | {row[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["model", "pretraining", *COLUMNS])
    for row in ordered_rows(table):
        writer.writerow([LABELS[row[0]], row[1], *(table[row].get(c, "") for c in COLUMNS)])
    return buf.getvalue()


def write(table, out: Path) -> None:
    atomic_write(out / "table.md", lambda f: f.write(markdown(table).encode()))
    atomic_write(out / "table.csv", lambda f: f.write(csv_text(table).encode()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", type=cli.existing_dir, help="model.evaluate output folders (searched "
                   "recursively for results.json)")
    p.add_argument("--out", default="results/table1", type=cli.writable_dir, help="where table.md and table.csv go")
    args = p.parse_args(argv)
    try:
        table = collect(args.runs)
        write(table, Path(args.out))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(table), end="")
    print(f"written: {Path(args.out) / 'table.md'}, {Path(args.out) / 'table.csv'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
