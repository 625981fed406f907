"""Figure extraction: paper records in, figure records and PNGs out, one month shard at a time.

For each paper of `papers/<shard>.parquet` the e-print is read in memory (`pipeline.archive`),
every figure file of the formats CVF's figures came in (`.pdf` and `.png`, EPS/PS as the PDF
pdfLaTeX converts them to; `--formats` opens jpg, gif, bmp, tiff) becomes one record named by the
CVF rule (`pipeline.naming`) and is rendered to `images/<shard>/<paper_id>/<file>.png` in a
sandboxed child process (`pipeline.render.Renderer`). Papers whose e-print is missing or is
only a PDF go through the PDF fallback (`pipeline.pdffigures`). Each record says whether the
LaTeX includes the file, whether the official name filter would drop it, and which earlier
figure it duplicates exactly (same PNG bytes) or nearly (perceptual hash within a few bits).

A paper that cannot be read at all (corrupt archive, bomb, no source) gets one record with an
empty `img_name` and the reason, so every paper of a shard is accounted for.

Resumable: records are checkpointed to `figures/<shard>.parquet` as papers finish; a rerun
skips papers already there, and skips the shard once `figures/<shard>_stats.json` exists. A
paper whose download the crawl still has `pending` is not extracted, and keeps the shard open
(no stats file) until a rerun after the crawl settles it.

Every record names the download it was read from (`version`, `eprint_sha256`, as the paper's
crawl record had them). When the crawl has since fetched another e-print of a paper (a new
version), a rerun reopens the shard and extracts that paper again: its old records are
replaced and the PNGs of the old version that the new one does not make are deleted.

    python -m pipeline.extract --shards 2020-02 2022-02
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from model import cli
from pipeline import config, store
from pipeline.contract import FIGURE_SCHEMA
from pipeline.archive import ArchiveError, Limits, read_eprint
from pipeline.latex import figure_texts
from pipeline.latex_source import decode_tex
from pipeline.near_duplicates import NEAR_DUP_BITS, NEAR_DUP_BUCKET_CAP, nearest_earlier, png_phash
from pipeline.naming import (ALL_FORMATS, CVF_FORMATS, cvf_name, figure_format, is_candidate,
                             official_name_filter, output_name, parse_formats)
from pipeline.render import OFFICIAL, Renderer, RenderOptions
from pipeline.shards import check_shard_files



# The render settings a figure record can name, so a rebuild can make the same pixels again.
# Rasters follow the same names: `official` converts them as the official tool did.
RENDER_SETTINGS = {
    "crop": RenderOptions(box="crop"),           # ours (default): the CropBox, straight to size
    "media": RenderOptions(box="media"),         # ours with the MediaBox (`--box media`)
    "official": OFFICIAL,                        # the official downloader's settings (PyMuPDF)
    "official-poppler": dataclasses.replace(OFFICIAL, poppler=True),  # ... through pdftoppm
}
PDF_REGION = "pdf-region"  # a page region of the paper PDF: not reproducible from the e-print


def render_setting(options: RenderOptions) -> str | None:
    """The RENDER_SETTINGS name of `options` (the time limit aside), None if it has none."""
    options = dataclasses.replace(options, timeout_s=RenderOptions.timeout_s)
    return next((name for name, known in RENDER_SETTINGS.items() if known == options), None)


def figure_row(paper_id: str, **fields) -> dict:
    """A figure record with every column of the contract present."""
    row = {name: None for name in FIGURE_SCHEMA.names}
    row.update(paper_id=paper_id, img_name="", source_path="", source_kind="eprint",
               format="", image_path="", status="ok", error="", included=False,
               name_filter=False, dup_of="", near_dup_of="")
    row.update(fields)
    return row


# --- one paper ----------------------------------------------------------------------------------

# LaTeX sources that may include graphics (Inkscape's `\\import`ed .pdf_tex, TikZ/PGF files too).
TEX_SUFFIXES = (".tex", ".pdf_tex", ".eps_tex", ".tikz", ".pgf")


def _is_tex(path: str) -> bool:
    return path.lower().endswith(TEX_SUFFIXES)


class IsPaperPDF(Exception):
    """The e-print is the paper's PDF, not a source tree."""


def extract_eprint(paper_id: str, eprint: Path, image_dir: Path, root: Path,
                   renderer: Renderer, *, apply_name_filter: bool = True,
                   only: set[str] | None = None, limits: Limits = Limits(),
                   formats: tuple[str, ...] = CVF_FORMATS) -> list[dict]:
    """Figure records of one e-print; PNGs go to `image_dir`. `only`: render just these names.
    `formats`: which figure files are candidates (`pipeline.naming.is_candidate`).

    Raises ArchiveError only before any member is read (empty, zip, unknown blob); a PDF
    e-print raises `IsPaperPDF` for the caller to route to the PDF fallback."""
    kind, members = read_eprint(eprint, lambda p: _is_tex(p) or is_candidate(p, formats), limits)
    if kind == "pdf":
        raise IsPaperPDF(next(members).data)
    rows: dict[str, dict] = {}  # by img_name
    tex: dict[str, str] = {}
    figure_files = 0  # every figure file, listed in `only` or not
    try:
        for member in members:
            if _is_tex(member.path) and member.data is not None:
                tex[member.path] = decode_tex(member.data)
                continue
            fmt = figure_format(member.path)
            if fmt is None or not is_candidate(member.path, formats):
                continue
            figure_files += 1
            name = cvf_name(member.path)
            if only is not None and name not in only:
                continue
            # An EPS and pdfLaTeX's conversion of it beside it are one CVF image: the archive's
            # PDF is preferred, the EPS is the fallback when the PDF does not render.
            earlier = rows.get(name)
            if earlier is not None and earlier["source_path"] == member.path:
                # The same member path twice (legal in a tar): extracting the tar leaves the last
                # copy on disk, so that one is the figure; the earlier copy is recorded, without an image.
                rows[f"{name}\0{member.path}\0{len(rows)}"] = duplicate_member_row(earlier, image_dir)
                earlier = None
            if earlier is not None:
                if {fmt, earlier["format"]} not in ({"pdf", "eps"}, {"pdf", "ps"}):
                    rows[f"{name}\0{member.path}"] = figure_row(
                        paper_id, img_name=name, source_path=member.path, format=fmt,
                        status="skipped", error=f"same CVF name as {earlier['source_path']!r}")
                    continue
                if fmt != "pdf" and earlier["status"] == "ok":
                    continue
            row = figure_row(paper_id, img_name=name, source_path=member.path, format=fmt,
                             bytes=member.size, name_filter=official_name_filter(name))
            if member.error:
                row.update(status="error", error=member.error)
            elif row["name_filter"] and apply_name_filter:
                row.update(status="filtered", error="official name filter (arch/pipeline)")
            else:
                out = image_dir / output_name(paper_id, name)
                result = renderer.render(member.data, fmt, out)
                row.update(result)
                row["bytes"] = result.get("bytes", member.size)
                if row["status"] == "ok":
                    row["image_path"] = out.relative_to(root).as_posix()
                    row["render"] = render_setting(renderer.options)
                elif earlier is not None and earlier["status"] == "ok":
                    continue  # the EPS rendered; its broken converted PDF does not replace it
            rows[name] = row
    except ArchiveError as e:
        rows["\0archive"] = figure_row(paper_id, status="error", error=str(e))
    if not rows:
        rows["\0none"] = figure_row(paper_id, status="skipped", error=(
            f"figure files present ({figure_files}) but not the listed "
            f"{'one' if only is not None and len(only) == 1 else 'ones'} ({kind})"
            if figure_files else f"no figure files in the e-print ({kind})"))
    add_figure_texts(list(rows.values()), tex)
    return list(rows.values())


def duplicate_member_row(earlier: dict, image_dir: Path) -> dict:
    """The record of an archive member that a later member of the same path replaces: status
    `duplicate`, no image (its PNG, if it rendered, is removed: the later copy's goes there)."""
    if earlier["status"] == "ok":
        (image_dir / output_name(earlier["paper_id"], earlier["img_name"])).unlink(missing_ok=True)
    return figure_row(earlier["paper_id"], img_name=earlier["img_name"], source_path=earlier["source_path"],
                      format=earlier["format"], bytes=earlier["bytes"], name_filter=earlier["name_filter"],
                      status="duplicate", error="the archive holds this path again later; tar extraction "
                                                "keeps the last copy, which is the figure")


def add_figure_texts(rows: list[dict], tex: dict[str, str]) -> None:
    """Fill the caption columns and `included` of an e-print's figure records from its LaTeX
    `tex`: a file is included when a graphic of the LaTeX, as `pipeline.latex` reads it
    (comments, `\\iffalse`, macros and `\\input` resolved), names it."""
    paths = sorted({r["source_path"] for r in rows if r["source_path"]})
    texts = figure_texts(tex, paths)
    for row in rows:
        if row["source_path"] in texts:
            text = texts[row["source_path"]]
            row.update(text.columns(), included=text.included)


def extract_pdf(paper_id: str, pdf: Path, image_dir: Path, root: Path,
                renderer: Renderer) -> list[dict]:
    """Figure records from the paper's PDF, through the PDF fallback (`pipeline.pdffigures`),
    run in the renderer's child: a stranger's PDF is laid out and rasterised under its memory
    cap and time limit, never in this process."""
    rows = []
    found = renderer.pdf_figures(pdf, image_dir)
    if not found:
        return [figure_row(paper_id, source_kind="pdf", status="skipped",
                           error="PDF fallback: no captioned figures found")]
    from pipeline.pdffigures import caption_parts

    for fig in found:
        label, caption = caption_parts(fig.get("caption") or "")
        row = figure_row(paper_id, source_kind="pdf", format="png",
                         img_name=fig.get("img_name", ""), source_path=fig.get("source_path", ""),
                         status=fig.get("status", "ok"), error=fig.get("error", "") or "",
                         width=fig.get("width"), height=fig.get("height"), page=fig.get("page"),
                         bbox=list(fig["bbox"]) if fig.get("bbox") is not None else None,
                         caption=caption, figure_label=label,
                         caption_error="" if caption else "PDF fallback: no caption text")
        png = fig.get("png_path")
        if row["status"] == "ok" and png and Path(png).exists():
            row.update(_png_facts(Path(png)), image_path=Path(png).resolve().relative_to(root)
                       .as_posix(), render=PDF_REGION)
        rows.append(row)
    return rows


def _png_facts(path: Path) -> dict:
    return {"sha256": store.sha256_file(path), "bytes": path.stat().st_size,
            "phash": png_phash(path)}


def extract_paper(paper: dict, shard: str, root: Path, renderer: Renderer,
                  apply_name_filter: bool = True, limits: Limits = Limits(),
                  formats: tuple[str, ...] = CVF_FORMATS) -> list[dict]:
    """Figure records of one paper record (from its e-print, else from its PDF), each naming
    the paper's version and e-print sha256 it was read from."""
    rows = _extract_paper(paper, shard, root, renderer, apply_name_filter, limits, formats)
    for row in rows:
        row.update(provenance(paper))
    remove_orphan_images(paper_image_dir(root, shard, paper["arxiv_id"]), rows, root)
    return rows


def provenance(paper: dict) -> dict:
    """The figure-record columns naming the download a paper's figures come from."""
    return {"version": paper.get("version"), "eprint_sha256": paper.get("eprint_sha256") or ""}


def paper_image_dir(root: Path, shard: str, paper_id: str) -> Path:
    return root / "images" / shard / paper_id.replace("/", "_")


def remove_orphan_images(image_dir: Path, rows: list[dict], root: Path) -> None:
    """Delete the PNGs in a paper's image folder that none of its figure records names: those
    of an earlier version the paper has no more (a renamed or dropped figure)."""
    if not image_dir.is_dir():
        return
    named = {(root / r["image_path"]).resolve() for r in rows if r["image_path"]}
    for png in image_dir.iterdir():
        if png.is_file() and png.suffix == ".png" and png.resolve() not in named:
            png.unlink()


PROVENANCE_PAPER_COLUMNS = ["arxiv_id", "version", "eprint_sha256"]
PROVENANCE_FIGURE_COLUMNS = ["paper_id", "version", "eprint_sha256"]


def _columns(path: Path, columns: list[str]) -> list[dict]:
    """Those of `columns` a Parquet file has, as rows ([] when there is no file)."""
    if not path.exists():
        return []
    have = pq.read_schema(path).names
    return pq.read_table(path, columns=[c for c in columns if c in have]).to_pylist()


def stale_papers(papers: list[dict], figure_rows: list[dict]) -> set[str]:
    """Papers whose figure records were read from another download than the one their crawl
    record names now (a newer version, or the same version fetched again with other bytes).
    Records written before figures carried a version are not judged (`--force` redoes them)."""
    now = {p["arxiv_id"]: (p.get("version"), p.get("eprint_sha256") or "") for p in papers}
    return {r["paper_id"] for r in figure_rows
            if r.get("version") is not None and r["paper_id"] in now
            and (r["version"], r.get("eprint_sha256") or "") != now[r["paper_id"]]}


def _extract_paper(paper: dict, shard: str, root: Path, renderer: Renderer,
                   apply_name_filter: bool, limits: Limits, formats: tuple[str, ...]) -> list[dict]:
    paper_id = paper["arxiv_id"]
    image_dir = paper_image_dir(root, shard, paper_id)
    eprint = root / paper["eprint_path"] if paper.get("eprint_path") else None
    pdf = root / paper["pdf_path"] if paper.get("pdf_path") else None
    if eprint is not None and paper.get("eprint_status", "ok") == "ok" and eprint.exists():
        try:
            return extract_eprint(paper_id, eprint, image_dir, root, renderer,
                                  apply_name_filter=apply_name_filter, limits=limits,
                                  formats=formats)
        except IsPaperPDF as e:
            with open(eprint, "rb") as f:
                if f.read(5) == b"%PDF-":
                    return extract_pdf(paper_id, eprint, image_dir, root, renderer)
            with tempfile.TemporaryDirectory(prefix="cvf-pdf-") as tmp:  # a gzip'd PDF
                pdf_copy = Path(tmp) / f"{paper_id.replace('/', '_')}.pdf"
                pdf_copy.write_bytes(e.args[0])
                return extract_pdf(paper_id, pdf_copy, image_dir, root, renderer)
        except ArchiveError as e:
            if pdf is not None and pdf.exists():
                return [figure_row(paper_id, status="error", error=f"e-print: {e}")] + \
                    extract_pdf(paper_id, pdf, image_dir, root, renderer)
            return [figure_row(paper_id, status="error", error=f"e-print: {e}")]
    if pdf is not None and paper.get("pdf_status", "ok") == "ok" and pdf.exists():
        return extract_pdf(paper_id, pdf, image_dir, root, renderer)
    return [figure_row(paper_id, status="skipped", error=(
        f"no e-print or PDF on disk (eprint_status={paper.get('eprint_status')!r}, "
        f"pdf_status={paper.get('pdf_status')!r})"))]


# --- duplicates ---------------------------------------------------------------------------------

def mark_duplicates(rows: list[dict], near_bits: int = NEAR_DUP_BITS,
                    bucket_cap: int = NEAR_DUP_BUCKET_CAP) -> None:
    """Set `dup_of` (same PNG bytes) and `near_dup_of` (perceptual hashes within `near_bits`)
    on every rendered row, pointing at the first such figure in (paper_id, img_name) order.
    Works within a paper and across papers alike; nothing is dropped. An exact duplicate is
    no near duplicate (and no near-duplicate target). See `nearest_earlier` for the search."""
    rendered = sorted((r for r in rows if r["status"] == "ok" and r["sha256"]),
                      key=lambda r: (r["paper_id"], r["img_name"], r["source_path"]))
    first_by_sha: dict[str, str] = {}
    searched, keys = [], []  # rows in the near search, in order
    for row in rendered:
        key = f"{row['paper_id']}/{row['img_name']}"
        row["dup_of"] = first_by_sha.setdefault(row["sha256"], key)
        row["dup_of"] = "" if row["dup_of"] == key else row["dup_of"]
        row["near_dup_of"] = ""
        if not row["dup_of"] and row["phash"]:
            searched.append(row)
            keys.append(key)
    nearest = nearest_earlier([int(r["phash"], 16) for r in searched], near_bits, bucket_cap)
    for row, j in zip(searched, nearest.tolist()):
        row["near_dup_of"] = keys[j] if j >= 0 else ""


# What duplicate marking reads: the whole corpus is held in memory with these columns only.
DEDUP_COLUMNS = ["paper_id", "img_name", "source_path", "status", "sha256", "phash", "dup_of", "near_dup_of"]


def dedup_corpus(root: str | Path | None = None, near_bits: int = NEAR_DUP_BITS) -> dict:
    """Flag duplicates across every done figure shard of the root (rewrites changed shards).

    Every shard's DEDUP_COLUMNS are held at once (a few hundred bytes a figure); a shard whose
    flags change is then read whole and rewritten, one at a time, with only those two columns new.
    """
    root = config.data_root(root)
    shards = sorted(p.name[: -len("_stats.json")] for p in (root / "figures").glob("*_stats.json"))
    tables = {s: pq.read_table(root / "figures" / f"{s}.parquet", columns=DEDUP_COLUMNS).to_pylist()
              for s in shards}
    before = {s: [(r["dup_of"], r["near_dup_of"]) for r in rows] for s, rows in tables.items()}
    mark_duplicates([r for rows in tables.values() for r in rows], near_bits)
    changed = 0
    for s, rows in tables.items():
        if [(r["dup_of"], r["near_dup_of"]) for r in rows] != before[s]:
            path = root / "figures" / f"{s}.parquet"
            table = pq.read_table(path)
            for field in FIGURE_SCHEMA:  # a shard written before a column existed gets it, null
                if field.name not in table.column_names:
                    table = table.append_column(field, pa.nulls(len(table), field.type))
            table = table.select(FIGURE_SCHEMA.names)
            for col in ("dup_of", "near_dup_of"):
                table = table.set_column(table.schema.get_field_index(col), col,
                                         pa.array([r[col] for r in rows], pa.string()))
            store.atomic_write_parquet(path, table)
            changed += 1
    all_rows = [r for rows in tables.values() for r in rows]
    # "figures" as in the shard stats: a paper-level row (no e-print, no figure) is no figure.
    report = {"shards": len(shards), "figures": sum(bool(r["img_name"]) for r in all_rows),
              "shards_rewritten": changed,
              "exact_duplicates": sum(bool(r["dup_of"]) for r in all_rows),
              "near_duplicates": sum(bool(r["near_dup_of"]) for r in all_rows)}
    store.atomic_write_json(root / "figures" / "duplicates.json", report)
    return report


# --- one shard ----------------------------------------------------------------------------------

def extract_shard(shard: str, root: str | Path | None = None, *,
                  options: RenderOptions = RenderOptions(), apply_name_filter: bool = True,
                  limits: Limits = Limits(), checkpoint_every: int = 20,
                  progress: bool = True, force: bool = False,
                  formats: tuple[str, ...] = CVF_FORMATS) -> dict:
    """Extract every paper of `papers/<shard>.parquet`; returns (and stores) the shard's stats.
    `force` redoes a done shard from scratch (e.g. after the crawl fetched pending e-prints);
    `formats`: the figure file formats taken as candidates (default CVF's: pdf, png, EPS as PDF)."""
    root = config.data_root(root)
    figures_dir = root / "figures"
    out_path = figures_dir / f"{shard}.parquet"
    if force:
        store.stats_path(figures_dir, shard).unlink(missing_ok=True)
        out_path.unlink(missing_ok=True)
    papers_path = root / "papers" / f"{shard}.parquet"
    # A paper the crawl has fetched another e-print of since (a new version) is extracted again;
    # its old records go, and so do the PNGs the new e-print does not make again. A done shard
    # is judged from these few columns, and left alone when nothing in it is stale.
    stale = stale_papers(_columns(papers_path, PROVENANCE_PAPER_COLUMNS),
                         _columns(out_path, PROVENANCE_FIGURE_COLUMNS))
    if store.shard_done(figures_dir, shard):
        if not stale:
            return store.read_stats(figures_dir, shard)
        store.stats_path(figures_dir, shard).unlink()  # open again until the stale papers are redone
    papers = store.read_rows(papers_path)
    rows = store.read_rows(out_path) if out_path.exists() else []  # checkpoint of a past run
    # A paper whose download the crawl will still retry is left for a later run, and the shard
    # stays open (no stats file) until the crawl has settled every paper.
    waiting = {p["arxiv_id"] for p in papers if crawl_pending(p)}
    rows = [r for r in rows if r["paper_id"] not in waiting and r["paper_id"] not in stale]
    done = {r["paper_id"] for r in rows}
    start, resumed = time.monotonic(), len(done)
    todo = [p for p in papers if p["arxiv_id"] not in done and p["arxiv_id"] not in waiting]
    with Renderer(options) as renderer:
        for i, paper in enumerate(tqdm(todo, desc=f"extract {shard}", unit="paper",
                                       disable=not progress), 1):
            rows += extract_paper(paper, shard, root, renderer, apply_name_filter, limits, formats)
            if i % checkpoint_every == 0:
                store.write_rows(out_path, rows, FIGURE_SCHEMA)
        restarts = renderer.restarts
    rows.sort(key=lambda r: (r["paper_id"], r["img_name"], r["source_path"]))
    mark_duplicates(rows)
    store.write_rows(out_path, rows, FIGURE_SCHEMA)
    seconds = time.monotonic() - start
    figures = [r for r in rows if r["img_name"]]
    stats = {
        "shard": shard, "done": not waiting, "papers": len(papers), "papers_resumed": resumed,
        "papers_stale": len(stale),  # extracted again: the crawl holds a newer e-print of them
        "papers_waiting_for_crawl": len(waiting),
        "papers_failed": len({r["paper_id"] for r in rows if not r["img_name"]
                              and r["status"] == "error"}),
        "figures": len(figures), "by_status": dict(Counter(r["status"] for r in figures)),
        "by_format": dict(Counter(r["format"] for r in figures)),
        "with_caption": sum(bool(r["caption"]) for r in figures),
        "exact_duplicates": sum(bool(r["dup_of"]) for r in rows),
        "near_duplicates": sum(bool(r["near_dup_of"]) for r in rows),
        "errors_by_kind": dict(Counter(r["error"].split(":")[0][:60] for r in rows
                                       if r["status"] == "error")),
        "renderer_restarts": restarts, "seconds": round(seconds, 2),
        "options": {"box": options.box, "alpha": options.alpha, "official": options.official,
                    "render": render_setting(options), "name_filter": apply_name_filter,
                    "formats": list(formats)},
    }
    if not waiting:
        store.write_stats(figures_dir, shard, stats)
    return stats


def crawl_pending(paper: dict) -> bool:
    """Whether the crawl has not settled this paper yet (a download it will retry)."""
    return "pending" in (paper.get("eprint_status"), paper.get("pdf_status"))


def render_options(box: str = "crop", official: bool = False,
                   timeout_s: float = 60.0) -> RenderOptions:
    """The CLI's and the flow's rendering choices as RenderOptions (ValueError for a time limit
    that is not above 0: every figure would time out and the shard would be marked done)."""
    if not timeout_s > 0:
        raise ValueError(f"timeout {timeout_s}: give a number of seconds above 0")
    if official:
        return dataclasses.replace(OFFICIAL, timeout_s=timeout_s)
    return RenderOptions(box=box, timeout_s=timeout_s)


def shards_with_papers(root: str | Path | None = None) -> list[str]:
    root = config.data_root(root)
    return sorted(p.stem for p in (root / "papers").glob("*.parquet") if "_" not in p.stem)


def extract_shards(shards: Iterable[str], root=None, **kwargs) -> list[dict]:
    """Extract shards one after another in this process, then flag corpus-wide duplicates.
    A shard that fails (an unreadable papers file, say) gets `{"shard", "failed": why}` in
    place of its stats; the others go on and get their duplicates flagged."""
    stats = []
    for shard in shards:
        try:
            stats.append(extract_shard(shard, root, **kwargs))
        except (OSError, ValueError, pa.ArrowException) as e:
            stats.append({"shard": shard, "failed": f"{type(e).__name__}: {e}"})
    dedup_corpus(root)
    return stats


def write_contact_sheet(root: str | Path | None = None, count: int = 48) -> Path:
    """`figures/contact_sheet.png`: `count` rendered figures of the corpus, picked by hash (a
    fixed, spread-out sample), captioned `paper_id`."""
    from pipeline.contact_sheet import contact_sheet

    root = config.data_root(root)
    rows = [r for p in sorted((root / "figures").glob("*.parquet"))
            for r in store.read_rows(p) if r["status"] == "ok" and r["image_path"]]
    picked = sorted(rows, key=lambda r: r["sha256"])[:count]
    picked.sort(key=lambda r: (r["paper_id"], r["img_name"]))
    return contact_sheet([root / r["image_path"] for r in picked],
                         root / "figures" / "contact_sheet.png",
                         captions=[r["paper_id"] for r in picked])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.extract",
        description="Extract figures from crawled e-prints (papers/<shard>.parquet) into figure "
                    "records (figures/<shard>.parquet) and RGB PNGs (images/<shard>/...), then "
                    "flag exact and near duplicates across the corpus. Done shards are skipped "
                    "(but a paper the crawl has since fetched a new version of is extracted again); "
                    "interrupted ones resume. For many shards in parallel use the Prefect flow "
                    "`python -m flows.extract`.")
    parser.add_argument("--root", type=cli.writable_dir, help="dataset root (default $CVF_DATA or ./data)")
    parser.add_argument("--shards", nargs="*", metavar="YYYY-MM",
                        help="month shards to extract (default: every shard with papers)")
    parser.add_argument("--box", choices=["crop", "media"], default="crop",
                        help="PDF page box to render: crop (what the paper shows, default) or "
                             "media (poppler's default, as the official CVF)")
    parser.add_argument("--official", action="store_true",
                        help="the official CVF pixels: MediaBox, 200 DPI then thumbnail, alpha "
                             "dropped (slower)")
    parser.add_argument("--no-name-filter", action="store_true",
                        help="also render names with 'arch'/'pipeline', which CVF dropped")
    parser.add_argument("--timeout", type=cli.positive_float, default=60.0, help="seconds per figure file (default 60)")
    parser.add_argument("--formats", default=",".join(CVF_FORMATS), metavar="LIST",
                        help="comma-separated figure file formats taken as candidates (default "
                             "pdf,png: what CVF's figures are; EPS/PS count as the PDF they "
                             "become). Others: " + ",".join(f for f in ALL_FORMATS
                                                            if f not in CVF_FORMATS))
    parser.add_argument("--force", action="store_true",
                        help="redo shards that are done (default: skip them)")
    parser.add_argument("--contact-sheet", type=cli.non_negative_int, metavar="N", default=0,
                        help="also write figures/contact_sheet.png of N sampled figures")
    args = parser.parse_args(argv)
    root = config.data_root(args.root)
    try:
        formats = parse_formats(args.formats)
        if not (root / "papers").is_dir():
            raise ValueError(f"no papers/ folder under {root} (run python -m pipeline.crawl, or give --root)")
        check_shard_files(args.shards, root / "papers", "pipeline.crawl")
    except ValueError as e:
        parser.error(str(e))
    options = render_options(args.box, args.official, args.timeout)
    shards = args.shards or shards_with_papers(args.root)
    if not shards:
        parser.error(f"no papers/<shard>.parquet under {root}")
    failed = []
    for stats in extract_shards(shards, args.root, options=options, force=args.force,
                                apply_name_filter=not args.no_name_filter, formats=formats):
        if "failed" in stats:
            failed.append(f"{stats['shard']}: {stats['failed']}")
            continue
        waiting = (f"; left open: {stats['papers_waiting_for_crawl']} papers wait for the crawl"
                   if not stats.get("done", True) else "")
        print(f"{stats['shard']}: {stats['papers']} papers, {stats['figures']} figures "
              f"{stats['by_status']}, {stats['seconds']} s{waiting}")
    if failed:
        print(f"error: {len(failed)} shards failed (the others are done, duplicates flagged): "
              + "; ".join(failed), file=sys.stderr)
        sys.exit(1)
    if args.contact_sheet:
        print(f"contact sheet: {write_contact_sheet(args.root, args.contact_sheet)}")


if __name__ == "__main__":
    main()
