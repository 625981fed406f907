"""The data contract: every stage's table, as a pyarrow schema with one line per column.

Each stage imports its schema from here and writes exactly these columns; the description of a
column is stored in its field's metadata (`description`), so it travels into the Parquet files
too. `docs/contract.md` is generated from this module and a test keeps the two equal:

    python -m pipeline.contract > docs/contract.md      # or: python -m pipeline.contract --write

A table's columns are only ever added (at the end), never renamed or retyped: a reader meets
files written before a column existed, where it is missing or null.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyarrow as pa

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "contract.md"
TIMESTAMP = pa.timestamp("us", tz="UTC")


def _schema(columns: list[tuple[str, pa.DataType, str]]) -> pa.Schema:
    return pa.schema([pa.field(name, kind, metadata={"description": doc}) for name, kind, doc in columns])


def description(field: pa.Field) -> str:
    """The one-line description of a contract column."""
    return (field.metadata or {}).get(b"description", b"").decode()


# --- papers: one record per paper (python -m pipeline.crawl, python -m pipeline.bulk) ------------

# The columns of one download (`eprint_*` and `pdf_*` of a paper record).
DOWNLOAD_FIELDS = ("status", "path", "sha256", "bytes", "kind", "error")
_DOWNLOAD_DOCS = {
    "status": "ok, pending (retried by a rerun), missing, withdrawn, error, or skipped (not wanted)",
    "path": "where the file is stored, relative to the data root ('' without a file)",
    "sha256": "sha256 of the stored file ('' without a file)",
    "bytes": "size of the stored file (0 without a file)",
    "kind": "what the file is: tar.gz, tar, gz-tex, gz, pdf, zip, html ('' when not known)",
    "error": "why the download failed ('' when it did not)",
}
_DOWNLOADS = {"eprint": "e-print", "pdf": "paper PDF"}


def _download_columns(what: str) -> list[tuple[str, pa.DataType, str]]:
    return [(f"{what}_{f}", pa.int64() if f == "bytes" else pa.string(), f"{_DOWNLOADS[what]}: {_DOWNLOAD_DOCS[f]}")
            for f in DOWNLOAD_FIELDS]


PAPER_SCHEMA = _schema(
    [("arxiv_id", pa.string(), "arXiv id without version (2101.00001, cs/0701001)"),
     ("version", pa.int32(), "the arXiv version whose files are (or will be) stored"),
     ("title", pa.string(), "title"),
     ("authors", pa.list_(pa.string()), "author names in order"),
     ("summary", pa.string(), "abstract"),
     ("published", TIMESTAMP, "when version 1 was submitted"),
     ("updated", TIMESTAMP, "when this version was submitted"),
     ("primary_category", pa.string(), "primary arXiv category (cs.CV)"),
     ("categories", pa.list_(pa.string()), "every arXiv category of the paper"),
     ("license", pa.string(), "licence URL from OAI-PMH or the licence harvest ('' when unknown)"),
     ("doi", pa.string(), "DOI ('' when none)"),
     ("journal_ref", pa.string(), "journal reference ('' when none)"),
     ("comment", pa.string(), "the authors' comment ('' when none)")]
    + _download_columns("eprint") + _download_columns("pdf")
    + [("eprint_attempts", pa.int32(), "e-print downloads tried across runs (reset by --retry-failed)"),
       ("pdf_attempts", pa.int32(), "PDF downloads tried across runs (reset by --retry-failed)"),
       ("crawled_at", TIMESTAMP, "when this version's files were first stored: the manifests' crawl date")])

# The bulk route's per-tar records (`bulk/<tar>.parquet`): the wanted papers one source tar held.
TAR_SCHEMA = _schema(
    [("arxiv_id", pa.string(), "arXiv id without version"),
     ("version", pa.int32(), "the version the tar's member is (from the paper's version dates)"),
     ("member", pa.string(), "the member's path in the tar")]
    + [(f"eprint_{f}", pa.int64() if f == "bytes" else pa.string(), f"the e-print stored from the member: {doc}")
       for f, doc in _DOWNLOAD_DOCS.items()]
    + [("crawled_at", TIMESTAMP, "when the e-print was stored")])

# The bulk route's pick of papers (`bulk/selection.parquet`): what each tar's worker fetches.
TAR_SELECTION_SCHEMA = _schema(
    [("tar", pa.string(), "the source tar's name (arXiv's bulk listing)"),
     ("arxiv_id", pa.string(), "a paper picked from that tar"),
     ("version_numbers", pa.list_(pa.int32()), "the paper's versions, oldest first"),
     ("version_dates", pa.list_(TIMESTAMP), "the date of each of those versions")])


# --- licences: the OAI-PMH harvest (python -m pipeline.licenses) ---------------------------------

LICENSE_SCHEMA = _schema(
    [("arxiv_id", pa.string(), "arXiv id without version"),
     ("license", pa.string(), "licence URL ('' when the record has none)"),
     ("datestamp", pa.string(), "the OAI record's datestamp (YYYY-MM-DD): a newer one replaces an older"),
     ("created", pa.string(), "when version 1 was submitted (YYYY-MM-DD)"),
     ("updated", pa.string(), "when the latest version was submitted (null in older tables)"),
     ("categories", pa.string(), "space-separated arXiv categories (null in older tables)"),
     ("title", pa.string(), "title (null in older tables)"),
     ("authors", pa.list_(pa.string()), "author names in order (null in older tables)"),
     ("abstract", pa.string(), "abstract (null in older tables)"),
     ("comments", pa.string(), "the authors' comment (null in older tables)"),
     ("journal_ref", pa.string(), "journal reference (null in older tables)"),
     ("doi", pa.string(), "DOI (null in older tables)")])


# --- figures: one record per figure file (python -m pipeline.extract, pipeline.rebuild) -----------

FIGURE_SCHEMA = _schema([
    ("paper_id", pa.string(), "arXiv id without version"),
    ("img_name", pa.string(), "CVF figure name (path in the e-print, / -> _); '' for a paper-level record "
                              "(no e-print, unreadable archive, no figure)"),
    ("source_path", pa.string(), "the file's path in the e-print (PDF fallback: the page region's name)"),
    ("source_kind", pa.string(), "eprint (a file of the source) or pdf (a region of the paper PDF)"),
    ("format", pa.string(), "the file's format: pdf, png, eps, ps, jpg, ..."),
    ("image_path", pa.string(), "the rendered PNG, relative to the data root ('' when none)"),
    ("width", pa.int32(), "PNG width in pixels"),
    ("height", pa.int32(), "PNG height in pixels"),
    ("sha256", pa.string(), "sha256 of the PNG"),
    ("phash", pa.string(), "64-bit perceptual hash of the PNG, hex"),
    ("bytes", pa.int64(), "size of the source file in the e-print"),
    ("status", pa.string(), "ok, filtered (official name filter), skipped, or error"),
    ("error", pa.string(), "why the figure has no PNG ('' when it has one)"),
    ("included", pa.bool_(), "whether the LaTeX includes the file (pipeline.latex resolves every graphic)"),
    ("name_filter", pa.bool_(), "whether the official name filter ('arch', 'pipeline') drops the name"),
    ("dup_of", pa.string(), "paper_id/img_name of the first figure with the same PNG bytes ('' if none)"),
    ("near_dup_of", pa.string(), "paper_id/img_name of the first figure whose phash is within a few bits"),
    ("page_count", pa.int32(), "pages of a PDF figure file"),
    ("mediabox", pa.list_(pa.float64()), "a PDF figure's MediaBox (points)"),
    ("cropbox", pa.list_(pa.float64()), "a PDF figure's CropBox (points)"),
    ("page", pa.int32(), "PDF fallback only: the 0-based page of the paper PDF"),
    ("bbox", pa.list_(pa.float64()), "PDF fallback only: the region of that page (PDF points, x0 y0 x1 y1)"),
    ("caption", pa.string(), "the caption as text (PDF fallback: the caption it anchored on)"),
    ("caption_latex", pa.string(), "the caption as written in the LaTeX"),
    ("subcaption", pa.string(), "the graphic's own sub-caption as text"),
    ("figure_label", pa.string(), "the float's \\label (PDF fallback: 'Figure N')"),
    ("n_panels", pa.int32(), "graphics in the float"),
    ("panel_index", pa.int32(), "this graphic's place among them, from 0"),
    ("caption_error", pa.string(), "why the caption is empty ('' when there is one)"),
    ("render", pa.string(), "how the PNG was made: crop, media, official, official-poppler, pdf-region "
                            "(null in records written before the column)"),
    # Provenance: which download the pixels came from. A paper whose crawl record names another
    # version or e-print is extracted again (null: records written before these columns).
    ("version", pa.int32(), "the arXiv version of the e-print the figure was read from"),
    ("eprint_sha256", pa.string(), "sha256 of that e-print (the crawl record's; '' when the paper had none)"),
])


# --- labels and scores (python -m pipeline.labels, labeling/, python -m pipeline.classify) -------

# The classifier's training labels, gathered from every label source (`pipeline.labels`).
LABEL_SCHEMA = _schema([
    ("paper_id", pa.string(), "arXiv id without version"),
    ("img_name", pa.string(), "CVF figure name"),
    ("label", pa.int8(), "1: a grid with at least one natural image; 0: not"),
    ("source", pa.string(), "where the label comes from: label-studio, replay-truth, cvf-index"),
])

# Label Studio's answers as pulled (`labels/labels.parquet`; every edit in `labels/history.parquet`).
ANNOTATION_SCHEMA = _schema([
    ("paper_id", pa.string(), "arXiv id without version"),
    ("img_name", pa.string(), "CVF figure name"),
    ("sha256", pa.string(), "sha256 of the PNG the annotator saw"),
    ("label", pa.int8(), "1 grid-like with a natural image, 0 not, null unsure"),
    ("choice", pa.string(), "positive, negative or unsure"),
    ("annotator", pa.string(), "who answered"),
    ("created_at", TIMESTAMP, "when the answer was first given"),
    ("lead_time", pa.float64(), "seconds the annotator spent"),
    ("task_id", pa.int64(), "Label Studio task id"),
    ("project_id", pa.int64(), "Label Studio project id"),
    ("prediction_score", pa.float64(), "the classifier's p(positive) shown, null if none"),
    ("agreed_with_prediction", pa.bool_(), "whether the answer agreed with it (null: none shown, or unsure)"),
    ("round", pa.int32(), "labeling round the task was sampled in"),
    ("rule", pa.string(), "the sampling rule that picked the task"),
    ("source", pa.string(), "label-studio (a person) or replay-truth (simulated from the replay)"),
    ("annotation_id", pa.int64(), "Label Studio annotation id"),
    ("updated_at", TIMESTAMP, "when the answer was last edited"),
])

SCORE_SCHEMA = _schema([
    ("paper_id", pa.string(), "arXiv id without version"),
    ("img_name", pa.string(), "CVF figure name"),
    ("sha256", pa.string(), "sha256 of the PNG scored (a figure re-extracted since is a stale score)"),
    ("score", pa.float64(), "calibrated probability of positive; null when the image failed"),
    ("model_version", pa.string(), "the classifier that scored it"),
    ("status", pa.string(), "ok or error"),
    ("error", pa.string(), "why scoring failed ('' when it did not)"),
])


# --- selection and manifests (python -m pipeline.filter, python -m pipeline.publish) -------------

_MANIFEST_COLUMNS = [
    ("paper_id", pa.string(), "arXiv id, no version"),
    ("img_name", pa.string(), "CVF figure name (path in the e-print, / -> _)"),
    ("split", pa.string(), "train or val: a hash of paper_id and seed"),
    ("sha256", pa.string(), "sha256 of the rendered PNG"),
    ("width", pa.int64(), "PNG width in pixels"),
    ("height", pa.int64(), "PNG height in pixels"),
    ("score", pa.float64(), "classifier's calibrated probability of a grid with a natural image"),
    ("version", pa.int64(), "arXiv version the figure was extracted from"),
    ("license", pa.string(), "the paper's licence URL"),
    ("source_url", pa.string(), "the e-print (or PDF) the figure's pixels came from, with its version"),
    ("crawl_date", pa.string(), "date of the crawl (YYYY-MM-DD)"),
    ("year", pa.int64(), "year the paper was first published"),
    ("image_path", pa.string(), "PNG path under the image folder"),
    ("render", pa.string(), "how the PNG was made: crop or media (PDF page box, rendered straight to size), "
                            "official (the official downloader's settings), official-poppler (the same through "
                            "pdftoppm), pdf-region (cut from the paper PDF); empty if not recorded. "
                            "`pipeline.rebuild` follows it"),
    ("phash", pa.string(), "64-bit perceptual hash of the PNG (hex, imagehash.phash): `pipeline.verify` accepts "
                           "a copy whose pixels differ slightly (another renderer version) when it is within a "
                           "few bits"),
    ("page", pa.int64(), "pdf-region figures only (else null): the 0-based page of the paper PDF the figure was "
                         "cut from"),
    ("bbox", pa.string(), "pdf-region figures only (else empty): the region cut from `page`, \"x0,y0,x1,y1\" in "
                          "PDF points (top-left origin) as exact decimals; `pipeline.rebuild` renders it again to "
                          "the same sha256"),
    ("caption", pa.string(), "the figure's caption as text (the long \\caption of its float in the LaTeX, inline "
                             "math kept as $...$; for pdf-region figures the caption the PDF figure finder anchored "
                             "on, without its 'Figure N' label); empty when none was found"),
    ("caption_latex", pa.string(), "the same caption as LaTeX, as written in the source (comments dropped, macros "
                                   "not expanded); empty for pdf-region figures"),
    ("subcaption", pa.string(), "the figure file's own sub-caption (subfigure, subfloat, \\subcaptionbox, ...) as "
                                "text; empty when it has none"),
    ("figure_label", pa.string(), "the \\label of the figure's float (LaTeX), or 'Figure N' / 'Table N' as printed "
                                  "(pdf-region figures); empty when none"),
    ("n_panels", pa.int64(), "how many graphics the figure's float includes (null when the file sits in no float "
                             "or for pdf-region figures)"),
    ("panel_index", pa.int64(), "this file's place among the float's graphics, from 0 (null like n_panels)"),
]
# One published figure (`manifests/<name>/{train,val}.parquet`, and .jsonl the same rows).
MANIFEST_SCHEMA = _schema(_MANIFEST_COLUMNS)

# The filter's output (`selection/selection.parquet`): the manifest's columns before the split
# files, plus what the filter's report reads.
SELECTION_SCHEMA = _schema(
    _MANIFEST_COLUMNS[:7]
    + [("model_version", pa.string(), "the classifier whose score kept the figure")]
    + _MANIFEST_COLUMNS[7:13]
    + [("near_dup_of", pa.string(), "paper_id/img_name of a kept figure this one nearly duplicates ('' if none)")]
    + _MANIFEST_COLUMNS[13:])


# --- classifier training: out-of-fold predictions (classifier/<version>/cv_predictions.parquet) -

CV_PREDICTION_SCHEMA = _schema([
    ("paper_id", pa.string(), "arXiv id of the labelled figure's paper"),
    ("img_name", pa.string(), "CVF name of the figure"),
    ("image_path", pa.string(), "its PNG, relative to the data root"),
    ("label", pa.int8(), "1 kept (grid with a natural image), 0 not"),
    ("source", pa.string(), "where the label came from: label-studio, cvf-index, replay-truth"),
    ("prob", pa.float64(), "out-of-fold calibrated probability: from a model that never saw the paper"),
    ("outcome", pa.string(), "at the card's threshold: keep, drop, false keep or false drop"),
])


# --- contamination: figures that show an evaluation image (python -m pipeline.contamination) -----

CONTAMINATION_SCHEMA = _schema([
    ("paper_id", pa.string(), "arXiv id of the paper whose figure shows the image"),
    ("img_name", pa.string(), "CVF name of that figure (as in figures/<shard>.parquet)"),
    ("eval_image", pa.string(), "the evaluation image, its path relative to the folder given"),
    ("panel_bbox", pa.list_(pa.int32()), "where it is in the figure PNG: x0, y0, x1, y1 in pixels (the whole "
                                         "figure when no panel matched alone)"),
    ("distance", pa.int32(), "bits between the panel's hash and the nearest hash of the image (0-64)"),
    ("kind", pa.string(), "exact (the whole image, same pixels up to resizing), near (cropped, recoloured, drawn "
                          "on, recompressed) or flipped (mirrored left-right)"),
    ("score", pa.float32(), "verification: robust correlation of the aligned grey thumbnails (1: same)"),
    ("detail", pa.float32(), "verification: robust correlation of their high-pass detail (1: same)"),
    ("image_path", pa.string(), "the figure PNG, relative to the data root"),
])


# Every table of the contract, in pipeline order: (schema, name, where it is written).
TABLES = [
    (PAPER_SCHEMA, "papers", "`papers/<YYYY-MM>.parquet`: one record per paper (crawl and bulk)"),
    (TAR_SCHEMA, "bulk tar records", "`bulk/<tar>.parquet`: the picked papers one source tar held"),
    (TAR_SELECTION_SCHEMA, "bulk pick", "`bulk/selection.parquet`: the papers each tar's worker fetches"),
    (LICENSE_SCHEMA, "licences", "`licenses/<set>.parquet`: one OAI-PMH record per paper"),
    (FIGURE_SCHEMA, "figures", "`figures/<YYYY-MM>.parquet` (and `rebuild/<split>/figures.parquet`): one "
                               "record per figure file"),
    (ANNOTATION_SCHEMA, "annotations", "`labels/labels.parquet` (every edit: `labels/history.parquet`): "
                                       "Label Studio's answers, pulled by `python -m labeling.pull`"),
    (LABEL_SCHEMA, "training labels", "what `pipeline.labels.gather` hands the classifier from every label "
                                      "source (held in memory while training)"),
    (SCORE_SCHEMA, "scores", "`scores/<YYYY-MM>.parquet`: one classifier score per figure"),
    (CV_PREDICTION_SCHEMA, "classifier predictions", "`classifier/<version>/cv_predictions.parquet`: "
                                                     "each labelled figure's out-of-fold score"),
    (SELECTION_SCHEMA, "selection", "`selection/selection.parquet`: the kept figures"),
    (CONTAMINATION_SCHEMA, "contamination", "`contamination/<NAME>.parquet`: one row per figure that shows "
                                            "an image of the evaluation set NAME"),
    (MANIFEST_SCHEMA, "manifest", "`manifests/<name>/{train,val}.parquet`: one published figure per row"),
]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """docs/contract.md: every table, its columns, their types and descriptions."""
    out = ["# The data contract", "",
           "Generated by `python -m pipeline.contract --write` from `pipeline/contract.py`; do not edit by hand.",
           "Columns are only ever added (at the end); files written before a column existed lack it or hold null.",
           ""]
    for schema, name, where in TABLES:
        out += [f"## {name}", "", where, "", "| column | type | description |", "|---|---|---|"]
        out += [f"| `{f.name}` | {f.type} | {_cell(description(f))} |" for f in schema]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.contract",
                                     description="Print the data contract as Markdown (docs/contract.md).")
    parser.add_argument("--write", action="store_true", help=f"write it to {DOC_PATH} instead")
    args = parser.parse_args(argv)
    if args.write:
        DOC_PATH.write_text(markdown())
        print(f"wrote {DOC_PATH}")
    else:
        sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
