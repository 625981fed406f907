"""The filter (threshold, dedup, near-duplicate report) and the 90/10 split by paper."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pyarrow as pa
import pytest

from pipeline import filter as flt
from pipeline import store
from pipeline.classify import SCORE_SCHEMA
from pipeline.split import split_of


def write_scored_records(root, n_papers=40, per_paper=5, shard="2020-07", seed=0):
    """Paper, figure and score records (no images: the filter reads none). Scores run 0..1."""
    papers, figures, scores = [], [], []
    for i in range(n_papers):
        pid = f"{shard[2:4]}{shard[5:7]}.{i:05d}"
        papers.append({"arxiv_id": pid, "version": 2, "license": "http://arxiv.org/licenses/nonexclusive-distrib/1.0/",
                       "published": dt.datetime(2019 + i % 3, 5, 1, tzinfo=dt.timezone.utc)})
        for j in range(per_paper):
            name = f"fig{j}.png"
            figures.append({"paper_id": pid, "img_name": name, "sha256": f"{i:05d}{j:03d}", "width": 100,
                            "height": 50, "image_path": f"images/{shard}/{pid}/{name}", "source_kind": "eprint",
                            "status": "ok", "dup_of": "", "near_dup_of": ""})
            scores.append({"paper_id": pid, "img_name": name, "sha256": f"{i:05d}{j:03d}",
                           "score": ((i * per_paper + j) * 7919 % 1000) / 999, "model_version": "m1",
                           "status": "ok", "error": ""})
    store.write_rows(root / "papers" / f"{shard}.parquet", papers, pa.Table.from_pylist(papers).schema)
    store.write_rows(root / "figures" / f"{shard}.parquet", figures, pa.Table.from_pylist(figures).schema)
    store.write_stats(root / "figures", shard, {})
    store.write_rows(root / "scores" / f"{shard}.parquet", scores, SCORE_SCHEMA)
    store.write_stats(root / "scores", shard, {"model_version": "m1"})
    return figures, scores


def test_split_is_a_stable_hash_of_paper_id_and_seed():
    ids = [f"2001.{i:05d}" for i in range(20000)]
    splits = [split_of(p) for p in ids]
    assert 0.09 < splits.count("val") / len(ids) < 0.11
    assert [split_of(p) for p in ids[:500]] == splits[:500]  # adding papers moves none
    other_seed = [split_of(p, seed=1) for p in ids]
    assert 0.09 < other_seed.count("val") / len(ids) < 0.11 and other_seed != splits


def test_threshold_keeps_at_or_above_and_splits_by_paper(data_root):
    _, scores = write_scored_records(data_root)
    kept, report = flt.select(flt.candidates(data_root), threshold=0.5)
    assert len(kept) == sum(s["score"] >= 0.5 for s in scores) == report["kept"]
    assert kept["score"].min() >= 0.5
    per_paper = kept.groupby("paper_id")["split"].nunique()
    assert (per_paper == 1).all()  # no paper in both splits
    assert set(kept["split"]) == {"train", "val"}
    assert sum(r["total"] for r in report["per_year"].values()) == report["kept"]
    assert set(report["per_year"]) == {2019, 2020, 2021}
    assert report["per_split"]["train"]["figures"] + report["per_split"]["val"]["figures"] == report["kept"]
    row = kept.iloc[0]
    assert row["source_url"] == f"https://arxiv.org/e-print/{row['paper_id']}v2" and row["version"] == 2


def test_target_count_picks_the_threshold_that_keeps_n(data_root):
    write_scored_records(data_root)
    kept, report = flt.select(flt.candidates(data_root), target_count=37)
    assert len(kept) == 37 and report["target_count"] == 37
    assert kept["score"].min() == pytest.approx(report["threshold"])


def test_exact_duplicates_dropped_near_duplicates_reported(data_root):
    figures, scores = write_scored_records(data_root, n_papers=4, per_paper=3)
    figures[1]["dup_of"] = "2007.00000/fig0.png"  # marked by extraction
    figures[5]["sha256"] = scores[5]["sha256"] = figures[4]["sha256"]  # same PNG in another figure
    figures[7]["near_dup_of"] = "2007.00002/fig0.png"
    store.write_rows(data_root / "figures" / "2020-07.parquet", figures, pa.Table.from_pylist(figures).schema)
    store.write_rows(data_root / "scores" / "2020-07.parquet", scores, SCORE_SCHEMA)
    kept, report = flt.select(flt.candidates(data_root), threshold=0.0)
    keys = set(kept["paper_id"] + "/" + kept["img_name"])
    assert "2007.00000/fig1.png" not in keys and "2007.00001/fig2.png" not in keys
    assert "2007.00001/fig1.png" in keys  # the first of the identical pair stays
    assert report["dropped_exact_duplicates"] == 2 and report["kept"] == 10
    assert report["near_duplicates_kept"] == 1
    assert report["near_duplicate_examples"] == ["2007.00002/fig1.png ~ 2007.00002/fig0.png"]


@pytest.mark.parametrize("kwargs, message", [
    ({"threshold": 1.5}, r"must be in \[0, 1\]"),
    ({"threshold": -0.1}, r"must be in \[0, 1\]"),
    ({}, "exactly one"),
    ({"threshold": 0.5, "target_count": 3}, "exactly one"),
    ({"target_count": 0}, "at least 1"),
])
def test_bad_arguments_are_clear_errors(data_root, kwargs, message):
    write_scored_records(data_root, n_papers=2)
    with pytest.raises(ValueError, match=message):
        flt.select(flt.candidates(data_root), **kwargs)


def test_empty_corpus_is_a_clear_error_and_writes_nothing(data_root):
    with pytest.raises(ValueError, match="empty corpus"):
        flt.run(data_root, threshold=0.5)
    assert not (data_root / "selection").exists()


def test_failed_scores_are_not_selected(data_root):
    _, scores = write_scored_records(data_root, n_papers=3, per_paper=2)
    scores[0].update(score=None, status="error", error="OSError: truncated")
    store.write_rows(data_root / "scores" / "2020-07.parquet", scores, SCORE_SCHEMA)
    kept, _ = flt.select(flt.candidates(data_root), threshold=0.0)
    assert len(kept) == 5


def test_scores_of_images_re_extracted_since_are_left_out_and_reported(data_root):
    figures, _ = write_scored_records(data_root, n_papers=3, per_paper=2)
    figures[2]["sha256"] = "f" * 64  # re-extracted after scoring: the score is of the old image
    store.write_rows(data_root / "figures" / "2020-07.parquet", figures, pa.Table.from_pylist(figures).schema)
    kept, report = flt.select(flt.candidates(data_root), threshold=0.0)
    assert len(kept) == 5 and "f" * 64 not in set(kept["sha256"])
    assert report["stale_scores"] == 1 and report["candidates"] == 6
    assert "1 figures were re-extracted since they were scored" in flt.format_report(report)


def test_cli_prints_and_writes_per_year_and_per_split(data_root):
    write_scored_records(data_root)
    out = subprocess.run([sys.executable, "-m", "pipeline.filter", "--threshold", "0.25"],
                         capture_output=True, text=True)  # $CVF_DATA from the data_root fixture
    assert out.returncode == 0, out.stderr
    assert "2019" in out.stdout and "papers:" in out.stdout
    report = json.loads((data_root / "selection" / "report.json").read_text())
    assert report["threshold"] == 0.25
    assert (data_root / "selection" / "per_year.csv").read_text().startswith("year,train,val,total\n")
    assert len(store.read_rows(data_root / "selection" / "selection.parquet")) == report["kept"]

    out = subprocess.run([sys.executable, "-m", "pipeline.filter", "--threshold", "2"], capture_output=True, text=True)
    assert out.returncode == 2 and "[0, 1]" in out.stderr


def test_pdf_region_columns_carry_page_and_exact_bbox_text():
    """PDF-fallback figures keep their page and bbox (text that reads back to the same floats);
    other figures, and records written before extraction kept a region, get null and ''."""
    import numpy as np
    import pandas as pd

    from pipeline.filter import pdf_region_columns

    box = [55.24, 50.54, 293.75, 1 / 3]
    df = pd.DataFrame({"render": ["pdf-region", "crop", "pdf-region"],
                       "page": [2.0, float("nan"), float("nan")],
                       "bbox": [np.array(box), None, None]})
    page, bbox = pdf_region_columns(df)
    assert page.tolist()[0] == 2 and page.isna().tolist() == [False, True, True]
    assert [float(v) for v in bbox[0].split(",")] == box and bbox.tolist()[1:] == ["", ""]
    old = pd.DataFrame({"render": ["pdf-region", ""]})  # figure records without the columns
    page, bbox = pdf_region_columns(old)
    assert page.isna().all() and bbox.tolist() == ["", ""]


def test_the_selection_cites_the_version_the_pixels_came_from(data_root):
    """A figure extracted from v1 of a paper the crawl has since moved to v2 keeps citing v1
    (its pixels are v1's); a figure record without a version falls back to the paper's."""
    figures, _ = write_scored_records(data_root, n_papers=4, per_paper=2)
    for f in figures:
        f["version"] = 1 if f["paper_id"].endswith("0") else None
    schema = pa.Table.from_pylist(figures).schema.set(
        len(figures[0]) - 1, pa.field("version", pa.int32()))
    store.write_rows(data_root / "figures" / "2020-07.parquet", figures, schema)
    kept, _ = flt.select(flt.candidates(data_root), threshold=0.0)
    by_paper = kept.groupby("paper_id")[["version", "source_url"]].first()
    assert by_paper.loc["2007.00000"].tolist() == [1, "https://arxiv.org/e-print/2007.00000v1"]
    assert by_paper.loc["2007.00001"].tolist() == [2, "https://arxiv.org/e-print/2007.00001v2"]
