"""Publish the selection as dataset manifests: `manifests/<name>/` (or any fsspec URL).

    python -m pipeline.publish --name cvf-2026.11
    python -m pipeline.publish --name cvf-2026.11 --out s3://bucket/manifests --overwrite
    python -m pipeline.publish --name cvf-2026.11 --hf-repo user/cvf     # also push Parquet + card to the hub

Writes, from `selection/` (see pipeline.filter) and the classifier's card:

* `train.parquet`, `val.parquet`, `train.jsonl`, `val.jsonl`: one row per figure;
* `df_train.csv`, `df_val.csv`: the official format (`,paper_id,img_name`, a pandas index);
* `croissant.json`: MLCommons Croissant 1.0 metadata with every file's sha256;
* `README.md` (dataset card, with the hub's header naming the splits for `datasets.load_dataset`)
  and `index.html` (the same, rendered), `year_histogram.png`,
  `contact_train.png`, `contact_val.png` (random samples of each split, drawn only from figures
  whose paper's licence allows redistribution: CC BY, CC BY-SA, CC0; `pipeline.licenses`).

Manifests point to arXiv; they do not redistribute images. `croissant.json` is validated with
mlcroissant (metadata, and the first record read back) before anything is written. A name that exists is never
replaced unless `--overwrite` is given; the new folder is written beside the old and moved in
when complete (locally one rename), and a Hub push is one commit. A write or push that fails is
one `error:` line and exit status 1.
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem
import markdown
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from model import cli
from pipeline import contamination, store
from pipeline.config import data_root
from pipeline.contact_sheet import contact_sheet
from pipeline.contract import MANIFEST_SCHEMA, description
from pipeline.latex import PANEL_COLUMNS, TEXT_COLUMNS
from pipeline.licenses import allows_redistribution

SPLITS = ("train", "val")
MANIFEST_COLUMNS = MANIFEST_SCHEMA.names
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

CROISSANT_CONTEXT = {
    "@language": "en", "@vocab": "https://schema.org/", "sc": "https://schema.org/",
    "cr": "http://mlcommons.org/croissant/", "rai": "http://mlcommons.org/croissant/RAI/",
    "dct": "http://purl.org/dc/terms/", "citeAs": "cr:citeAs", "column": "cr:column",
    "conformsTo": "dct:conformsTo", "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"}, "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract", "field": "cr:field", "fileProperty": "cr:fileProperty", "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet", "format": "cr:format", "includes": "cr:includes", "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath", "key": "cr:key", "md5": "cr:md5", "parentField": "cr:parentField", "path": "cr:path",
    "recordSet": "cr:recordSet", "references": "cr:references", "regex": "cr:regex", "repeated": "cr:repeated",
    "replace": "cr:replace", "samplingRate": "cr:samplingRate", "equivalentProperty": "cr:equivalentProperty",
    "separator": "cr:separator", "source": "cr:source", "subField": "cr:subField",
    "transform": "cr:transform",
}
_FIELD_TYPES = {"paper_id": "sc:Text", "img_name": "sc:Text", "split": "sc:Text", "sha256": "sc:Text",
                "width": "sc:Integer", "height": "sc:Integer", "score": "sc:Float", "version": "sc:Integer",
                "license": "sc:URL", "source_url": "sc:URL", "crawl_date": "sc:Date", "year": "sc:Integer",
                "image_path": "sc:Text", "render": "sc:Text", "phash": "sc:Text", "page": "sc:Integer",
                "bbox": "sc:Text", "caption": "sc:Text", "caption_latex": "sc:Text", "subcaption": "sc:Text",
                "figure_label": "sc:Text", "n_panels": "sc:Integer", "panel_index": "sc:Integer"}
def manifest_tables(kept: pd.DataFrame) -> dict[str, pa.Table]:
    """split -> the manifest table with stable column types (nullable ints for missing versions)."""
    kept = kept.sort_values(["paper_id", "img_name"], kind="stable")
    schema = MANIFEST_SCHEMA
    out = {}
    for split in SPLITS:
        part = kept[kept["split"] == split][MANIFEST_COLUMNS].copy()
        part["version"] = part["version"].astype("Int64")
        for col in ["page"] + PANEL_COLUMNS:
            part[col] = part[col].astype("Int64")
        part["image_path"] = part["image_path"].str.removeprefix("images/")  # relative to the image folder
        out[split] = pa.Table.from_pandas(part, schema=schema, preserve_index=False)
    return out


def official_csv(table: pa.Table) -> bytes:
    """The official index format, as the authors' pandas wrote it: header `,paper_id,img_name`,
    the row number as an unnamed index, `\n` line ends, names with commas or quotes quoted."""
    return table.select(["paper_id", "img_name"]).to_pandas().to_csv(index=True, lineterminator="\n").encode()


def croissant(name: str, report: dict, card: dict | None, files: dict[str, bytes], created: str) -> dict:
    """Croissant 1.0 metadata: every data file (Parquet, JSONL, CSV) a FileObject with its sha256, one RecordSet."""
    def file_object(fname: str, fmt: str) -> dict:
        return {"@type": "cr:FileObject", "@id": fname, "name": fname, "contentUrl": fname,
                "encodingFormat": fmt, "sha256": store.sha256_bytes(files[fname]), "contentSize": f"{len(files[fname])} B"}

    distribution = [file_object(f"{s}.parquet", "application/x-parquet") for s in SPLITS]
    distribution += [file_object(f"df_{s}.csv", "text/csv") for s in SPLITS]
    distribution += [file_object(f"{s}.jsonl", "application/jsonlines") for s in SPLITS]  # the same rows
    # The record set reads both splits through one FileSet; the FileObjects above carry the checksums.
    distribution.append({"@type": "cr:FileSet", "@id": "parquet-files", "name": "parquet-files",
                         "description": "train.parquet and val.parquet (column `split`)",
                         "encodingFormat": "application/x-parquet", "includes": "*.parquet"})
    fields = [{"@type": "cr:Field", "@id": f"figures/{c}", "name": c, "description": description(MANIFEST_SCHEMA.field(c)),
               "dataType": _FIELD_TYPES[c], "source": {"fileSet": {"@id": "parquet-files"}, "extract": {"column": c}}}
              for c in MANIFEST_COLUMNS]
    metrics = (card or {}).get("cv", {}).get("at_threshold", {})
    return {
        "@context": CROISSANT_CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": "http://mlcommons.org/croissant/1.0",
        "name": name,
        "description": (f"Computer Vision Figures: {report['kept']} figures from arXiv cs.CV papers that are grids "
                        f"with at least one natural image (classifier score >= {report['threshold']:.3f}"
                        + (f", ROC-AUC {metrics['roc_auc']:.3f}" if metrics else "") + "), split 90/10 by paper. "
                        "Manifests point to arXiv; images are not redistributed."),
        "url": "https://arxiv.org/list/cs.CV",
        "license": "https://arxiv.org/help/license",
        "creator": {"@type": "sc:Organization", "name": "cvf"},
        "datePublished": created[:10],
        "version": "1.0.0",
        "citeAs": "Bar, Gandelsman, Darrell, Globerson, Efros. Visual Prompting via Image Inpainting. NeurIPS 2022.",
        "distribution": distribution,
        "recordSet": [{"@type": "cr:RecordSet", "@id": "figures", "name": "figures",
                       "description": "one figure per record, both splits (a figure is a paper id and a file name)",
                       "key": [{"@id": "figures/paper_id"}, {"@id": "figures/img_name"}], "field": fields}],
    }


# The Hugging Face hub's card header: which file is which split for `datasets.load_dataset(<folder or repo>)`
# (the JSONL and CSV beside them would otherwise be read as data too), and that the licence is per paper.
HUB_FRONT_MATTER = """---
pretty_name: "{name}: Computer Vision Figures"
license: other
license_name: per-paper-arxiv-licences
configs:
- config_name: default
  data_files:
  - split: train
    path: train.parquet
  - split: validation
    path: val.parquet
---"""


HUB_FILES = ["train.parquet", "val.parquet", "README.md", "croissant.json", "year_histogram.png",
             "contact_train.png", "contact_val.png", contamination.CONTACT_SHEET]


def year_histogram(report: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    years = sorted(report["per_year"])
    train = [report["per_year"][y]["train"] for y in years]
    val = [report["per_year"][y]["val"] for y in years]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar([str(y) for y in years], train, label="train")
    ax.bar([str(y) for y in years], val, bottom=train, label="val")
    ax.set(xlabel="year published", ylabel="figures", title="figures per year")
    pad = max(0.0, (5 - len(years)) / 2)  # room for 5 bars at least: one year is no wall of blue
    ax.set_xlim(-0.5 - pad, len(years) - 0.5 + pad)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # figures are counted
    if len(years) > 8:  # 2010..2022 side by side overlap
        ax.tick_params(axis="x", labelrotation=45)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)  # beside the bars, never on them
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def caption_statistics(tables: dict[str, pa.Table], examples: int = 3) -> dict:
    """Share of figures with a caption, sub-caption and label, caption lengths (words), a few examples."""
    rows = [r for s in SPLITS for r in tables[s].select(["paper_id", "img_name", "caption", "subcaption",
                                                             "figure_label"]).to_pylist()]
    words = np.array([len((r["caption"] or "").split()) for r in rows if r["caption"]], dtype=int)
    share = {c: (sum(bool(r[c]) for r in rows) / len(rows) if rows else 0.0)
             for c in ("caption", "subcaption", "figure_label")}
    bins = [1, 11, 26, 51, 101, 201]
    counts = [int(((words >= lo) & (words < hi)).sum()) for lo, hi in zip(bins, bins[1:] + [10 ** 9])]
    # examples: spread over the captioned figures, picked by a fixed stride (reproducible)
    captioned = [r for r in rows if r["caption"]]
    step = max(1, len(captioned) // max(1, examples))
    return {"figures": len(rows), "share": share,
            "words": ({"min": int(words.min()), "median": float(np.median(words)), "mean": float(words.mean()),
                       "p90": float(np.percentile(words, 90)), "max": int(words.max())} if len(words) else {}),
            "histogram": {f"{lo}-{hi - 1}" if hi < 10 ** 9 else f"{lo}+": n
                          for lo, hi, n in zip(bins, bins[1:] + [10 ** 9], counts)},
            "examples": captioned[::step][:examples]}


def _caption_section(stats: dict) -> str:
    share = stats["share"]
    if not stats["words"]:
        return (f"None of the {stats['figures']} figures has a caption (records extracted before captions were read, "
                "or papers whose LaTeX puts no figure in a captioned float).")
    w = stats["words"]
    hist = "\n".join(f"| {k} | {v} |" for k, v in stats["histogram"].items())
    examples = "\n".join(
        f"* `{r['paper_id']}/{r['img_name']}`"
        + (f" ({r['figure_label']})" if r["figure_label"] else "")
        + f": {r['caption'][:300].replace('|', '/')}{'...' if len(r['caption']) > 300 else ''}"
        + (f" Sub-caption: {r['subcaption'][:120]}" if r["subcaption"] else "") for r in stats["examples"])
    return f"""{share['caption']:.1%} of the figures have a caption, {share['subcaption']:.1%} a sub-caption of
their own and {share['figure_label']:.1%} a label. Caption length in words: median {w['median']:.0f}, mean
{w['mean']:.1f}, 90th percentile {w['p90']:.0f}, range {w['min']}-{w['max']}.

| caption words | figures |
| --- | --- |
{hist}

Examples:

{examples}"""


def dataset_card(name: str, report: dict, card: dict | None, tables: dict[str, pa.Table], sheets: list[str]) -> str:
    split_rows = "\n".join(f"| {s} | {tables[s].num_rows} | {len(set(tables[s]['paper_id'].to_pylist()))} |" for s in SPLITS)
    year_rows = "\n".join(f"| {y} | {r['train']} | {r['val']} | {r['total']} |" for y, r in sorted(report["per_year"].items()))
    if card:
        m = card["cv"]["at_threshold"]
        model = (f"Classifier `{card['version']}` ({'backbone ' + card['backbone']['arch'] if card['backbone'] else 'layout features only'}, "
                 f"head `{card['head']}`), cross-validated by paper over {card['cv']['papers']} papers and "
                 f"{card['labels']['labels']} labels ({', '.join(f'{k}: {v}' for k, v in card['labels']['by_source'].items())}): "
                 f"ROC-AUC {m['roc_auc']:.3f}, PR-AUC {m['pr_auc']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f}, "
                 f"precision {m['precision']:.3f} and recall {m['recall']:.3f} at its threshold {m['threshold']:.3f}.")
    else:
        model = "The classifier's card was not found; its metrics are not reported."
    licences = {}
    for s in SPLITS:
        for lic in tables[s]["license"].to_pylist():
            licences[lic or "not collected"] = licences.get(lic or "not collected", 0) + 1
    licence_rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(licences.items(), key=lambda kv: -kv[1]))
    crawl_from = report.get("crawl_date_from", {})
    crawl_note = ("the day the crawl last wrote the paper's record (the crawl records no crawl time, so the "
                  "modification date of `papers/<month>.parquet` stands in for it)"
                  if "papers file modified" in crawl_from else "the crawl time the paper's record holds")
    if "no paper record" in crawl_from:
        crawl_note += f"; {crawl_from['no paper record']} figures have no paper record and no crawl date"
    crawl_note += "."
    sheet_md = ("Drawn only from figures whose paper's licence allows redistribution (CC BY, CC BY-SA, "
                "CC0, public domain), crediting their arXiv ids; no other figure is shown.\n\n"
                + ("\n\n".join(f"**{s}**\n\n![{s} samples]({f})" for s, f in sheets)
                   or "_(no openly licensed figure was available when published)_"))
    return f"""{HUB_FRONT_MATTER.format(name=name)}

# {name}: Computer Vision Figures

Figures from arXiv cs.CV papers that are grid-like and contain at least one natural image, the
corpus of *Visual Prompting via Image Inpainting* (Bar et al., NeurIPS 2022), rebuilt by `cvf`.

## Counts

| split | figures | papers |
| --- | --- | --- |
{split_rows}

No paper is in both splits: a paper's split is a hash of its id and seed {report['seed']}, so
adding papers never moves one.

| year | train | val | total |
| --- | --- | --- | --- |
{year_rows}

![figures per year](year_histogram.png)

## How it was selected

Kept figures scored at or above **{report['threshold']:.4f}** ({report['kept']} of {report['candidates']} scored
candidates); {report['dropped_exact_duplicates']} exact duplicates were dropped and {report['near_duplicates_kept']}
near duplicates are kept and listed in the selection report.

{model}

## Captions

Each figure carries the words its paper gives it, read from the LaTeX (`pipeline.latex`): `caption` (the long
`\\caption` of its float as text, inline math as `$...$`), `caption_latex` (as written), `subcaption` (its own
sub-figure's caption), `figure_label` (the float's `\\label`), `n_panels` (graphics in the float) and
`panel_index` (this one's place among them, from 0). Figures cut from a PDF carry the caption the figure finder
anchored on and its printed label (`Figure 3`).

{_caption_section(caption_statistics(tables))}

## Files

`train.parquet`, `val.parquet` (and `.jsonl`): `{'`, `'.join(MANIFEST_COLUMNS)}`.
`df_train.csv`, `df_val.csv`: the official index format (`,paper_id,img_name`), read by existing tools unchanged.
`render` says how each PNG was made (`crop`/`media`: our renderer with that PDF box; `official`: the official
downloader's settings; `pdf-region`: a region of the paper PDF), so `python -m pipeline.rebuild --index val.parquet` makes the same pixels again;
`phash` is the PNG's perceptual hash, by which `pipeline.verify` tells a copy whose pixels differ slightly
(another PyMuPDF or Pillow version) from a different picture. Figures of papers without LaTeX source are cut
from the paper PDF (`render` `pdf-region`): `page` (0-based) and `bbox` (`x0,y0,x1,y1`, PDF points) say which
region, and `pipeline.rebuild` cuts it again from the e-print (when it is the PDF) or the paper PDF.
Each row carries its paper's arXiv `version`, licence URL (`license`, when the crawl collected it),
the `source_url` its figure was extracted from, and `crawl_date`, {crawl_note}
`croissant.json`: Croissant 1.0 metadata with checksums. Check a copy with
`python -m pipeline.verify <this folder> --images DIR`; rebuild the images with `python -m pipeline.rebuild`.

```python
import pandas as pd
train = pd.read_parquet("train.parquet")        # the official index format: pd.read_csv("df_train.csv", index_col=0)
import datasets
ds = datasets.load_dataset("<this folder>")                # splits train and validation (the card's header)
ds = datasets.load_dataset("parquet", data_files={{"train": "train.parquet", "validation": "val.parquet"}})
import mlcroissant as mlc
records = mlc.Dataset(jsonld="croissant.json").records("figures")   # both splits, column `split`
```

## Licence

These manifests point to arXiv; they do not redistribute images. Every figure stays under the
licence of its paper (column `license`, when the crawl collected it; otherwise see the paper's
arXiv page): use of the images is up to you and those licences.

| licence | figures |
| --- | --- |
{licence_rows}

## Samples

{sheet_md}
"""


def render_html(name: str, card_md: str) -> str:
    card_md = card_md.split("\n---\n", 1)[1] if card_md.startswith("---\n") else card_md  # not the hub header
    body = markdown.markdown(card_md, extensions=["tables", "fenced_code"])
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{name}</title>\n"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em}img{max-width:100%}</style>"
            f"</head><body>\n{body}\n</body></html>\n")


def build(root: Path, name: str, samples: int = 24, seed: int = 0) -> dict[str, bytes]:
    """Every manifest file's bytes, by file name, from the selection under `root`."""
    sel = root / "selection"
    if not (sel / "report.json").exists():
        raise FileNotFoundError(f"no selection under {sel} (run `python -m pipeline.filter` first)")
    report = json.loads((sel / "report.json").read_text())
    report["per_year"] = {int(k): v for k, v in report["per_year"].items()}
    selection = (sel / "selection.parquet").read_bytes()
    sha256 = store.sha256_bytes(selection)
    if report.get("selection_sha256", sha256) != sha256:  # reports from before it was written match any
        raise ValueError(f"{sel}/report.json is not the report of selection.parquet (a filter run stopped between "
                         "its writes?): run `python -m pipeline.filter` again")
    kept = pq.read_table(io.BytesIO(selection)).to_pandas()
    if kept.empty:
        raise ValueError("the selection is empty: nothing to publish (lower the threshold?)")
    for col in ("render", "phash", "bbox"):  # a selection written before the filter carried them
        if col not in kept:
            kept[col] = ""
    for col in TEXT_COLUMNS:  # ... or the caption columns
        if col not in kept:
            kept[col] = ""
    for col in ["page"] + PANEL_COLUMNS:
        if col not in kept:
            kept[col] = None
    versions = report.get("model_version") or []
    card_path = root / "classifier" / versions[0] / "card.json" if versions else None
    card = json.loads(card_path.read_text()) if card_path and card_path.exists() else None

    files: dict[str, bytes] = {}
    tables = manifest_tables(kept)
    for split, table in tables.items():
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        files[f"{split}.parquet"] = buf.getvalue()
        files[f"{split}.jsonl"] = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in table.to_pylist()).encode()
        files[f"df_{split}.csv"] = official_csv(table)
    files["year_histogram.png"] = year_histogram(report)

    rng = np.random.default_rng(seed)
    sheets = []
    with tempfile.TemporaryDirectory() as tmp:
        for split, table in tables.items():
            rows = table.select(["paper_id", "image_path", "license"]).to_pylist()
            # The manifests redistribute no image; a sample sheet would: only openly licensed ones.
            rows = [r for r in rows if r["image_path"] and allows_redistribution(r["license"])
                    and (root / "images" / r["image_path"]).exists()]
            if not rows:
                continue
            pick = [rows[i] for i in sorted(rng.choice(len(rows), min(samples, len(rows)), replace=False))]
            out = Path(tmp) / f"contact_{split}.png"
            contact_sheet([root / "images" / r["image_path"] for r in pick], out, captions=[r["paper_id"] for r in pick])
            files[out.name] = out.read_bytes()
            sheets.append((split, out.name))

        evaluation_md, evaluation_sheets = contamination.card_section(root, report, Path(tmp), samples)
        for sheet in evaluation_sheets:
            files[sheet.name] = sheet.read_bytes()

    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    card_md = dataset_card(name, report, card, tables, sheets) + f"\n## Evaluation images\n\n{evaluation_md}\n"
    files["README.md"] = card_md.encode()
    files["index.html"] = render_html(name, card_md).encode()
    files["croissant.json"] = (json.dumps(croissant(name, report, card, files, created), indent=2) + "\n").encode()
    return files


def validate_croissant(files: dict[str, bytes]) -> None:
    """ValueError unless mlcroissant accepts the manifest's croissant.json and reads its first
    record back from the files beside it (checked in a scratch folder, before publishing)."""
    import mlcroissant as mlc

    with tempfile.TemporaryDirectory(prefix="cvf-croissant-") as tmp:
        for fname, data in files.items():
            (Path(tmp) / fname).write_bytes(data)
        try:
            dataset = mlc.Dataset(jsonld=str(Path(tmp) / "croissant.json"))
            next(iter(dataset.records(dataset.metadata.record_sets[0].uuid)), None)
        except Exception as e:  # mlc.ValidationError, and what reading the records can raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"croissant.json does not validate with mlcroissant: {first}") from None


class PublishError(Exception):
    """Writing to a remote filesystem or pushing to the Hugging Face Hub failed (nothing of the
    manifest there was replaced by half of a new one)."""


def write(files: dict[str, bytes], target: str, overwrite: bool = False) -> str:
    """Write the files into the folder `target` (a path or fsspec URL); never replace one silently.

    The new folder is written beside the target first and moved in only when every file is
    there; a manifest it replaces is moved aside before and removed after, never deleted
    first. Locally that is two renames; on an object store the moves are copies, but a reader
    still meets either the whole old manifest or the whole new one under `target`."""
    fs, path = fsspec.core.url_to_fs(target)
    if fs.exists(path) and not overwrite:
        raise FileExistsError(f"{target} is already published; pass --overwrite to replace it")
    if isinstance(fs, LocalFileSystem):
        # Local: build a sibling folder, then swap it in with renames; readers never see half.
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        new = Path(tempfile.mkdtemp(prefix=f".{dest.name}.new-", dir=dest.parent))
        for fname, data in files.items():
            (new / fname).write_bytes(data)
        os.chmod(new, 0o755)
        old = dest.parent / f".{dest.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            os.replace(dest, old)
        os.replace(new, dest)
        shutil.rmtree(old, ignore_errors=True)
        return target
    parent, name = path.rstrip("/").rsplit("/", 1) if "/" in path.rstrip("/") else ("", path)
    token = secrets.token_hex(4)
    new, old = f"{parent}/.{name}.new-{token}", f"{parent}/.{name}.old-{token}"
    try:
        fs.pipe({f"{new}/{fname}": data for fname, data in files.items()})
    except Exception as e:  # noqa: BLE001 - each filesystem raises its own kinds
        _remove_quietly(fs, new)
        raise PublishError(f"writing {target} failed, the published one is unchanged: {_why(e)}") from e
    replacing = fs.exists(path)
    try:
        if replacing:
            fs.mv(path, old, recursive=True)
        fs.mv(new, path, recursive=True)
    except Exception as e:  # noqa: BLE001
        if replacing and fs.exists(old) and not fs.exists(path):
            fs.mv(old, path, recursive=True)  # put the published one back
        raise PublishError(f"moving the new manifest into {target} failed: {_why(e)} "
                           f"(the new files are at {new})") from e
    if replacing:
        _remove_quietly(fs, old)
    return target


def _remove_quietly(fs, path: str) -> None:
    try:
        fs.rm(path, recursive=True)
    except Exception:  # noqa: BLE001 - a leftover temporary folder, named by its prefix
        pass


def _why(e: Exception) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def hub_api():
    """The Hugging Face Hub client (its endpoint: $HF_ENDPOINT, else the Hub); PublishError
    when huggingface_hub is not installed."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise PublishError("--hf-repo needs huggingface_hub (pip install huggingface_hub)") from None
    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)


def push_to_hub(files: dict[str, bytes], repo_id: str, name: str) -> str:
    """Push the Parquet files and the card to a Hugging Face dataset repository in one commit
    (readers of the repository see the old manifest or the new one, never a mix); PublishError
    when the Hub refuses or cannot be reached."""
    from huggingface_hub import CommitOperationAdd

    api = hub_api()
    # Same names as in the folder: the card's header maps them to splits; its images come along.
    operations = [CommitOperationAdd(path_in_repo=fname, path_or_fileobj=files[fname])
                  for fname in HUB_FILES if fname in files]
    try:
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
        commit = api.create_commit(repo_id, operations, commit_message=f"Publish {name}", repo_type="dataset")
    except Exception as e:  # noqa: BLE001 - no network, no token, no permission, a Hub error
        raise PublishError(f"pushing to the Hugging Face dataset {repo_id} failed: {_why(e)}") from e
    return f"pushed {len(operations)} files to {commit.commit_url}"


def publish(root=None, name: str = "", out: str = "manifests", overwrite: bool = False, hf_repo: str | None = None,
            samples: int = 24, seed: int = 0) -> tuple[str, dict[str, bytes]]:
    """Build, validate and write the manifest `name` under `out`, then (with `hf_repo`) push it.
    Raises ValueError/FileExistsError for bad input, PublishError when a remote write fails."""
    if not _NAME.match(name or ""):
        raise ValueError(f"bad manifest name {name!r}: use letters, digits, '.', '-', e.g. cvf-2026.11")
    root = data_root(root)
    target = f"{out.rstrip('/')}/{name}"
    fs, path = fsspec.core.url_to_fs(target)
    if fs.exists(path) and not overwrite:  # fail before the work, not after
        raise FileExistsError(f"{target} is already published; pass --overwrite to replace it")
    if hf_repo:
        hub_api()  # installed? (before the work)
    files = build(root, name, samples, seed)
    validate_croissant(files)
    write(files, target, overwrite)
    if hf_repo:
        try:
            print(push_to_hub(files, hf_repo, name))
        except PublishError as e:
            raise PublishError(f"{target} is written, but {e}; run again with --overwrite to retry") from e
    return target, files


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.publish", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--name", required=True, help="manifest name, e.g. cvf-2026.11")
    p.add_argument("--root", type=cli.existing_dir, help="dataset root (default $CVF_DATA or ./data)")
    p.add_argument("--out", default="manifests", type=cli.writable_dir,
                   help="parent folder or fsspec URL (default ./manifests)")
    p.add_argument("--overwrite", action="store_true", help="replace a manifest of the same name")
    p.add_argument("--hf-repo", help="also push the Parquet files and the card to this Hugging Face dataset repo, "
                                     "in one commit (needs network and a token: $HF_TOKEN or `hf auth login`); "
                                     "a failed push is an error (exit 1)")
    p.add_argument("--samples", type=cli.positive_int, default=24, help="figures per contact sheet (default 24)")
    p.add_argument("--seed", type=int, default=0, help="seed of the contact-sheet samples")
    args = p.parse_args(argv)
    try:
        target, files = publish(args.root, args.name, args.out, args.overwrite, args.hf_repo, args.samples, args.seed)
    except (ValueError, OSError) as e:  # OSError: FileNotFoundError, FileExistsError, an unwritable --out
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PublishError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    counts = {s: files[f"{s}.jsonl"].count(b"\n") for s in SPLITS}
    print(f"published {target}: {counts['train']} train + {counts['val']} val figures, {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
