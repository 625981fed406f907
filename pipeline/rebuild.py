"""Rebuild the official Computer Vision Figures images from the published index.

    python -m pipeline.rebuild --index df_val.csv --split val --out cvf

For every paper the index lists, the e-print is fetched through the crawler's downloader
(same politeness budget; a file already on disk is reused, so reruns resume) into
`$CVF_DATA/raw/<shard>/<id>.eprint`, and exactly the listed images are written to
`<out>/<split>/<paper_id>/` under the official downloader's file names (a PNG keeps its name,
a PDF becomes `<img_name>_<paper_id>_0.png`) with the official pixels: the MediaBox at 200 DPI,
Pillow's `thumbnail(1024)`, alpha dropped. `--split` only names the output folder; the index
says which papers (the official tool read the train index even for val; this one does not).

Records (the figure schema of `pipeline.extract`, `image_path` relative to `--out`) and a report
of index duplicates, image duplicates and every listed image that could not be had, with the
reason, go to `$CVF_DATA/rebuild/<split>/`. The index may be the official CSV (`,paper_id,img_name`)
or any CSV/Parquet with `paper_id` and `img_name` columns, such as our own published manifests.

An index with a `render` column (our manifests) says how each image was made, and each is
rendered that way again (`crop`/`media`: our fast path with that PDF box; `official`;
`official-poppler`), so rebuilding from our manifest gives our pixels and `pipeline.verify`
passes. A `pdf-region` figure (PDF fallback of a paper without LaTeX source) whose row gives its
`page` and `bbox` is cut again from the paper PDF as extraction cut it (same function and DPI):
the PDF is the e-print when the e-print is one, else `raw/<shard>/<id>.pdf`, downloaded like the
crawl does (`--pdf-url`) unless the crawl left it there. A `pdf-region` row without page/bbox,
and an empty or unknown value, fall back to the official settings; the report counts them
(`render_fallback`), and the images cut from PDFs (`images_from_pdf`).

Versions: the CVF index names files as they were in early 2022, and papers revised since may
have renamed or dropped figures. By default (`--version cvf`) each paper's version current on
2022-03-01 is fetched first (`/e-print/<id>v<n>` into `raw/<shard>/<id>v<n>.eprint`), then the
others, nearest that date first, until one holds every listed name (checked on the archive's
member names, before any rendering); none does: the one holding most. Version dates come from
`--metadata` (arXiv's metadata snapshot, JSON lines with `versions`) and, for papers it lacks,
from the API (`id_list`, 100 ids a request). `--version latest` fetches `/e-print/<id>` as the
crawl does; `--version YYYY-MM-DD` moves the date. An e-print at hand in `--eprints` named
without a version (`<id>.tar.gz`) is used as it is; `<id>v<n>.tar.gz` there is version n. The
version used is recorded in `figures.parquet`, `missing.csv` and the report (`paper_versions`).
The index is checked before any work (a row without paper_id or img_name is an error naming
its line), and the CLI exits 1 when listed images are missing unless `--allow-missing`.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import shutil
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pymupdf
from tqdm import tqdm

from model import cli
from pipeline import config, store
from pipeline.archive import ArchiveError, read_eprint
from pipeline.extract import (FIGURE_SCHEMA, PDF_REGION, RENDER_SETTINGS, IsPaperPDF,
                              extract_eprint, figure_row, mark_duplicates, png_phash)
from pipeline.naming import ALL_FORMATS, cvf_name, figure_format, output_name
from pipeline.render import Renderer
from pipeline.shards import shard_of_id
from pipeline.versions import VersionDates, api_dates, read_snapshot, try_order

# The rebuild's figure records are extraction's; `version` is the arXiv version the image came
# from (null: the unversioned e-print, `--version latest` or one at hand in --eprints).
REBUILD_SCHEMA = FIGURE_SCHEMA


def index_rows(path: str | Path) -> list[dict]:
    """The index's rows as dicts: `paper_id`, `img_name`, and `render`, `page`, `bbox` where it
    has those columns."""
    path = Path(path)
    if path.suffix == ".parquet":
        schema = pq.read_schema(path)
        expected = {"paper_id": "string", "img_name": "string", "render": "string",
                    "page": "integer", "bbox": "string"}
        for name, kind in expected.items():  # a wrong type is one clear line, not a traceback
            if name not in schema.names:
                continue
            t = schema.field(name).type
            fits = (pa.types.is_integer(t) if kind == "integer" else
                    pa.types.is_string(t) or pa.types.is_large_string(t)) or pa.types.is_null(t)
            if not fits:
                raise ValueError(f"{path}: column {name} is {t}, expected {kind}")
        missing = {"paper_id", "img_name"} - set(schema.names)
        if missing:
            raise ValueError(f"{path}: no {', '.join(sorted(missing))} column "
                             f"(found {schema.names})")
        optional = [c for c in ("render", "page", "bbox") if c in schema.names]
        rows = pq.read_table(path, columns=["paper_id", "img_name"] + optional).to_pylist()
        for i, row in enumerate(rows):
            _check_row(row, f"{path} row {i}")
        return rows
    with open(path, newline="", encoding="utf-8-sig") as f:  # a spreadsheet's BOM is no column
        reader = csv.DictReader(f)
        missing = {"paper_id", "img_name"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: no {', '.join(sorted(missing))} column "
                             f"(found {reader.fieldnames})")
        rows = []
        for row in reader:
            _check_row(row, f"{path} line {reader.line_num}")
            # Ids stay strings: read as numbers, 1001.1000 would become 1001.1.
            rows.append({**row, "paper_id": row["paper_id"].strip()})
        return rows


def _check_row(row: dict, where: str) -> None:
    """A row must name a paper and an image: checked before any work, not after it."""
    for field in ("paper_id", "img_name"):
        if not isinstance(row.get(field), str) or not row[field].strip():
            raise ValueError(f"{where}: no {field} (each row needs paper_id and img_name)")


def read_index(path: str | Path) -> list[tuple[str, str]]:
    """(paper_id, img_name) rows of a CVF index or a manifest, duplicates kept, order kept."""
    return [(r["paper_id"], r["img_name"]) for r in index_rows(path)]


def render_settings(rows: list[dict]) -> dict[tuple[str, str], str | None]:
    """(paper_id, img_name) -> the index rows' `render` value (None when empty); {} when the
    index has no `render` column (the official CSV)."""
    return {(r["paper_id"], r["img_name"]): r["render"] or None for r in rows if "render" in r}


def pdf_regions(rows: list[dict]) -> dict[tuple[str, str], tuple[object, str]]:
    """(paper_id, img_name) -> (page, bbox) as the index rows give them, for the `pdf-region`
    rows that have both (our manifests since they carry them); they are checked when cut."""
    return {(r["paper_id"], r["img_name"]): (r["page"], r["bbox"]) for r in rows
            if r.get("render") == PDF_REGION and r.get("page") not in (None, "") and r.get("bbox")}


def parse_region(page, bbox: str) -> tuple[int, tuple[float, ...]]:
    """An index's page and `"x0,y0,x1,y1"` as numbers; ValueError saying what is wrong."""
    try:
        page, box = int(page), tuple(float(v) for v in bbox.split(","))
    except (TypeError, ValueError):
        raise ValueError(f"bad page/bbox {page!r}/{bbox!r}") from None
    if len(box) != 4 or page < 0 or not (box[0] < box[2] and box[1] < box[3]):
        raise ValueError(f"bad page/bbox {page!r}/{bbox!r}: want a page >= 0 and x0<x1, y0<y1")
    return page, box


def choose_settings(listed: list[tuple[str, str]], renders: dict, default: str
                    ) -> tuple[dict[tuple[str, str], str], Counter]:
    """Each listed image's RENDER_SETTINGS name: the index's, else `default`. The second value
    counts images whose listed setting cannot be reproduced (`pdf-region`, unknown, empty) and
    get `default` instead; images of an index without a `render` column are not counted."""
    chosen, fallback = {}, Counter()
    for key in listed:
        setting = renders.get(key, default)
        if setting not in RENDER_SETTINGS:
            fallback[setting or "unknown"] += 1
            setting = default
        chosen[key] = setting
    return chosen, fallback


def fetch_eprint(paper_id: str, dest: Path, root: Path, fetcher, eprints_dir: Path | None,
                 eprint_url: str | None = None) -> dict:
    """Put the paper's e-print at `dest` (raw/<shard>/<id>.eprint): from `eprints_dir` if it
    holds it (`<id>.tar.gz`, `<id>.eprint` or `<id>`), else through the crawler's downloader
    from `eprint_url` (a template with `{id}`; default $CVF_ARXIV_EPRINT_URL or arXiv's)."""
    from pipeline.fetch import download_file

    if eprints_dir is not None:
        for name in (f"{paper_id}.tar.gz", f"{paper_id}.eprint", paper_id):
            if (eprints_dir / name).is_file():
                if not dest.exists():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(eprints_dir / name, dest.with_suffix(".part"))
                    dest.with_suffix(".part").replace(dest)
                return {"status": "ok", "error": ""}
    url = (eprint_url or config.arxiv_eprint_url()).format(id=paper_id)
    return download_file(fetcher, url, dest, root)


def source_names(eprint: Path) -> set[str]:
    """The CVF names of an e-print's figure files, from the archive's member names alone (no
    member is read); empty for a PDF e-print, and up to the damage for a corrupt archive."""
    names: set[str] = set()
    try:
        kind, members = read_eprint(eprint, lambda path: False)
        if kind != "pdf":
            names.update(cvf_name(m.path) for m in members if figure_format(m.path))
    except ArchiveError:
        pass
    return names


def eprint_at_hand(paper_id: str, eprints_dir: Path | None) -> bool:
    return eprints_dir is not None and any(
        (eprints_dir / n).is_file() for n in (f"{paper_id}.tar.gz", f"{paper_id}.eprint", paper_id))


def find_version(paper_id: str, names: list[str], order: list[int], root: Path, fetcher,
                 eprints_dir: Path | None, eprint_url: str | None
                 ) -> tuple[int | None, Path | None, dict]:
    """The first version in `order` whose e-print holds every listed name, else the one holding
    most (the earlier in `order` on a tie): (version, e-print path, download row). A transient
    failure stops the search there (status `pending`: a rerun retries it)."""
    best, best_score = (None, None, {"status": "missing", "error": "no versions"}), (-1, False)
    for n in order:
        versioned = f"{paper_id}v{n}"
        path = root / "raw" / shard_of_id(paper_id) / f"{versioned}.eprint"
        got = fetch_eprint(versioned, path, root, fetcher, eprints_dir, eprint_url)
        if got["status"] == "pending":
            return n, path, got
        held = len(source_names(path) & set(names)) if got["status"] == "ok" else 0
        if got["status"] == "ok" and held == len(set(names)):
            return n, path, got
        if (held, got["status"] == "ok") > best_score:
            best, best_score = (n, path, got), (held, got["status"] == "ok")
    return best


def gather_version_dates(paper_ids: list[str], metadata: str | Path | None, root: Path, fetcher,
                         cutoff: datetime, api_url: str | None = None
                         ) -> tuple[VersionDates, str]:
    """Version dates of `paper_ids`: from the snapshot, then the API for the rest; and why
    some are missing ('' when none is): an API failure is worth a rerun."""
    from pipeline.arxiv_api import MetadataError
    from pipeline.fetch import TransientError

    dates = read_snapshot(metadata, set(paper_ids)) if metadata else {}
    rest = [p for p in paper_ids if p not in dates]
    if not rest:
        return dates, ""
    try:
        dates.update(api_dates(fetcher, api_url or config.arxiv_api_url(), rest, cutoff))
    except (MetadataError, TransientError) as e:
        return dates, f"version dates pending: API: {e} (rerun to retry)"
    return dates, ""


def paper_pdf(paper_id: str, eprint: Path | None, root: Path, fetcher, pdf_url: str | None
              ) -> tuple[bytes | None, str]:
    """The PDF extraction's fallback cut a paper's regions from, or None and why not: the
    e-print when it is a PDF (gzip'd too), else the crawl's `raw/<shard>/<id>.pdf`, downloaded
    from `pdf_url` (default $CVF_ARXIV_PDF_URL or arXiv's) unless it is already there."""
    from pipeline.fetch import download_file

    if eprint is not None:
        try:
            kind, members = read_eprint(eprint)
            if kind == "pdf":
                return next(members).data, ""
        except ArchiveError:
            pass  # not a readable source archive: extraction used the paper PDF too
    dest = root / "raw" / shard_of_id(paper_id) / f"{paper_id}.pdf"
    got = download_file(fetcher, (pdf_url or config.arxiv_pdf_url()).format(id=paper_id), dest, root)
    if got["status"] != "ok":
        retry = " (rerun to retry)" if got["status"] == "pending" else ""
        return None, f"paper PDF {got['status']}: {got['error']}".rstrip(": ") + retry
    return dest.read_bytes(), ""


def cut_regions(paper_id: str, pdf: bytes, regions: dict[str, tuple], image_dir: Path,
                out: Path) -> list[dict]:
    """Figure records of the named regions ({img_name: (page, bbox)}), each cut from `pdf` into
    `image_dir` exactly as the PDF fallback cut it (`pipeline.pdffigures.write_region`). A bad
    page/bbox, a page the PDF lacks, or a render failure is that figure's `error`."""
    from pipeline.pdffigures import write_region

    rows = []
    try:
        doc = pymupdf.open(stream=pdf, filetype="pdf")
    except Exception as e:  # pymupdf raises several types for broken files
        return [figure_row(paper_id, img_name=name, source_kind="pdf", format="png",
                           status="error", error=f"paper PDF unreadable: {type(e).__name__}: {e}")
                for name in regions]
    with doc:
        for name, (page, bbox) in regions.items():
            row = figure_row(paper_id, img_name=name, source_kind="pdf", format="png")
            try:
                page, box = parse_region(page, bbox)
                row.update(source_path=f"page-{page + 1}", page=page, bbox=list(box))
                if page >= doc.page_count:
                    raise ValueError(f"page {page} out of range: the paper PDF has "
                                     f"{doc.page_count} pages (0-based)")
                png = image_dir / output_name(paper_id, name)
                img = write_region(doc[page], box, png)
            except Exception as e:  # one region's failure is that figure's, not the paper's
                row.update(status="error", error=str(e) if isinstance(e, ValueError)
                           else f"render failed: {type(e).__name__}: {e}")
            else:
                row.update(width=img.width, height=img.height, sha256=store.sha256_file(png),
                           bytes=png.stat().st_size, phash=png_phash(png), render=PDF_REGION,
                           image_path=png.relative_to(out).as_posix(), page_count=doc.page_count)
            rows.append(row)
    return rows


def rebuild(index: str | Path, split: str, out: str | Path, root: str | Path | None = None, *,
            eprints_dir: str | Path | None = None, eprint_url: str | None = None,
            pdf_url: str | None = None, delay: float | None = None, poppler: bool = False, progress: bool = True,
            checkpoint_every: int = 20, version: str = "auto", metadata: str | Path | None = None,
            api_url: str | None = None) -> dict:
    """Write the index's images under `out/<split>/`; returns the report (also stored).
    `poppler`: render PDFs with pdftoppm itself, for the official pixels to the bit.
    `version`: `cvf` (the version of 2022-03-01 first, see the module doc), `latest`, a date
    YYYY-MM-DD, or `auto` (`cvf` for the official CSV, `latest` for our manifests, whose
    `render` column says the crawl fetched the latest); `metadata`: a metadata snapshot."""
    from pipeline.versions import parse_cutoff
    from pipeline.crawl import make_fetcher

    root, out = config.data_root(root), Path(out).resolve()
    records_dir = root / "rebuild" / split
    records_path = records_dir / "figures.parquet"
    index_table = index_rows(index)  # read once: it can be the whole corpus
    listed = [(r["paper_id"], r["img_name"]) for r in index_table]
    # How to render each image: as the index says (our manifests), else the official settings;
    # PDF-fallback regions with their page and bbox are cut from the paper PDF again.
    regions = pdf_regions(index_table)
    settings, render_fallback = choose_settings(
        [key for key in dict.fromkeys(listed) if key not in regions], render_settings(index_table),
        "official-poppler" if poppler else "official")
    settings.update(dict.fromkeys(regions, PDF_REGION))
    wanted: dict[str, list[str]] = {}
    for paper_id, img_name in dict.fromkeys(listed):  # unique, first-seen order
        wanted.setdefault(paper_id, []).append(img_name)
    if version == "auto":
        version = "latest" if any("render" in r for r in index_table[:1]) else "cvf"
    cutoff = parse_cutoff(version)

    # Resume: a paper is done when each listed image is on disk, made with the setting wanted
    # now (a rebuild from the official CSV into the same folder is redone from our manifest).
    rows = store.read_rows(records_path) if records_path.exists() else []
    rows = [{"version": None, **r} for r in rows]  # records of a rebuild before versions
    made = {(r["paper_id"], r["img_name"]): r.get("render") for r in rows if r["status"] == "ok"}
    done = {p for p in {r["paper_id"] for r in rows} if p in wanted and all(
        (out / split / p / output_name(p, n)).exists() and made.get((p, n)) == settings[(p, n)]
        for n in wanted[p])}
    rows = [r for r in rows if r["paper_id"] in done]
    missing: dict[tuple[str, str], str] = {}  # (paper_id, img_name) -> why it could not be had

    def cannot_have(paper_id: str, names, reason: str) -> None:
        for name in names:
            missing.setdefault((paper_id, name), reason)

    fetcher = make_fetcher(root, delay)
    eprints_dir = Path(eprints_dir) if eprints_dir else None
    todo = [p for p in wanted if p not in done]
    # the version each paper was rebuilt from (resumed papers: from their records)
    paper_versions = {r["paper_id"]: r["version"] for r in rows if r["version"] is not None}
    # Papers whose version is searched: e-print figures listed, no unversioned e-print at hand.
    searched = {} if cutoff is None else dict.fromkeys(
        p for p in todo if any((p, n) not in regions for n in wanted[p])
        and not eprint_at_hand(p, eprints_dir) and _is_arxiv_id(p))
    dates, dates_problem = (gather_version_dates(list(searched), metadata, root, fetcher, cutoff, api_url)
                            if searched else ({}, ""))
    with contextlib.ExitStack() as stack:
        renderers: dict[str, Renderer] = {}  # one child process per setting, started when needed

        def renderer_for(setting: str) -> Renderer:
            if setting not in renderers:
                renderers[setting] = stack.enter_context(Renderer(RENDER_SETTINGS[setting]))
            return renderers[setting]

        def from_eprint(paper_id: str, eprint: Path, names: list[str]) -> list[dict]:
            """Records of the listed names rendered from the e-print, each with its setting."""
            by_setting: dict[str, list[str]] = {}
            for name in names:
                by_setting.setdefault(settings[(paper_id, name)], []).append(name)
            records = []
            try:
                for setting, group in by_setting.items():
                    paper_rows = extract_eprint(paper_id, eprint, out / split / paper_id, out,
                                                renderer_for(setting), apply_name_filter=False,
                                                only=set(group), formats=ALL_FORMATS)
                    # A paper-level problem (e.g. an archive corrupt after some members)
                    # explains every listed name that did not come out.
                    for row in paper_rows:
                        if not row["img_name"]:
                            cannot_have(paper_id, set(group) - {r["img_name"] for r in paper_rows},
                                        f"e-print: {row['error']}")
                    records += [r for r in paper_rows if r["img_name"]]
            except IsPaperPDF:
                cannot_have(paper_id, names, "e-print is the paper's PDF: no source figure files")
            except ArchiveError as e:
                cannot_have(paper_id, names, f"e-print: {e}")
            return records

        for i, paper_id in enumerate(tqdm(todo, desc=f"rebuild {split}", unit="paper",
                                          disable=not progress), 1):
            from_pdf = {n: regions[(paper_id, n)] for n in wanted[paper_id]
                        if (paper_id, n) in regions}
            names = [n for n in wanted[paper_id] if n not in from_pdf]  # from the e-print
            try:
                eprint = root / "raw" / shard_of_id(paper_id) / f"{paper_id}.eprint"
            except ValueError as e:  # not an arXiv id: nothing to fetch
                cannot_have(paper_id, wanted[paper_id], f"bad paper_id: {e}")
                continue
            if paper_id not in searched:
                got = fetch_eprint(paper_id, eprint, root, fetcher, eprints_dir, eprint_url)
            elif paper_id in dates:
                number, eprint, got = find_version(paper_id, names, try_order(dates[paper_id], cutoff),
                                                   root, fetcher, eprints_dir, eprint_url)
                if got["status"] == "ok":
                    paper_versions[paper_id] = number
            else:
                got = {"status": "pending" if dates_problem else "missing",
                       "error": dates_problem.split(": ", 1)[1] if dates_problem
                       else "no such paper in the metadata or the API"}
                cannot_have(paper_id, names, dates_problem or
                            "version dates missing: no such paper in the metadata or the API")
            if got["status"] != "ok":
                retry = " (rerun to retry)" if got["status"] == "pending" else ""
                why = f"e-print {got['status']}: {got['error']}".rstrip(": ") + retry
                cannot_have(paper_id, names, why)
                if got["status"] == "pending":  # it may be the very PDF to cut the regions from
                    cannot_have(paper_id, from_pdf, why)
            if from_pdf and got["status"] != "pending":
                pdf, why = paper_pdf(paper_id, eprint if got["status"] == "ok" else None, root,
                                     fetcher, pdf_url)
                if pdf is None:
                    cannot_have(paper_id, from_pdf, why)
                else:
                    # in a renderer's child: the paper PDF is a stranger's file
                    cut, why = renderer_for(next(iter(renderers), "official")).call(
                        cut_regions, paper_id, pdf, from_pdf, out / split / paper_id, out)
                    if cut is None:
                        cannot_have(paper_id, from_pdf, f"cutting the regions failed: {why}")
                    rows += cut or []
            if names and got["status"] == "ok":
                source = {"version": paper_versions.get(paper_id), "eprint_sha256": store.sha256_file(eprint)}
                rows += [{**r, **source} for r in from_eprint(paper_id, eprint, names)]
            if i % checkpoint_every == 0:  # a killed run resumes from here
                store.write_rows(records_path, rows, REBUILD_SCHEMA)
    by_key = {(r["paper_id"], r["img_name"]): r for r in rows}
    for paper_id, names in wanted.items():
        for name in names:
            row = by_key.get((paper_id, name))
            if row is None:
                cannot_have(paper_id, [name], "not in the e-print (the source tree differs)")
            elif row["status"] != "ok":
                cannot_have(paper_id, [name], f"{row['status']}: {row['error']}")
    missing_rows = [{"paper_id": p, "img_name": n, "version": paper_versions.get(p), "reason": r}
                    for (p, n), r in sorted(missing.items())]
    mark_duplicates(rows)
    store.write_rows(records_path, rows, REBUILD_SCHEMA)
    index_dups = [f"{p}/{n}" for (p, n), c in Counter(listed).items() if c > 1]
    written = sum(r["status"] == "ok" for r in rows)
    report = {
        "index": str(index), "split": split, "out": str(out / split),
        "index_rows": len(listed), "index_duplicate_rows": len(listed) - len(set(listed)),
        "index_duplicates": index_dups, "papers": len(wanted), "images_listed": len(set(listed)),
        "images_written": written, "images_missing": len(missing_rows),
        "missing_by_reason": dict(Counter(m["reason"].split(":")[0] for m in missing_rows)),
        "render_settings": dict(Counter(settings.values())),
        "render_fallback": dict(render_fallback),
        "images_from_pdf": sum(r["status"] == "ok" and r["render"] == PDF_REGION for r in rows),
        "version": "latest" if cutoff is None else f"current on {cutoff:%Y-%m-%d} first",
        # the arXiv version each searched paper was rebuilt from (null: none could be fetched)
        "paper_versions": {p: paper_versions.get(p) for p in wanted if p in paper_versions},
        "papers_not_on_first_version_tried": sorted(
            p for p in searched if p in dates and paper_versions.get(p) is not None
            and paper_versions[p] != try_order(dates[p], cutoff)[0]),
        "exact_duplicate_images": [[f"{r['paper_id']}/{r['img_name']}", r["dup_of"]]
                                   for r in rows if r["dup_of"]],
        "near_duplicate_images": [[f"{r['paper_id']}/{r['img_name']}", r["near_dup_of"]]
                                  for r in rows if r["near_dup_of"]],
    }
    store.atomic_write_json(records_dir / "report.json", report)
    buf = ["paper_id,img_name,version,reason"]
    for m in missing_rows:
        buf.append(",".join(_csv_field("" if m[k] is None else str(m[k]))
                            for k in ("paper_id", "img_name", "version", "reason")))
    store.atomic_write_text(records_dir / "missing.csv", "\n".join(buf) + "\n")
    return report


def _is_arxiv_id(paper_id: str) -> bool:
    try:
        shard_of_id(paper_id)
    except ValueError:
        return False
    return True


def _csv_field(value: str) -> str:
    return f'"{value.replace(chr(34), chr(34) * 2)}"' if any(c in value for c in ',"\n') else value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.rebuild",
        description="Rebuild the official Computer Vision Figures images from the published "
                    "index (df_train.csv / df_val.csv) or one of our manifests: fetch each "
                    "listed paper's e-print politely (reruns resume) and write exactly the "
                    "listed images, with the official file names and pixels, to OUT/SPLIT/"
                    "<paper_id>/. A manifest's `render` column (val.parquet of `pipeline."
                    "publish`) is followed, so the images match the manifest's sha256; its "
                    "pdf-region figures are cut from the paper PDF again. A report of duplicates and of every image that could not "
                    "be had, with reasons, goes to $CVF_DATA/rebuild/SPLIT/.")
    parser.add_argument("--index", required=True, type=cli.readable_file,
                        help="CSV with paper_id,img_name columns (the official ,paper_id,img_name "
                             "index works as is) or a Parquet manifest")
    parser.add_argument("--split", required=True, type=cli.folder_name, help="output folder name, e.g. train or val")
    parser.add_argument("--out", required=True, type=cli.writable_dir, help="output directory")
    parser.add_argument("--root", type=cli.writable_dir, help="dataset root for e-prints and records "
                                       "(default $CVF_DATA or ./data)")
    parser.add_argument("--eprints", type=cli.existing_dir, help="folder of e-prints already at hand (<id>.tar.gz, "
                                          "<id>.eprint or <id>); others are downloaded")
    parser.add_argument("--eprint-url", help="e-print URL template with {id}, as for the crawl "
                                             "(default $CVF_ARXIV_EPRINT_URL or arXiv's)")
    parser.add_argument("--pdf-url", help="paper PDF URL template with {id}, as for the crawl "
                                          "(default $CVF_ARXIV_PDF_URL or arXiv's): for a "
                                          "manifest's pdf-region figures whose e-print is no PDF")
    parser.add_argument("--official-renderer", action="store_true",
                        help="render PDF figures with poppler's pdftoppm, as the official tool "
                             "did (bit-identical pixels, ~20x slower than the default PyMuPDF "
                             "path, whose sizes are identical and pixels nearly so); applies to "
                             "every image of the official CSV, and to the images of a manifest "
                             "whose `render` is empty, or pdf-region without page/bbox")
    parser.add_argument("--delay", type=cli.non_negative_float, default=None,
                        help="seconds between requests to arXiv (default $CVF_ARXIV_DELAY or 3)")
    parser.add_argument("--version", default="auto", metavar="cvf|latest|YYYY-MM-DD",
                        help="which arXiv version of each paper: cvf = the version current on "
                             "2022-03-01 (when the CVF index was made) first, then the others "
                             "until one holds every listed name; latest = /e-print/<id> as the "
                             "crawl fetches it; a date = the version current then first. "
                             "Default: cvf for the official CSV, latest for our manifests")
    parser.add_argument("--metadata", metavar="FILE", type=cli.readable_file,
                        help="arXiv metadata snapshot (arxiv-metadata-oai-snapshot.json, JSON "
                             "lines with `versions`) for the version dates; papers it lacks are "
                             "asked of the API ($CVF_ARXIV_API_URL), 100 ids a request")
    parser.add_argument("--allow-missing", action="store_true",
                        help="exit 0 even when listed images could not be had (default: exit 1; "
                             "missing.csv says why for each)")
    args = parser.parse_args(argv)
    try:
        listed = read_index(args.index)  # a wrong CSV is a one-line error, not a traceback
    except (ValueError, OSError) as e:
        parser.error(str(e))
    if not listed:  # a header-only index: the user asked for images and there are none to make
        parser.error(f"--index {args.index} lists no images (a header and no rows): nothing to rebuild")
    for flag, url in (("--eprint-url", args.eprint_url), ("--pdf-url", args.pdf_url)):
        if url and "{id}" not in url:
            parser.error(f"{flag} {url}: no {{id}} placeholder")
    if args.version not in ("auto", "cvf", "latest"):
        try:
            datetime.strptime(args.version, "%Y-%m-%d")
        except ValueError:
            parser.error(f"--version {args.version}: want cvf, latest or a date YYYY-MM-DD")
    try:
        report = rebuild(args.index, args.split, args.out, args.root, eprints_dir=args.eprints,
                         eprint_url=args.eprint_url, pdf_url=args.pdf_url, delay=args.delay,
                         poppler=args.official_renderer, version=args.version,
                         metadata=args.metadata)
    except (ValueError, OSError) as e:  # a malformed --metadata line, an unwritable --out
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"{report['images_written']}/{report['images_listed']} images written to "
          f"{report['out']} ({report['images_from_pdf']} cut from paper PDFs); {report['images_missing']} missing {report['missing_by_reason']}; "
          f"{report['index_duplicate_rows']} duplicate index rows; report in "
          f"{config.data_root(args.root) / 'rebuild' / args.split}")
    if report["render_fallback"]:
        print(f"note: {sum(report['render_fallback'].values())} images were listed as made in a "
              f"way the e-print cannot reproduce {report['render_fallback']} (pdf-region: cut "
              f"from the paper PDF, but the index gives no page/bbox); they were rendered with the official settings, so their "
              f"pixels will not match the manifest's")
    if report["papers_not_on_first_version_tried"]:
        print(f"{len(report['papers_not_on_first_version_tried'])} papers were rebuilt from "
              f"another version than the one current on the --version date (report.json: "
              f"paper_versions)")
    if any(reason.endswith("pending") for reason in report["missing_by_reason"]):
        print("error: some e-prints, PDFs or version dates could not be fetched yet (see "
              "missing.csv): rerun to retry", file=sys.stderr)
        sys.exit(1)
    if report["images_missing"] and not args.allow_missing:
        print(f"error: {report['images_missing']} listed images are missing (see missing.csv "
              f"for why; --allow-missing accepts that)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
