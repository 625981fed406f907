"""Figure extraction end to end: real CVF e-prints, crafted bad input, duplicates, resume."""
from __future__ import annotations

import csv
import gzip
import io
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pymupdf
import pytest
from PIL import Image

from pipeline import store
from pipeline.archive import Limits
from pipeline.crawl import PAPER_SCHEMA
from pipeline.naming import ALL_FORMATS
from pipeline.extract import (FIGURE_SCHEMA, add_figure_texts, dedup_corpus, extract_shard,
                              mark_duplicates, png_phash, render_options, write_contact_sheet)
from pipeline.replay.corpus import tar_gz
from pipeline.shards import shard_of_id


def write_papers(root: Path, shard: str, eprints: dict[str, bytes | Path | None],
                 pdfs: dict[str, bytes] | None = None) -> None:
    """Paper records (the crawl's schema) and raw files for one shard; a Path is linked."""
    rows, pdfs = [], pdfs or {}
    for arxiv_id, eprint in eprints.items():
        row = {"arxiv_id": arxiv_id, "version": 1, "eprint_status": "missing", "eprint_path": "",
               "pdf_status": "skipped", "pdf_path": ""}
        if eprint is not None:
            dest = root / "raw" / shard / f"{arxiv_id}.eprint"
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(eprint, Path):
                os.symlink(eprint.resolve(), dest)
            else:
                dest.write_bytes(eprint)
            row.update(eprint_status="ok", eprint_path=f"raw/{shard}/{arxiv_id}.eprint")
        if arxiv_id in pdfs:
            dest = root / "raw" / shard / f"{arxiv_id}.pdf"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(pdfs[arxiv_id])
            row.update(pdf_status="ok", pdf_path=f"raw/{shard}/{arxiv_id}.pdf")
        rows.append(row)
    store.write_rows(root / "papers" / f"{shard}.parquet", rows, PAPER_SCHEMA)


def png(color, size=(300, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def photo(seed: int, size=(256, 256)) -> bytes:
    import numpy as np

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def one_page_pdf() -> bytes:
    doc = pymupdf.open()
    page = doc.new_page(width=200, height=100)
    page.draw_rect(pymupdf.Rect(20, 20, 180, 80), fill=(0, 0, 1))
    return doc.tobytes()


def rows_by_name(root: Path, shard: str) -> dict[tuple[str, str], dict]:
    return {(r["paper_id"], r["img_name"] or r["error"]): r
            for r in store.read_rows(root / "figures" / f"{shard}.parquet")}


# --- the real CVF e-prints ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_root(testdata, tmp_path_factory):
    root = tmp_path_factory.mktemp("real") / "data"
    by_shard: dict[str, dict] = {}
    for path in sorted((testdata / "eprints").glob("*.tar.gz")):
        arxiv_id = path.name[: -len(".tar.gz")]
        by_shard.setdefault(shard_of_id(arxiv_id), {})[arxiv_id] = path
    for shard, eprints in by_shard.items():
        write_papers(root, shard, eprints)
        extract_shard(shard, root, progress=False)
    return root, sorted(by_shard)


def test_every_cvf_listed_figure_comes_out(real_root, testdata):
    root, shards = real_root
    rows = {(r["paper_id"], r["img_name"]): r for s in shards
            for r in store.read_rows(root / "figures" / f"{s}.parquet")}
    candidates = list(csv.DictReader(open(testdata / "eprints" / "CANDIDATES.tsv"), delimiter="\t"))
    listed = {(c["arxiv_id"], c["cvf_style_name"]) for c in candidates if c["in_cvf"] == "1"}
    assert len(listed) >= 10
    for key in listed:
        assert rows[key]["status"] == "ok", key
        png_path = root / rows[key]["image_path"]
        with Image.open(png_path) as img:
            assert img.mode == "RGB" and max(img.size) <= 1024
            assert img.size == (rows[key]["width"], rows[key]["height"])
        assert store.sha256_file(png_path) == rows[key]["sha256"]
        assert len(rows[key]["phash"]) == 16
        expected = key[1] if key[1].endswith(".png") else f"{key[1]}_{key[0]}_0.png"
        assert png_path.name == expected  # the official downloader's file name
    # Every candidate file of the trees is a record; the one CVF name absent from its tree is not.
    assert {(c["arxiv_id"], c["cvf_style_name"]) for c in candidates} <= set(rows)
    sources = list(csv.DictReader(open(testdata / "eprints" / "SOURCES.tsv"), delimiter="\t"))
    absent = {(s["arxiv_id"], s["cvf_img_names_not_found"]) for s in sources
              if s["cvf_img_names_not_found"]}
    assert absent and not absent & set(rows)
    # The official name filter marks (and by default does not render) 'pipeline' figures.
    assert rows[("2202.04200", "figures_pipeline_figure.pdf")]["status"] == "filtered"
    assert rows[("2202.04200", "figures_pipeline_figure.pdf")]["name_filter"]
    multi = rows[("1710.10473", "figures_relative_transform_relative_transform.pdf")]
    assert multi["status"] == "skipped" and multi["page_count"] == 3


def test_cvf_listed_figures_carry_their_caption_label_and_subcaption(real_root):
    """After extraction, the figure records hold what the LaTeX says (tests/test_latex.py's
    table, read from the trees by hand)."""
    from test_latex import EXPECTED, EXPECTED_SUBFIGURES

    root, shards = real_root
    rows = {(r["paper_id"], r["source_path"]): r for s in shards
            for r in store.read_rows(root / "figures" / f"{s}.parquet")}
    for key, (phrase, label, sub) in EXPECTED.items():
        row = rows[key]
        assert row["status"] == "ok" and (phrase in row["caption"]), (key, row["caption"])
        assert (row["figure_label"], row["subcaption"]) == (label, sub), key
        if phrase:
            assert row["caption_latex"] and (row["n_panels"], row["panel_index"]) == (1, 0)
        else:
            assert row["caption"] == "" and row["caption_error"]
    for key, (sub, n, i) in EXPECTED_SUBFIGURES.items():
        assert (rows[key]["subcaption"], rows[key]["n_panels"], rows[key]["panel_index"]) == (sub, n, i)


def test_included_agrees_with_latex(real_root):
    root, shards = real_root
    rows = {(r["paper_id"], r["img_name"]): r for s in shards
            for r in store.read_rows(root / "figures" / f"{s}.parquet")}
    assert rows[("2002.06483", "figures_human_eval.pdf")]["included"]
    assert not rows[("2002.06483", "figures_SDM.pdf")]["included"]
    # Inkscape figures are pulled in through \import{dir/}{x.pdf_tex}.
    assert rows[("1710.10473", "figures_notation_notation.pdf")]["included"]
    # Unused raster sources beside the PDF a figure was made from are not.
    assert not rows[("1710.10473", "figures_teaser_database.png")]["included"]


def included(tex: dict[str, str], paths: list[str]) -> set[str]:
    """Which of `paths` an e-print with LaTeX `tex` includes, as extraction records it."""
    rows = [{"source_path": p, "included": None} for p in paths]
    add_figure_texts(rows, tex)
    return {r["source_path"] for r in rows if r["included"]}


def test_included_is_what_the_latex_reader_resolves():
    files = ["figs/teaser.pdf", "img/teaser.png", "old/plot-eps-converted-to.pdf", "shared/grid.png",
             "commented_out.png", "figs/teaser_old.pdf", "figs/hidden.pdf", "figs/verb.png",
             "figs/macro.pdf", "figs/after_escaped_backslash.png"]
    tex = {"main.tex": "\\graphicspath{{figs/}{img/}}\n"
                       "\\newcommand{\\fig}[1]{\\includegraphics{#1}}\n"
                       "\\begin{figure}\\includegraphics[width=\\linewidth]{teaser}\\caption{T.}\\end{figure}\n"
                       "% \\includegraphics{commented_out.png}\n"
                       "\\iffalse\n\\includegraphics{hidden}\n\\fi\n"
                       "\\begin{verbatim}\\includegraphics{verb.png}\\end{verbatim}\n"
                       "\\fig{macro}\n"
                       "a line break \\\\% then a comment \\includegraphics{after_escaped_backslash}\n"
                       "\\input{sec/results}\n"
                       "\\epsfig{file=old/plot.eps,width=3in}\n",
           "sec/results.tex": "\\includegraphics*[scale=.5]{shared/grid.png}"}
    assert included(tex, files) == {"figs/teaser.pdf", "old/plot-eps-converted-to.pdf", "shared/grid.png",
                                    "figs/macro.pdf"}
    # A dotted name is braced so LaTeX sees its extension.
    assert included({"paper/main.tex": "\\includegraphics{{figs/v1.2}.pdf}"},
                    ["paper/figs/v1.2.pdf", "paper/figs/v1.pdf"]) == {"paper/figs/v1.2.pdf"}
    assert included({}, ["a.png"]) == set()  # no LaTeX: nothing is included


def test_exact_and_near_duplicates_flagged_not_dropped(real_root):
    root, shards = real_root
    rows = [r for s in shards for r in store.read_rows(root / "figures" / f"{s}.parquet")]
    dups = [r for r in rows if r["dup_of"]]
    assert dups and all(r["status"] == "ok" and r["image_path"] for r in dups)
    by_key = {f"{r['paper_id']}/{r['img_name']}": r for r in rows}
    for r in dups:
        assert by_key[r["dup_of"]]["sha256"] == r["sha256"]
        assert (r["paper_id"], r["img_name"]) > (by_key[r["dup_of"]]["paper_id"],
                                                 by_key[r["dup_of"]]["img_name"])


def test_duplicates_across_papers_and_shards(tmp_path):
    root = tmp_path / "data"
    same, other = photo(1), photo(2)
    shifted = Image.open(io.BytesIO(same))
    shifted = shifted.point(lambda v: min(255, v + 3))  # same picture, different bytes
    buf = io.BytesIO()
    shifted.save(buf, "PNG")
    write_papers(root, "2021-01", {"2101.00001": tar_gz({"a.png": same, "b.png": other}),
                                   "2101.00002": tar_gz({"copy.png": same})})
    write_papers(root, "2021-02", {"2102.00001": tar_gz({"near.png": buf.getvalue()})})
    for shard in ("2021-01", "2021-02"):
        extract_shard(shard, root, progress=False)
    report = dedup_corpus(root)
    jan, feb = rows_by_name(root, "2021-01"), rows_by_name(root, "2021-02")
    assert jan[("2101.00002", "copy.png")]["dup_of"] == "2101.00001/a.png"
    assert not jan[("2101.00001", "b.png")]["dup_of"] and not jan[("2101.00001", "b.png")]["near_dup_of"]
    assert feb[("2102.00001", "near.png")]["near_dup_of"] == "2101.00001/a.png"
    assert report["exact_duplicates"] == 1 and report["near_duplicates"] == 1


def test_mark_duplicates_is_order_independent():
    rows = [{"paper_id": p, "img_name": n, "source_path": n, "status": "ok", "sha256": s,
             "phash": h, "dup_of": "", "near_dup_of": ""}
            for p, n, s, h in [("2", "x.png", "s1", "ffff000000000000"),
                               ("1", "y.png", "s1", "ffff000000000000"),
                               ("3", "z.png", "s2", "ffff000000000003")]]
    mark_duplicates(rows)
    assert [r["dup_of"] for r in rows] == ["1/y.png", "", ""]
    assert rows[2]["near_dup_of"] == "1/y.png"


# --- bad input: each ends as a per-file status, the rest of the shard is fine -------------------

def test_bad_inputs_each_get_a_status(tmp_path):
    root = tmp_path / "data"
    good = tar_gz({"figs/ok.png": png((0, 200, 0)), "main.tex": b"\\includegraphics{figs/ok}"})
    truncated = tar_gz({"a.png": photo(3, (600, 600)), "b.png": photo(4, (600, 600))})
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("fig.png", png((1, 2, 3)))
    bomb = gzip.compress(b"\0" * (24 << 20), 9)  # 24 MiB of zeros against an 8 MiB budget
    traversal = io.BytesIO()
    with tarfile.open(fileobj=traversal, mode="w:gz") as tar:
        for name, data in [("../../escape.png", png((9, 9, 9))), ("fine.png", png((7, 7, 7)))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    locked = pymupdf.open(stream=one_page_pdf(), filetype="pdf").tobytes(
        encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="pw", owner_pw="pw")
    from test_render import huge_png

    figures = tar_gz({"enc.pdf": locked, "broken.pdf": b"%PDF-1.7\n1 0 obj <<", "zero.png": b"",
                      "huge.png": huge_png(30_000), "good.pdf": one_page_pdf(),
                      "corrupt.jpg": b"\xff\xd8\xff\xe0 not really a jpeg"})
    write_papers(root, "2021-03", {
        "2103.00001": good, "2103.00002": truncated[: len(truncated) // 2],
        "2103.00003": zipped.getvalue(), "2103.00004": bomb, "2103.00005": traversal.getvalue(),
        "2103.00006": figures, "2103.00007": b"", "2103.00008": None})
    stats = extract_shard("2021-03", root, progress=False, formats=ALL_FORMATS,  # the .jpg too
                          limits=Limits(max_total_bytes=8 << 20, max_file_bytes=16 << 20))
    rows = rows_by_name(root, "2021-03")
    by_paper: dict[str, list[dict]] = {}
    for (paper, _), row in rows.items():
        by_paper.setdefault(paper, []).append(row)

    def error_of(paper):
        return " ".join(r["error"] for r in by_paper[paper] if not r["img_name"])

    ok = rows[("2103.00001", "figs_ok.png")]
    assert ok["status"] == "ok" and ok["included"] and (root / ok["image_path"]).exists()
    assert "corrupt or truncated" in error_of("2103.00002")
    assert "zip archive" in error_of("2103.00003")
    assert "bomb" in error_of("2103.00004") or "max_file_bytes" in error_of("2103.00004")
    assert "path traversal" in rows[("2103.00005", ".._.._escape.png")]["error"]
    assert rows[("2103.00005", "fine.png")]["status"] == "ok"
    assert "encrypted" in rows[("2103.00006", "enc.pdf")]["error"]
    assert "PDF" in rows[("2103.00006", "broken.pdf")]["error"]
    assert "empty file" in rows[("2103.00006", "zero.png")]["error"]
    assert "decompression-bomb" in rows[("2103.00006", "huge.png")]["error"]
    assert "unreadable image" in rows[("2103.00006", "corrupt.jpg")]["error"]
    assert rows[("2103.00006", "good.pdf")]["status"] == "ok"
    assert "empty file" in error_of("2103.00007")
    assert by_paper["2103.00008"][0]["status"] == "skipped"
    assert stats["papers"] == 8 and stats["by_status"]["ok"] == 3
    assert not list((root).rglob("escape.png"))


def test_eps_uses_converted_pdf_from_archive(tmp_path):
    root = tmp_path / "data"
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n"
           b"0 0 1 setrgbcolor 0 0 100 100 rectfill showpage\n")
    write_papers(root, "2021-04", {
        "2104.00001": tar_gz({"f/plot.eps": eps, "f/plot-eps-converted-to.pdf": one_page_pdf(),
                              "f/solo.eps": eps, "f/bad-eps-converted-to.pdf": b"%PDF-1.4 cut",
                              "f/bad.eps": eps})})
    extract_shard("2021-04", root, progress=False)
    rows = rows_by_name(root, "2021-04")
    plot = rows[("2104.00001", "f_plot-eps-converted-to.pdf")]
    assert plot["source_path"] == "f/plot-eps-converted-to.pdf" and plot["format"] == "pdf"
    assert len([k for k in rows if k[1] == "f_plot-eps-converted-to.pdf"]) == 1
    solo = rows[("2104.00001", "f_solo-eps-converted-to.pdf")]
    bad = rows[("2104.00001", "f_bad-eps-converted-to.pdf")]
    if shutil.which("gs"):
        assert solo["image_path"].endswith("f_solo-eps-converted-to.pdf_2104.00001_0.png")
        assert bad["status"] == "ok" and bad["source_path"] == "f/bad.eps"  # the EPS stands in


def test_pdf_only_papers_go_to_the_pdf_fallback(tmp_path, testdata):
    root = tmp_path / "data"
    paper = (testdata / "pdfs" / "docbank_1805.05760_cataracts_black.pdf").read_bytes()
    write_papers(root, "2021-05", {"2105.00001": paper, "2105.00002": None,
                                   "2105.00003": one_page_pdf(), "2105.00004": gzip.compress(paper)},
                 pdfs={"2105.00002": paper})
    extract_shard("2021-05", root, progress=False)
    rows = store.read_rows(root / "figures" / "2021-05.parquet")
    assert {r["paper_id"] for r in rows} == {"2105.00001", "2105.00002", "2105.00003", "2105.00004"}
    assert all(r["source_kind"] == "pdf" for r in rows)
    figures = [r for r in rows if r["paper_id"] == "2105.00001" and r["status"] == "ok"]
    assert figures and all(r["source_path"].startswith("page-") for r in figures)
    for r in figures:
        assert (root / r["image_path"]).exists() and r["sha256"] and r["phash"]
        assert r["render"] == "pdf-region"  # cut from the paper PDF: no e-print file to rebuild
        assert r["phash"] == png_phash(root / r["image_path"])
    # The same PDF as e-print and as fallback PDF gives the same figures, flagged as duplicates.
    for copy in ("2105.00002", "2105.00004"):  # the PDF beside a missing e-print; a gzip'd PDF
        same = [r for r in rows if r["paper_id"] == copy and r["status"] == "ok"]
        assert len(same) == len(figures) and all(r["dup_of"].startswith("2105.00001/") for r in same)
    # the caption the finder anchored on, without its printed label, which becomes figure_label
    assert all(r["caption"] and r["figure_label"].split()[0] in ("Figure", "Table") for r in figures)
    assert not any(r["caption"].lower().startswith(("figure", "fig.")) for r in figures)
    blank = [r for r in rows if r["paper_id"] == "2105.00003"]
    assert len(blank) == 1 and "no captioned figures" in blank[0]["error"]


def test_shard_waits_for_pending_crawl_downloads(tmp_path):
    root = tmp_path / "data"
    write_papers(root, "2021-10", {"2110.00001": tar_gz({"p.png": photo(1)}),
                                   "2110.00002": tar_gz({"q.png": photo(2)})})
    papers_path = root / "papers" / "2021-10.parquet"
    papers = store.read_rows(papers_path)
    papers[1].update(eprint_status="pending", eprint_path="")  # the crawl will retry it
    store.write_rows(papers_path, papers, PAPER_SCHEMA)
    first = extract_shard("2021-10", root, progress=False)
    assert not first["done"] and first["papers_waiting_for_crawl"] == 1
    assert not store.shard_done(root / "figures", "2021-10")
    assert {r["paper_id"] for r in store.read_rows(root / "figures" / "2021-10.parquet")} == {"2110.00001"}
    papers[1].update(eprint_status="ok", eprint_path="raw/2021-10/2110.00002.eprint")  # crawl done
    store.write_rows(papers_path, papers, PAPER_SCHEMA)
    second = extract_shard("2021-10", root, progress=False)
    assert second["done"] and second["papers_resumed"] == 1
    assert store.shard_done(root / "figures", "2021-10")
    assert rows_by_name(root, "2021-10")[("2110.00002", "q.png")]["status"] == "ok"


def test_member_names_that_are_not_utf8(tmp_path):
    """An old archive's Latin-1 file name is a record, not a crash of the shard."""
    root = tmp_path / "data"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT,
                      encoding="latin-1") as tar:
        data = png((9, 9, 9))
        info = tarfile.TarInfo("figs/r\xe9sultat.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    write_papers(root, "2021-11", {"2111.00001": buf.getvalue()})
    extract_shard("2021-11", root, progress=False)
    row = rows_by_name(root, "2021-11")[("2111.00001", "figs_r\xe9sultat.png")]
    assert row["status"] == "ok" and (root / row["image_path"]).exists()


def test_rerun_resumes_and_skips_done_shards(tmp_path):
    root = tmp_path / "data"
    write_papers(root, "2021-06", {f"2106.0000{i}": tar_gz({"p.png": photo(i)}) for i in range(1, 4)})
    first = extract_shard("2021-06", root, progress=False)
    assert extract_shard("2021-06", root, progress=False) == first  # done: nothing redone
    before = store.read_rows(root / "figures" / "2021-06.parquet")
    # Crash after the first paper: the checkpoint holds it, the stats file does not exist.
    store.write_rows(root / "figures" / "2021-06.parquet", before[:1],
                     FIGURE_SCHEMA)
    (root / "figures" / "2021-06_stats.json").unlink()
    again = extract_shard("2021-06", root, progress=False)
    assert again["papers_resumed"] == 1
    assert store.read_rows(root / "figures" / "2021-06.parquet") == before
    forced = extract_shard("2021-06", root, progress=False, force=True)
    assert forced["papers_resumed"] == 0
    assert store.read_rows(root / "figures" / "2021-06.parquet") == before


def test_records_say_how_each_png_was_made(tmp_path):
    """`render` names the settings (rasters too: their conversion differs between ours and the
    official); a figure without a PNG has none. The phash is the saved PNG's."""
    eprint = tar_gz({"p.png": photo(1), "f.pdf": one_page_pdf(), "broken.pdf": b"%PDF-1.4 junk",
                     "arch.png": photo(2)})
    for box, official, expected in (("crop", False, "crop"), ("media", False, "media"),
                                    ("crop", True, "official")):
        root = tmp_path / expected / "data"
        write_papers(root, "2021-07", {"2107.00001": eprint})
        stats = extract_shard("2021-07", root, options=render_options(box, official), progress=False)
        assert stats["options"]["render"] == expected
        rows = rows_by_name(root, "2021-07")
        for name in ("p.png", "f.pdf"):
            row = rows[("2107.00001", name)]
            assert row["render"] == expected and row["phash"] == png_phash(root / row["image_path"])
        assert rows[("2107.00001", "broken.pdf")]["status"] == "error"
        assert rows[("2107.00001", "arch.png")]["status"] == "filtered"
        assert rows[("2107.00001", "broken.pdf")]["render"] is rows[("2107.00001", "arch.png")]["render"] is None


def test_figure_records_written_before_the_render_column_still_read(tmp_path):
    """An old checkpoint (no `render` column) resumes: its rows keep render null, new rows get
    it, and the corpus-wide duplicate pass rewrites old done shards without failing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "data"
    write_papers(root, "2021-06", {f"2106.0000{i}": tar_gz({"p.png": photo(i)}) for i in range(1, 4)})
    extract_shard("2021-06", root, progress=False)
    path = root / "figures" / "2021-06.parquet"
    old = pq.read_table(path).drop_columns(["render"]).slice(0, 1)
    store.atomic_write_parquet(path, old)
    (root / "figures" / "2021-06_stats.json").unlink()
    assert extract_shard("2021-06", root, progress=False)["papers_resumed"] == 1
    rows = store.read_rows(path)
    assert [r["render"] for r in rows] == [None, "crop", "crop"]

    rows[2]["sha256"] = rows[0]["sha256"]  # a duplicate for the corpus-wide pass to flag
    old = pa.Table.from_pylist(rows, FIGURE_SCHEMA).drop_columns(["render"])  # a done old shard
    store.atomic_write_parquet(path, old)
    assert dedup_corpus(root)["shards_rewritten"] == 1
    rows = store.read_rows(path)
    assert rows[2]["dup_of"] == "2106.00001/p.png" and [r["render"] for r in rows] == [None] * 3


def test_replay_corpus_every_true_figure_comes_out(tmp_path):
    """The crawler's replay corpus (tar.gz, gz'd single .tex, PDF-only e-prints; EPS figures,
    some beside pdfLaTeX's converted PDF): each figure the generator made is a record."""
    from pipeline.replay.corpus import generate_corpus

    corpus = generate_corpus(tmp_path / "replay", n_papers=8, months=["2021-08"])
    root = tmp_path / "data"
    ids = sorted(p.name for p in (corpus / "eprint").iterdir())
    write_papers(root, "2021-08", {i: corpus / "eprint" / i for i in ids})
    extract_shard("2021-08", root, progress=False)
    rows = rows_by_name(root, "2021-08")
    truth = store.read_rows(corpus / "truth.parquet")
    assert truth
    for fig in truth:
        if fig["img_name"].lower().endswith((".jpg", ".jpeg")):  # not CVF's formats: no candidate
            assert (fig["paper_id"], fig["img_name"]) not in rows
            continue
        row = rows[(fig["paper_id"], fig["img_name"])]
        if row["status"] == "skipped":  # the generator makes multi-page PDFs, as CVF dropped
            assert row["page_count"] > 1, row
        else:
            assert row["status"] == ("filtered" if row["name_filter"] else "ok"), row
        converted = fig["source_path"].rsplit(".", 1)[0] + "-eps-converted-to.pdf"
        assert row["source_kind"] == "eprint"
        assert row["source_path"] in (fig["source_path"], converted)
    assert {r["paper_id"] for r in rows.values()} == set(ids)  # every paper accounted for
    sheet = write_contact_sheet(root, 12)
    with Image.open(sheet) as img:
        assert img.mode == "RGB" and img.width > 200
