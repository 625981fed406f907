"""Training labels for the classifier, gathered from three sources, each recorded as `source`.

* `label-studio`: people, through the labeling stage (`labels/labels.parquet`);
* `replay-truth`: the replay generator's knowledge (`truth.parquet`, `is_grid_with_photo`);
* `cvf-index`: distant supervision from the official index (`df_train.csv`/`df_val.csv`): for
  every listed paper whose e-print we extracted, its listed files are positives and its other
  candidates of the formats CVF considered (`.pdf`/`.png` names, EPS as its converted PDF)
  negatives; a JPEG photo grid CVF never looked at is no negative.

When sources disagree on a figure the more trustworthy wins, in that order. Labels whose
figure is not (or no longer) in the figure records are dropped and counted, never used; so are
people's labels of an image that re-extraction has since changed (its `sha256` differs).
"""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.naming import CVF_FORMATS, figure_format

SOURCES = ("label-studio", "replay-truth", "cvf-index")  # most trusted first



def from_label_studio(path: str | Path) -> list[dict]:
    """Decided labels (1/0) of the labeling stage; 'unsure' (null) is not a label.

    The labeling stage records answers the demo simulated from the replay truth as
    `replay-truth`; only a person's answers count as `label-studio`.
    """
    table = pq.read_table(path)
    sources = table["source"].to_pylist() if "source" in table.column_names else ["label-studio"] * table.num_rows
    rows = table.select([c for c in ("paper_id", "img_name", "label", "sha256") if c in table.column_names]).to_pylist()
    return [{**r, "label": int(r["label"]), "source": src if src in SOURCES else "label-studio"}
            for r, src in zip(rows, sources) if r["label"] is not None]


def from_replay_truth(path: str | Path) -> list[dict]:
    rows = pq.read_table(path, columns=["paper_id", "img_name", "is_grid_with_photo"]).to_pylist()
    return [{"paper_id": r["paper_id"], "img_name": r["img_name"], "label": int(bool(r["is_grid_with_photo"])),
             "source": "replay-truth"} for r in rows]


def read_cvf_index(paths: list[str | Path]) -> dict[str, set[str]]:
    """paper_id -> the img_names the official index lists for it (`,paper_id,img_name` CSVs)."""
    listed: dict[str, set[str]] = {}
    for p in paths:
        with open(p, newline="") as f:
            for row in csv.DictReader(f):
                listed.setdefault(row["paper_id"], set()).add(row["img_name"])
    return listed


def from_cvf_index(listed: dict[str, set[str]], figures: list[dict]) -> list[dict]:
    """Distant labels for the candidates of listed papers that we extracted from their e-print.

    Only e-print candidates count: the official corpus was made from LaTeX sources, so a PDF
    fallback's `page-N` names can never match. Candidates the official name filter would drop
    were never scored by the original classifier, so they are not evidence of a negative. A
    listed paper none of whose candidates carries a listed name (another version of the paper,
    names that do not line up) gives no labels: its candidates are not known negatives. A
    candidate whose name is of a format CVF did not consider (jpg, gif, ...: the index lists
    only .pdf and .png names) was never CVF's to list, so it is no negative either.
    """
    matched = {f["paper_id"] for f in figures if f["img_name"] in listed.get(f["paper_id"], ())}
    out = []
    for f in figures:
        names = listed.get(f["paper_id"])
        if (names is None or f["paper_id"] not in matched or f.get("source_kind", "eprint") != "eprint"
                or f.get("name_filter")):
            continue
        if f["img_name"] not in names and figure_format(f["img_name"]) not in CVF_FORMATS:
            continue
        out.append({"paper_id": f["paper_id"], "img_name": f["img_name"],
                    "label": int(f["img_name"] in names), "source": "cvf-index"})
    return out


def gather(figures: list[dict], label_studio: str | Path | None = None, truth: str | Path | None = None,
           cvf_index: list[str | Path] = ()) -> tuple[list[dict], dict]:
    """One label per existing figure, the most trusted source winning; and a report.

    `figures` are figure records (at least `paper_id`, `img_name`). The report counts labels
    per source, per class, how many were overridden by a more trusted source, and how many
    pointed at figures that do not exist (with a few examples).
    """
    candidates: list[dict] = []
    if label_studio and Path(label_studio).exists():
        candidates += from_label_studio(label_studio)
    if truth and Path(truth).exists():
        candidates += from_replay_truth(truth)
    unmatched: list[str] = []  # listed papers we extracted whose listed names we never found
    if cvf_index:
        listed = read_cvf_index(list(cvf_index))
        distant = from_cvf_index(listed, figures)
        candidates += distant
        extracted = {f["paper_id"] for f in figures if f["paper_id"] in listed and f.get("source_kind", "eprint") == "eprint"}
        unmatched = sorted(extracted - {r["paper_id"] for r in distant})

    sha_of = {(f["paper_id"], f["img_name"]): f.get("sha256") or "" for f in figures}
    rank = {s: i for i, s in enumerate(SOURCES)}
    chosen: dict[tuple[str, str], dict] = {}
    missing, changed, overridden = [], [], 0
    for lab in sorted(candidates, key=lambda r: rank[r["source"]]):
        key = (lab["paper_id"], lab["img_name"])
        if key not in sha_of:
            missing.append(key)
        elif lab.get("sha256") and sha_of[key] and lab["sha256"] != sha_of[key]:
            changed.append(key)  # the label is of the image as it was, not as it is
        elif key in chosen:
            overridden += 1
        else:
            chosen[key] = {k: lab[k] for k in ("paper_id", "img_name", "label", "source")}
    labels = list(chosen.values())
    report = {
        "labels": len(labels),
        "positives": sum(r["label"] for r in labels),
        "negatives": sum(1 - r["label"] for r in labels),
        "by_source": dict(Counter(r["source"] for r in labels)),
        "overridden_by_more_trusted_source": overridden,
        "labels_for_missing_figures": len(missing),
        "missing_examples": ["/".join(k) for k in missing[:10]],
        "labels_for_changed_images": len(changed),
        "changed_examples": ["/".join(k) for k in changed[:10]],
        "cvf_index_papers_without_a_listed_name": len(unmatched),
        "cvf_index_unmatched_examples": unmatched[:10],
    }
    return labels, report
