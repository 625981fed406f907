"""Select the corpus: keep figures scored at or above a threshold, deduplicate, split by paper.

    python -m pipeline.filter --threshold 0.5
    python -m pipeline.filter --target-count 88645     # the threshold that keeps that many

Joins the scores with the figure records (hash, size, duplicate marks) and the paper records
(version, licence, date), then:

1. drops exact duplicates: figures extraction marked `dup_of`, and any figure whose PNG hash
   repeats one kept before it (first by paper id, then name, wins);
2. keeps figures with `score >= threshold`;
3. leaves out (before steps 1-2) the figures that show evaluation images (`contamination/*.parquet`,
   written by `python -m pipeline.contamination`) unless `--keep-contaminated`;
4. reports near duplicates (`near_dup_of` pointing at another kept figure) without dropping
   them: they are often the same photo with a different overlay, a judgement call;
5. assigns each paper's split with `pipeline.split.split_of` (90/10, a hash of id and seed).

Writes `selection/selection.parquet`, `selection/report.json` and `selection/per_year.csv`,
and prints the per-year / per-split table.
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from model import cli
from pipeline import store
from pipeline.config import data_root
from pipeline.contract import SELECTION_SCHEMA
from pipeline.latex import PANEL_COLUMNS, TEXT_COLUMNS
from pipeline.shards import shard_of_id
from pipeline.split import split_of

SELECTION_COLUMNS = SELECTION_SCHEMA.names


def _read_stage(root: Path, stage: str, columns: list[str] | None = None) -> pd.DataFrame:
    """All done shards of a stage as one DataFrame (missing optional columns are left out)."""
    tables = []
    for p in sorted((root / stage).glob("*.parquet")):
        if not store.shard_done(root / stage, p.stem):
            continue
        t = pq.read_table(p)
        keep = [c for c in columns if c in t.column_names] if columns else t.column_names
        tables.append(t.select(keep))
    if not tables:
        return pd.DataFrame(columns=columns or [])
    return pa.concat_tables(tables, promote_options="default").to_pandas()


def _papers(root: Path) -> pd.DataFrame:
    """paper_id -> version, licence, year published, crawl date (`crawled_at`; older records without
    it fall back to the date their file was last written)."""
    frames = []
    for p in sorted((root / "papers").glob("*.parquet")):
        t = pq.read_table(p)
        cols = [c for c in ["arxiv_id", "version", "license", "published", "crawled_at"] if c in t.column_names]
        df = t.select(cols).to_pandas()
        if "crawled_at" in df:
            df["crawl_date_from"] = "crawl record"
        else:  # the crawl records no crawl time: the record file's last write stands in for it
            df["crawled_at"] = dt.datetime.fromtimestamp(p.stat().st_mtime, dt.timezone.utc)
            df["crawl_date_from"] = "papers file modified"
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["paper_id", "version", "license", "published", "crawl_date", "crawl_date_from"])
    df = pd.concat(frames).rename(columns={"arxiv_id": "paper_id"}).drop_duplicates("paper_id", keep="last")
    df["crawl_date"] = pd.to_datetime(df.pop("crawled_at"), utc=True).dt.strftime("%Y-%m-%d")
    return df


def candidates(root: Path) -> pd.DataFrame:
    """Scored figures joined with their figure and paper records.

    `stale_score` marks a score of another image than the figure's PNG now (re-extracted since it
    was scored: the sha256s differ); `select` leaves those out and counts them.
    """
    scores = _read_stage(root, "scores", ["paper_id", "img_name", "sha256", "score", "model_version", "status"])
    if "status" in scores:
        scores = scores[scores["status"].fillna("ok") == "ok"].drop(columns="status")
    scores = scores[scores["score"].notna()].rename(columns={"sha256": "scored_sha256"})
    figures = _read_stage(root, "figures", ["paper_id", "img_name", "sha256", "width", "height", "image_path",
                                            "source_kind", "dup_of", "near_dup_of", "render", "phash",
                                            "page", "bbox", "version", "status"] + TEXT_COLUMNS + PANEL_COLUMNS)
    # Only a figure with an image: the records of a name without one (a later copy of the same
    # archive path won, another file has the same CVF name, it failed to render) must not join
    # the score of the one that has it.
    if "status" in figures:
        figures = figures[figures["status"].fillna("ok") == "ok"].drop(columns="status")
    df = scores.merge(figures.rename(columns={"version": "figure_version"}), on=["paper_id", "img_name"], how="inner")
    df = df.merge(_papers(root), on="paper_id", how="left")
    # The version the pixels came from: the figure record's; the paper record's (its latest
    # crawl) only for figure records written before they carried one.
    if "figure_version" in df:
        df["version"] = df.pop("figure_version").fillna(df["version"] if "version" in df else pd.NA)
    scored = df.pop("scored_sha256").fillna("") if "scored_sha256" in df else ""
    now = df["sha256"].fillna("")
    df["stale_score"] = (scored != "") & (now != "") & (scored != now)
    # render/phash: '' for figure records written before extraction kept them
    for col in ["dup_of", "near_dup_of", "license", "source_kind", "crawl_date", "crawl_date_from", "render", "phash"]:
        df[col] = df[col].fillna("") if col in df else ""
    df["page"], df["bbox"] = pdf_region_columns(df)
    # caption columns: '' and null for figure records written before extraction read them
    for col in TEXT_COLUMNS:
        df[col] = df[col].fillna("") if col in df else ""
    for col in PANEL_COLUMNS:
        df[col] = (df[col] if col in df else pd.Series(None, index=df.index, dtype="float64")).astype("Int32")
    return df


def pdf_region_columns(df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """`page` (nullable int) and `bbox` (`"x0,y0,x1,y1"`, PDF points) of the PDF-fallback
    figures (`render` pdf-region), so a rebuild can cut the same region again; null and ''
    for the others and for figure records written before extraction kept them. Each number is
    written as Python's shortest round-trip repr: read back, it is the same float."""
    region = df["render"] == "pdf-region"
    page = df["page"] if "page" in df else pd.Series(None, index=df.index, dtype="float64")
    page = page.where(region).astype("Int64")
    bbox = df["bbox"] if "bbox" in df else pd.Series(None, index=df.index, dtype=object)
    text = [",".join(repr(float(v)) for v in b) if is_region and hasattr(b, "__len__") and len(b) == 4
            else "" for b, is_region in zip(bbox, region)]  # a missing bbox may read as NaN
    return page, pd.Series(text, index=df.index, dtype=object)


def _year_of_id(paper_id: str) -> int:
    """The submission year from an arXiv id, for papers without a record (0 if unknown)."""
    try:
        return int(shard_of_id(paper_id)[:4])
    except ValueError:
        return 0


def source_url(paper_id: str, version, source_kind: str) -> str:
    v = f"v{int(version)}" if pd.notna(version) and version != "" else ""
    return f"https://arxiv.org/{'pdf' if source_kind == 'pdf' else 'e-print'}/{paper_id}{v}"


def threshold_for_count(scores: pd.Series, target_count: int) -> float:
    """The highest threshold that keeps at least `target_count` figures (all if there are fewer)."""
    if target_count < 1:
        raise ValueError(f"--target-count must be at least 1, got {target_count}")
    ranked = scores.sort_values(ascending=False).to_numpy()
    return float(ranked[min(target_count, len(ranked)) - 1])


def select(df: pd.DataFrame, threshold: float | None = None, target_count: int | None = None,
           seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """The kept figures (SELECTION_COLUMNS) and a report. Pure: no files touched."""
    if (threshold is None) == (target_count is None):
        raise ValueError("give exactly one of --threshold or --target-count")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1] (scores are probabilities), got {threshold}")
    if df.empty:
        raise ValueError("empty corpus: no scored figures (run extraction and `python -m pipeline.classify score`)")

    all_scored = len(df)
    stale = df["stale_score"] if "stale_score" in df else pd.Series(False, index=df.index)
    df = df[~stale].sort_values(["paper_id", "img_name"], kind="stable")  # a score of the image as it was
    marked = df["dup_of"] != ""
    same_hash = df["sha256"].ne("") & df.duplicated("sha256", keep="first") & ~marked
    unique = df[~marked & ~same_hash]
    if target_count is not None:
        threshold = threshold_for_count(unique["score"], target_count)
    kept = unique[unique["score"] >= threshold].copy()

    kept["split"] = [split_of(p, seed) for p in kept["paper_id"]]
    published = pd.to_datetime(kept["published"], utc=True) if "published" in kept else pd.Series(pd.NaT, index=kept.index)
    kept["year"] = published.dt.year.fillna(kept["paper_id"].map(_year_of_id)).astype(int)
    kept["source_url"] = [source_url(p, v, k) for p, v, k in zip(kept["paper_id"], kept["version"], kept["source_kind"])]
    kept_keys = set(kept["paper_id"] + "/" + kept["img_name"])
    near = kept[kept["near_dup_of"].isin(kept_keys)]
    crawl_date_from = kept["crawl_date_from"].replace("", "no paper record").value_counts()
    kept = kept[SELECTION_COLUMNS].reset_index(drop=True)

    per_year = (kept.groupby(["year", "split"]).size().unstack(fill_value=0)
                .reindex(columns=["train", "val"], fill_value=0))
    per_year["total"] = per_year.sum(axis=1)
    report = {
        "threshold": float(threshold),
        "target_count": target_count,
        "seed": seed,
        "model_version": sorted(set(kept["model_version"])),
        "candidates": int(all_scored),
        "stale_scores": int(stale.sum()),
        "dropped_exact_duplicates": int(marked.sum() + same_hash.sum()),
        "below_threshold": int(len(unique) - len(kept)),
        "kept": int(len(kept)),
        "near_duplicates_kept": int(len(near)),
        "near_duplicate_examples": [f"{a}/{b} ~ {c}" for a, b, c in
                                    near[["paper_id", "img_name", "near_dup_of"]].head(20).itertuples(index=False)],
        "crawl_date_from": {k: int(v) for k, v in crawl_date_from.items()},  # where each crawl_date came from
        "per_split": {s: {"figures": int((kept["split"] == s).sum()),
                          "papers": int(kept.loc[kept["split"] == s, "paper_id"].nunique())} for s in ("train", "val")},
        "per_year": {int(y): {k: int(v) for k, v in row.items()} for y, row in per_year.iterrows()},
    }
    return kept, report


def format_report(report: dict) -> str:
    lines = [f"threshold {report['threshold']:.4f}: kept {report['kept']} of {report['candidates']} scored figures "
             f"({report['dropped_exact_duplicates']} exact duplicates dropped, {report['below_threshold']} below "
             f"threshold, {report['near_duplicates_kept']} near duplicates kept and reported)",
             f"{'year':>6} {'train':>8} {'val':>8} {'total':>8}"]
    for year, row in report["per_year"].items():
        lines.append(f"{year:>6} {row['train']:>8} {row['val']:>8} {row['total']:>8}")
    s = report["per_split"]
    if report.get("stale_scores"):
        lines.insert(0, f"warning: {report['stale_scores']} figures were re-extracted since they were scored (sha256 "
                        "differs) and are left out: rescore them (`python -m pipeline.classify score`)")
    if len(report["model_version"]) > 1:
        lines.insert(0, f"warning: scores come from several classifiers {report['model_version']}: "
                        "rescore with one (`python -m pipeline.classify score`)")
    for name, n in report.get("contaminated_left_out", {}).items():
        lines.insert(1, f"left out {n} figures showing images of evaluation set {name} (contamination/{name}.parquet)")
    lines.append(f"{'all':>6} {s['train']['figures']:>8} {s['val']['figures']:>8} {report['kept']:>8}"
                 f"   (papers: {s['train']['papers']} train, {s['val']['papers']} val)")
    return "\n".join(lines)


def write_selection(root: Path, kept: pd.DataFrame, report: dict) -> Path:
    """selection.parquet, per_year.csv, then report.json, which names the selection's sha256: a
    run cut between its writes leaves a report that publish can tell is not this selection's."""
    out = root / "selection"
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(kept, preserve_index=False), buf, compression="zstd")
    selection = buf.getvalue()
    report = dict(report, selection_sha256=store.sha256_bytes(selection))
    store.atomic_write_bytes(out / "selection.parquet", selection)
    rows = ["year,train,val,total"] + [f"{y},{r['train']},{r['val']},{r['total']}" for y, r in report["per_year"].items()]
    store.atomic_write_text(out / "per_year.csv", "\n".join(rows) + "\n")
    store.atomic_write_json(out / "report.json", report)  # last: the selection is complete
    return out


def leave_out_contaminated(root: Path, df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The candidates without the figures `pipeline.contamination` found evaluation images in, and how
    many each evaluation set took out (a figure in several sets counts in each)."""
    from pipeline.contamination import contaminated_figures

    keys = pd.Series(list(zip(df["paper_id"], df["img_name"])), index=df.index, dtype=object)
    out, counts = pd.Series(False, index=df.index), {}
    for name, figures in contaminated_figures(root).items():
        hit = keys.isin(figures)
        counts[name] = int(hit.sum())
        out |= hit
    return df[~out], counts


def run(root=None, threshold=None, target_count=None, seed=0, keep_contaminated=False) -> tuple[Path, dict]:
    root = data_root(root)
    df = candidates(root)
    left_out: dict[str, int] = {}
    if not keep_contaminated:
        df, left_out = leave_out_contaminated(root, df)
    kept, report = select(df, threshold, target_count, seed)
    report["contaminated_left_out"] = left_out  # by evaluation set; {} with --keep-contaminated or none found
    report["contaminated_kept"] = bool(keep_contaminated)
    return write_selection(root, kept, report), report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.filter", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--root", type=cli.writable_dir, help="dataset root (default $CVF_DATA or ./data)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--threshold", type=cli.unit_interval, help="keep figures with score >= T (0 <= T <= 1)")
    how.add_argument("--target-count", type=cli.positive_int, help="pick the threshold that keeps N figures")
    p.add_argument("--seed", type=int, default=0, help="split seed (changing it reshuffles every paper)")
    p.add_argument("--keep-contaminated", action="store_true",
                   help="keep figures that show evaluation images (contamination/*.parquet, written by "
                        "python -m pipeline.contamination); by default they are left out")
    args = p.parse_args(argv)
    try:
        out, report = run(args.root, args.threshold, args.target_count, args.seed, args.keep_contaminated)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    print(f"selection -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
