"""The classifier on real papers: the e-prints in ../shared/testdata/eprints crawled through the
replay, extracted, labelled by the official index, trained with the defaults, and scored."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from pipeline import classify, store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bench_real import evaluate  # noqa: E402


def test_real_eprints_ranked_as_cvf_kept_them(testdata, tmp_path):
    root = tmp_path / "data"
    index = [testdata / "cvf_index" / "df_train.csv", testdata / "cvf_index" / "df_val.csv"]
    result = evaluate(testdata / "eprints", index, root)

    # Every listed figure whose file the trees hold comes out; SOURCES.tsv names the one they lack.
    sources = list(csv.DictReader(open(testdata / "eprints" / "SOURCES.tsv"), delimiter="\t"))
    absent = {f"{s['arxiv_id']}/{s['cvf_img_names_not_found']}" for s in sources if s["cvf_img_names_not_found"]}
    assert set(result["extraction"]["missing"]) == absent
    assert result["extraction"]["listed"] == sum(int(s["n_cvf_images_for_this_paper"]) for s in sources)

    # The goal: out-of-fold, by paper, with the defaults (no backbone weights).
    assert result["papers"] == 6 and result["labelled"] >= 100 and result["kept_by_cvf"] >= 12
    assert result["roc_auc"] >= 0.85 and result["pr_auc"] >= 0.85, result
    assert result["at_card_threshold"]["recall"] >= 0.7 and result["at_card_threshold"]["precision"] >= 0.6

    out = Path(result["classifier"])
    card = json.loads((out / "card.json").read_text())
    assert card["labels"]["by_source"] == {"cvf-index": result["labelled"]}
    assert card["unnamed_offset"] > 0  # copies the LaTeX leaves unused were dropped by CVF: learnt so
    assert (out / "disagreements.png").stat().st_size > 0 and "disagreements.png" in (out / "card.md").read_text()

    # Scoring every extracted figure with the trained model: CVF's kept figures come out on top.
    summary = classify.score(root)
    assert summary["errors"] == 0 and summary["scored"] >= result["labelled"]
    scores = {(r["paper_id"], r["img_name"]): r["score"] for p in sorted((root / "scores").glob("*.parquet"))
              for r in store.read_rows(p)}
    preds = store.read_rows(out / "cv_predictions.parquet")
    kept = [scores[(r["paper_id"], r["img_name"])] for r in preds if r["label"]]
    dropped = [scores[(r["paper_id"], r["img_name"])] for r in preds if not r["label"]]
    assert np.median(kept) > 0.5 > np.median(dropped)
