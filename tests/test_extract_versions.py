"""Figures follow the e-print the crawl holds: a new arXiv version is extracted again, over the
replay (which serves a paper's versions), and nothing points at the old version's files."""
from __future__ import annotations

import gzip
import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import store
from pipeline.crawl import crawl
from pipeline.extract import extract_shards, stale_papers
from pipeline.replay.server import Replay, ReplayServer

PAPER = "2103.00001"
SHARD = "2021-03"


def eprint(figure: str, colour: tuple[int, int, int]) -> bytes:
    """A LaTeX source including one PNG figure `figure` of one colour."""
    png = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(png, "PNG")
    tex = (f"\\documentclass{{article}}\\usepackage{{graphicx}}\\begin{{document}}\\begin{{figure}}"
           f"\\includegraphics{{{figure}}}\\caption{{A figure.}}\\end{{figure}}\\end{{document}}").encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in (("main.tex", tex), (figure, png.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue(), mtime=0)


def corpus_with_versions(folder, files: list[str]) -> None:
    """The replay corpus: one cs.CV paper whose versions are `files` (its latest the last)."""
    dates = ["2021-03-10T10:00:00+00:00", "2021-09-01T10:00:00+00:00"]
    paper = {"arxiv_id": PAPER, "version": len(files), "title": "A paper", "authors": ["A. Author"],
             "summary": "s", "published": dates[0], "updated": dates[len(files) - 1],
             "primary_category": "cs.CV", "categories": ["cs.CV"], "comment": "", "journal_ref": "",
             "doi": "", "license": "", "withdrawn": False, "eprint_file": files[-1],
             "versions": [{"version": n, "created": dates[n - 1], "eprint_file": f}
                          for n, f in enumerate(files, 1)]}
    (folder / "papers.jsonl").write_text(json.dumps(paper) + "\n")


def crawl_and_extract(corpus, root, monkeypatch, pdfs: str) -> list[dict]:
    with ReplayServer(Replay(corpus)) as server:
        for key, value in server.endpoints().items():
            monkeypatch.setenv(key, value)
        stats = crawl(SHARD, SHARD, root, delay=0, pdfs=pdfs)
    assert stats[0]["done"]
    [extracted] = extract_shards([SHARD], root, progress=False)
    assert extracted["done"]
    return pq.read_table(root / "figures" / f"{SHARD}.parquet").to_pylist()


def test_a_new_version_is_extracted_again_and_its_old_pngs_go(tmp_path, data_root, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "v1").write_bytes(eprint("fig_old.png", (200, 30, 30)))
    (corpus / "v2").write_bytes(eprint("fig_new.png", (30, 30, 200)))
    corpus_with_versions(corpus, [str(corpus / "v1")])

    [v1] = crawl_and_extract(corpus, data_root, monkeypatch, pdfs="none")
    assert (v1["img_name"], v1["version"], v1["status"]) == ("fig_old.png", 1, "ok")
    assert v1["eprint_sha256"] == store.sha256_bytes((corpus / "v1").read_bytes())
    old_png = data_root / v1["image_path"]
    assert old_png.exists()

    corpus_with_versions(corpus, [str(corpus / "v1"), str(corpus / "v2")])  # the author revised it
    # a crawl that lists the shard again (here: asked for more PDFs) fetches v2, deleting v1's e-print
    [v2] = crawl_and_extract(corpus, data_root, monkeypatch, pdfs="auto")
    assert (v2["img_name"], v2["version"], v2["status"]) == ("fig_new.png", 2, "ok")
    assert v2["eprint_sha256"] == store.sha256_bytes((corpus / "v2").read_bytes())
    assert (data_root / v2["image_path"]).exists()
    assert not old_png.exists()  # no PNG of v1 is left for a later stage to pick up
    stats = store.read_stats(data_root / "figures", SHARD)
    assert stats["papers_stale"] == 1

    # nothing changed since: the done shard is left as it is
    before = (data_root / "figures" / f"{SHARD}.parquet").stat().st_mtime_ns
    extract_shards([SHARD], data_root, progress=False)
    assert (data_root / "figures" / f"{SHARD}.parquet").stat().st_mtime_ns == before


def test_a_paper_is_stale_when_its_version_or_eprint_bytes_changed():
    papers = [{"arxiv_id": "2103.00001", "version": 1, "eprint_sha256": "aa"},
              {"arxiv_id": "2103.00002", "version": 2, "eprint_sha256": "bb"},
              {"arxiv_id": "2103.00003", "version": 3, "eprint_sha256": "cc"},
              {"arxiv_id": "2103.00004", "version": 1, "eprint_sha256": "dd"}]
    rows = [{"paper_id": "2103.00001", "version": 1, "eprint_sha256": ""},    # fetched since (--retry-failed)
            {"paper_id": "2103.00002", "version": 2, "eprint_sha256": "bb"},  # the same download
            {"paper_id": "2103.00003", "version": 2, "eprint_sha256": "cc0"},  # an older version
            {"paper_id": "2103.00004", "version": None, "eprint_sha256": None}]  # written before provenance
    assert stale_papers(papers, rows) == {"2103.00001", "2103.00003"}
