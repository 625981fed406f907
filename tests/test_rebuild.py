"""`pipeline.rebuild`: the official CVF images back from the index, over a real loopback server."""
from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import store
from pipeline.rebuild import read_index, rebuild

PAPERS = ("1801.04461", "1904.03249", "1710.10473")


@pytest.fixture
def eprint_server(testdata, tmp_path, monkeypatch):
    """arXiv's /e-print/<id> for three CVF papers, served from 127.0.0.1 on a free port."""
    served = tmp_path / "served" / "e-print"
    served.mkdir(parents=True)
    for paper_id in PAPERS:
        (served / paper_id).symlink_to(testdata / "eprints" / f"{paper_id}.tar.gz")
    handler = partial(SimpleHTTPRequestHandler, directory=str(served.parent))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("CVF_ARXIV_EPRINT_URL", f"http://127.0.0.1:{server.server_port}/e-print/{{id}}")
    yield server
    server.shutdown()
    server.server_close()


def write_index(path, testdata, extra_rows, papers=PAPERS):
    """The official index rows of `papers` (from df_train.csv) plus `extra_rows`, official header."""
    rows = [r for r in csv.DictReader(open(testdata / "cvf_index" / "df_train.csv"))
            if r["paper_id"] in papers]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "paper_id", "img_name"])
        for i, r in enumerate(rows + extra_rows):
            w.writerow([i, r["paper_id"], r["img_name"]])
    return [(r["paper_id"], r["img_name"]) for r in rows]


def test_rebuild_writes_the_official_names_and_pixels(eprint_server, testdata, tmp_path, data_root):
    index = tmp_path / "df_part.csv"
    official = write_index(index, testdata, [
        {"paper_id": "1801.04461", "img_name": "add.png"},          # a duplicate index row
        {"paper_id": "2202.99999", "img_name": "gone.pdf"}])        # 404 on the server
    out = tmp_path / "cvf"
    report = rebuild(index, "val", out, delay=0, progress=False, version="latest")

    written = {p.relative_to(out / "val").as_posix() for p in (out / "val").rglob("*.png")}
    assert written == {
        "1801.04461/add.png", "1801.04461/demos.pdf_1801.04461_0.png",
        "1904.03249/figures_teaser_new.pdf_1904.03249_0.png",
        "1904.03249/figures_vis.pdf_1904.03249_0.png",
        "1710.10473/figures_qualitative_results_qualitative_results.pdf_1710.10473_0.png",
        "1710.10473/figures_houzz_example_houzz_example.pdf_1710.10473_0.png",
        "1710.10473/figures_teaser_teaser.pdf_1710.10473_0.png",
        "1710.10473/figures_context_example_context_example.pdf_1710.10473_0.png",
        "1710.10473/figures_pbrs_pbrs.pdf_1710.10473_0.png"}
    assert report["images_listed"] == len(official) + 1 and report["index_duplicate_rows"] == 1
    assert report["images_written"] == len(written)
    missing = {(r["paper_id"], r["img_name"]): r["reason"] for r in
               csv.DictReader(open(data_root / "rebuild" / "val" / "missing.csv"))}
    assert "not in the e-print" in missing[("1710.10473", "figures_new_figures_result_plate.pdf")]
    gone = missing[("2202.99999", "gone.pdf")]
    assert "missing" in gone and "404" in gone
    assert json.loads((data_root / "rebuild" / "val" / "report.json").read_text()) == report

    # Official pixels: a PNG is Pillow's convert("RGB") + thumbnail(1024), byte for byte.
    with tarfile.open(testdata / "eprints" / "1801.04461.tar.gz") as tar:
        ref = Image.open(tar.extractfile("add.png")).convert("RGB")
    ref.thumbnail((1024, 1024))
    with Image.open(out / "val" / "1801.04461" / "add.png") as got:
        assert got.mode == "RGB" and np.array_equal(np.asarray(got), np.asarray(ref))
    # A PDF is the MediaBox at 200 DPI then thumbnail: poppler's size, nearly poppler's pixels.
    if shutil.which("pdftoppm"):
        with tarfile.open(testdata / "eprints" / "1904.03249.tar.gz") as tar:
            (tmp_path / "vis.pdf").write_bytes(tar.extractfile("figures/vis.pdf").read())
        subprocess.run(["pdftoppm", "-r", "200", "-png", "-singlefile", str(tmp_path / "vis.pdf"),
                        str(tmp_path / "pop")], check=True)
        pop = Image.open(tmp_path / "pop.png").convert("RGB")
        pop.thumbnail((1024, 1024))
        with Image.open(out / "val" / "1904.03249" / "figures_vis.pdf_1904.03249_0.png") as got:
            assert got.size == pop.size
            assert np.abs(np.asarray(got, float) - np.asarray(pop, float)).mean() < 6

    # Records in the dataset root; e-prints stored where the crawler keeps them.
    rows = store.read_rows(data_root / "rebuild" / "val" / "figures.parquet")
    assert {(r["paper_id"], r["img_name"]) for r in rows if r["status"] == "ok"} <= set(official)
    assert (data_root / "raw" / "2018-01" / "1801.04461.eprint").exists()
    # ... with the words of each figure, as extraction writes them (tests/test_latex.py's table)
    from test_latex import EXPECTED
    by_source = {(r["paper_id"], r["source_path"]): r for r in rows if r["status"] == "ok"}
    checked = [key for key in EXPECTED if key in by_source]
    assert len(checked) >= 8
    for key in checked:
        phrase, label, sub = EXPECTED[key]
        row = by_source[key]
        assert phrase in row["caption"] and (row["figure_label"], row["subcaption"]) == (label, sub), key


def test_rebuild_resumes_without_refetching(eprint_server, testdata, tmp_path, data_root):
    index = tmp_path / "df_part.csv"
    write_index(index, testdata, [], papers=("1904.03249", "1801.04461"))
    out = tmp_path / "cvf"
    first = rebuild(index, "train", out, delay=0, progress=False, version="latest")
    eprint_server.shutdown()  # a rerun must need nothing from the network
    again = rebuild(index, "train", out, delay=0, progress=False, version="latest")
    assert again == first and first["images_written"] == 4


def test_read_index_forms(tmp_path, testdata):
    official = read_index(testdata / "cvf_index" / "df_val.csv")
    assert len(official) == 9155 and len(official) - len(set(official)) == 111
    assert all(isinstance(p, str) and len(p.split(".")[1]) >= 4 for p, _ in official)
    manifest = tmp_path / "m.csv"
    manifest.write_text("paper_id,img_name,label\n2101.00001,\"a, b.png\",1\n")
    assert read_index(manifest) == [("2101.00001", "a, b.png")]
    manifest.write_bytes(b"\xef\xbb\xbfpaper_id,img_name\n2101.00001,c.png\n")  # saved by Excel
    assert read_index(manifest) == [("2101.00001", "c.png")]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name\n1,2\n")
    with pytest.raises(ValueError, match="paper_id"):
        read_index(bad)


@pytest.mark.skipif(not shutil.which("pdftoppm"), reason="poppler-utils not installed")
def test_official_renderer_gives_pdf2image_pixels(eprint_server, testdata, tmp_path, data_root):
    from pdf2image import convert_from_bytes

    index = tmp_path / "df_part.csv"
    write_index(index, testdata, [], papers=("1904.03249",))
    report = rebuild(index, "val", tmp_path / "cvf", delay=0, poppler=True, progress=False,
                     version="latest")
    assert report["images_written"] == 2
    with tarfile.open(testdata / "eprints" / "1904.03249.tar.gz") as tar:
        ref = convert_from_bytes(tar.extractfile("figures/vis.pdf").read(), dpi=200)[0]
    ref = ref.convert("RGB")
    ref.thumbnail((1024, 1024))
    out = tmp_path / "cvf" / "val" / "1904.03249" / "figures_vis.pdf_1904.03249_0.png"
    with Image.open(out) as got:
        assert np.array_equal(np.asarray(got), np.asarray(ref))


def test_rebuild_says_why_each_listed_image_could_not_be_had(testdata, tmp_path, data_root):
    """E-prints at hand (`--eprints`): one cut short mid-archive, one fine; an index row whose
    paper id is not an arXiv id. Every listed name is written or has its own reason."""
    eprints = tmp_path / "eprints"
    eprints.mkdir()
    whole = (testdata / "eprints" / "1710.10473.tar.gz").read_bytes()
    (eprints / "1710.10473.tar.gz").write_bytes(whole[: len(whole) // 3])
    (eprints / "1904.03249.tar.gz").symlink_to(testdata / "eprints" / "1904.03249.tar.gz")
    index = tmp_path / "df_part.csv"
    listed = write_index(index, testdata, [{"paper_id": "not-an-id", "img_name": "x.png"}],
                         papers=("1710.10473", "1904.03249"))
    report = rebuild(index, "val", tmp_path / "cvf", eprints_dir=eprints, delay=0, progress=False)
    missing = {(r["paper_id"], r["img_name"]): r["reason"] for r in
               csv.DictReader(open(data_root / "rebuild" / "val" / "missing.csv"))}
    assert "bad paper_id" in missing[("not-an-id", "x.png")]
    cut = [n for p, n in listed if p == "1710.10473"]
    lost = [n for n in cut if ("1710.10473", n) in missing]
    assert lost and all("corrupt or truncated" in missing[("1710.10473", n)] for n in lost)
    assert not any(p == "1904.03249" for p, _ in missing)
    assert report["images_written"] + report["images_missing"] == report["images_listed"]


def test_cli_eprint_url_names_the_server(eprint_server, testdata, tmp_path, data_root,
                                         monkeypatch, capsys):
    """`--eprint-url` points the rebuild at an arXiv stand-in, as the crawl's flag does."""
    from pipeline.rebuild import main

    url = f"http://127.0.0.1:{eprint_server.server_port}/e-print/{{id}}"
    monkeypatch.setenv("CVF_ARXIV_EPRINT_URL", "http://127.0.0.1:9/nothing-here/{id}")
    index = tmp_path / "df_part.csv"
    write_index(index, testdata, [], papers=("1904.03249",))
    main(["--index", str(index), "--split", "val", "--out", str(tmp_path / "cvf"),
          "--eprint-url", url, "--delay", "0", "--version", "latest"])
    assert "2/2 images written" in capsys.readouterr().out
    assert len(list((tmp_path / "cvf" / "val" / "1904.03249").glob("*.png"))) == 2
    with pytest.raises(SystemExit):
        main(["--index", str(index), "--split", "val", "--out", str(tmp_path / "cvf"),
              "--eprint-url", "http://127.0.0.1:1/e-print/"])
    assert "placeholder" in capsys.readouterr().err


def test_report_lists_exact_and_near_duplicate_images(tmp_path, data_root):
    """Listed images that repeat one another (same bytes, or nearly the same picture) are all
    written, and the report names each pair."""
    from PIL import ImageDraw

    from test_extract import photo, tar_gz

    base = Image.open(io.BytesIO(photo(7, (300, 200))))
    touched = base.copy()
    ImageDraw.Draw(touched).rectangle((0, 0, 3, 3), fill=(255, 255, 255))  # a few pixels off
    eprints = tmp_path / "eprints"
    eprints.mkdir()
    (eprints / "2101.00001.tar.gz").write_bytes(tar_gz({
        "a.png": photo(7, (300, 200)), "copy/a.png": photo(7, (300, 200)),
        "touched.png": _png(touched), "other.png": photo(8, (300, 200))}))
    index = tmp_path / "df.csv"
    index.write_text(",paper_id,img_name\n0,2101.00001,a.png\n1,2101.00001,copy_a.png\n"
                     "2,2101.00001,touched.png\n3,2101.00001,other.png\n")
    report = rebuild(index, "train", tmp_path / "cvf", eprints_dir=eprints, delay=0,
                     progress=False)
    assert report["images_written"] == 4
    assert report["exact_duplicate_images"] == [["2101.00001/copy_a.png", "2101.00001/a.png"]]
    assert report["near_duplicate_images"] == [["2101.00001/touched.png", "2101.00001/a.png"]]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# --- our manifests: publish -> rebuild -> verify round-trips ------------------------------------

def _rgba_png() -> bytes:
    """A half-transparent figure: ours composites it on white, the official tool drops alpha."""
    rgba = np.zeros((120, 160, 4), np.uint8)
    rgba[..., 0] = np.linspace(0, 255, 160, dtype=np.uint8)
    rgba[:, 40:120, 3] = 255
    return _png(Image.fromarray(rgba, "RGBA"))


@pytest.fixture(scope="module")
def published_manifest(testdata, tmp_path_factory):
    """Real e-prints (PDF figures) and a crafted one (rasters, one with alpha), extracted with
    the default settings (CropBox, straight to size), scored 1, filtered and published."""
    from pipeline import filter as flt
    from pipeline import publish
    from pipeline.classify import SCORE_SCHEMA
    from pipeline.extract import extract_shard
    from pipeline.split import split_of
    from pipeline.shards import shard_of_id
    from test_extract import photo, tar_gz, write_papers

    base = tmp_path_factory.mktemp("roundtrip")
    root, eprints = base / "data", base / "eprints"
    eprints.mkdir()
    for paper_id in ("1904.03249", "2202.04200"):
        (eprints / f"{paper_id}.tar.gz").symlink_to(testdata / "eprints" / f"{paper_id}.tar.gz")
    (eprints / "2101.00001.tar.gz").write_bytes(tar_gz({"photo.png": photo(3, (300, 200)),
                                                        "alpha.png": _rgba_png()}))
    papers = sorted(p.name[: -len(".tar.gz")] for p in eprints.iterdir())
    for paper_id in papers:
        shard = shard_of_id(paper_id)
        write_papers(root, shard, {paper_id: eprints / f"{paper_id}.tar.gz"})
        extract_shard(shard, root, progress=False)
        figures = [r for r in store.read_rows(root / "figures" / f"{shard}.parquet")
                   if r["status"] == "ok"]
        store.write_rows(root / "scores" / f"{shard}.parquet",
                         [{"paper_id": r["paper_id"], "img_name": r["img_name"], "sha256": r["sha256"],
                           "score": 1.0, "model_version": "m", "status": "ok", "error": ""}
                          for r in figures], SCORE_SCHEMA)
        store.write_stats(root / "scores", shard, {"model_version": "m"})
    seed = next(s for s in range(100) if {split_of(p, s) for p in papers} == {"train", "val"})
    flt.run(root, threshold=0.0, seed=seed)
    publish.publish(root, "cvf-rt", out=str(base / "manifests"))
    return root, eprints, base / "manifests" / "cvf-rt"


def test_manifest_rebuilds_to_its_own_pixels(published_manifest, tmp_path, monkeypatch):
    from pipeline import verify

    root, eprints, manifest = published_manifest
    monkeypatch.setenv("CVF_DATA", str(tmp_path / "rebuild-root"))
    train = pq.read_table(manifest / "train.parquet").to_pylist()
    val = pq.read_table(manifest / "val.parquet").to_pylist()
    assert {r["render"] for r in train + val} == {"crop"} and all(len(r["phash"]) == 16 for r in train + val)
    assert {r["img_name"] for r in train + val} >= {"photo.png", "alpha.png", "figures_vis.pdf"}
    # The official CSV of the manifest rebuilds the official pixels, which are not ours: the
    # PDFs (MediaBox at 200 DPI, then thumbnail) and the RGBA raster (alpha dropped, not white).
    out = tmp_path / "rebuilt"
    for split in ("train", "val"):
        rebuild(manifest / f"df_{split}.csv", split, out, eprints_dir=eprints, delay=0, progress=False)
    result = verify.verify(str(manifest), out)
    differ = {r["figure"] for r in result["near_figures"] + result["image_problems"]}
    paper_of_alpha = next(r["paper_id"] for r in train + val if r["img_name"] == "alpha.png")
    assert f"{paper_of_alpha}/alpha.png" in differ and f"{paper_of_alpha}/photo.png" not in differ
    assert any(name.endswith(".pdf") for name in differ)

    # The manifest's Parquet rebuilds our pixels, into the same folder: what the official run
    # made with other settings is made again, not kept as done.
    for split in ("train", "val"):
        report = rebuild(manifest / f"{split}.parquet", split, out, eprints_dir=eprints, delay=0,
                         progress=False)
        assert report["images_missing"] == 0 and report["render_settings"] == {"crop": report["images_listed"]}
        assert report["render_fallback"] == {}
    result = verify.verify(str(manifest), out)
    assert result["image_problems"] == [] and result["near"] == 0
    assert result["ok"] == result["figures"] == len(train) + len(val)


def test_render_settings_of_an_index(tmp_path):
    """Each listed image gets the setting the index names; what the e-print cannot reproduce
    (a PDF-fallback region, an empty or unknown value) falls back to the default, counted."""
    import pyarrow as pa

    from pipeline.rebuild import choose_settings, index_rows, render_settings

    rows = [("2101.00001", "a.pdf", "crop"), ("2101.00001", "b.pdf", "media"),
            ("2101.00001", "c.pdf", "official"), ("2101.00001", "d.pdf", "official-poppler"),
            ("2101.00002", "page3_fig1.png", "pdf-region"), ("2101.00002", "e.png", None),
            ("2101.00002", "f.png", "sharpened")]
    index = tmp_path / "val.parquet"
    pq.write_table(pa.table({"paper_id": [r[0] for r in rows], "img_name": [r[1] for r in rows],
                             "render": [r[2] for r in rows]}), index)
    renders = render_settings(index_rows(index))
    chosen, fallback = choose_settings(read_index(index), renders, "official")
    assert [chosen[r[:2]] for r in rows] == ["crop", "media", "official", "official-poppler",
                                             "official", "official", "official"]
    assert fallback == {"pdf-region": 1, "unknown": 1, "sharpened": 1}
    csv_index = tmp_path / "df_val.csv"  # the official CSV: no render column, nothing counted
    csv_index.write_text(",paper_id,img_name\n0,2101.00001,a.pdf\n")
    assert render_settings(index_rows(csv_index)) == {}
    assert choose_settings(read_index(csv_index), {}, "official-poppler") == (
        {("2101.00001", "a.pdf"): "official-poppler"}, {})


def test_verify_tells_a_slightly_different_render_from_a_different_picture(published_manifest, tmp_path):
    """Another PyMuPDF/Pillow can change a few pixels: same size, perceptual hash within
    extraction's near-duplicate distance -> `near`, fine unless --strict. A different picture of
    the same size is a problem either way."""
    from pipeline import verify
    from pipeline.near_duplicates import NEAR_DUP_BITS

    root, _, manifest = published_manifest
    images = shutil.copytree(root / "images", tmp_path / "images")
    rows = {r["img_name"]: r for r in verify.read_manifest_rows(str(manifest))}
    touched, other = images / rows["figures_vis.pdf"]["image_path"], images / rows["photo.png"]["image_path"]
    pixels = np.asarray(Image.open(touched).convert("RGB")).copy()
    pixels[:4, :4] = 255 - pixels[:4, :4]  # a few pixels off, as anti-aliasing changes would be
    Image.fromarray(pixels).save(touched)
    size = Image.open(other).size
    Image.fromarray(np.random.default_rng(9).integers(0, 255, (size[1], size[0], 3), np.uint8)).save(other)

    result = verify.verify(str(manifest), images)
    vis = f"{rows['figures_vis.pdf']['paper_id']}/figures_vis.pdf"
    assert [(n["figure"], n["bits"] <= NEAR_DUP_BITS) for n in result["near_figures"]] == [(vis, True)]
    assert result["near"] == 1 and result["ok"] == result["figures"] - 2
    [problem] = result["image_problems"]
    assert problem["figure"].endswith("/photo.png") and "so does the picture" in problem["problem"]

    strict = verify.verify(str(manifest), images, strict=True)
    assert strict["near"] == 0 and {p["figure"] for p in strict["image_problems"]} == {vis, problem["figure"]}

    Image.open(root / "images" / rows["photo.png"]["image_path"]).save(other)  # only the near one left
    cli = [sys.executable, "-m", "pipeline.verify", str(manifest), "--images", str(images)]
    ok = subprocess.run(cli, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 images are near: same picture, pixels differ slightly: another renderer version" in ok.stdout
    refused = subprocess.run(cli + ["--strict"], capture_output=True, text=True)
    assert refused.returncode == 1 and "refused by --strict" in refused.stdout


# --- PDF-fallback figures: cut again from the paper PDF -----------------------------------------

PDF_ONLY = {"2105.00001": "docbank_1805.05760_cataracts_black.pdf",  # the e-print is the PDF
            "2105.00002": "pdffigures2_test_498bb0ef_open_ie.pdf"}   # no e-print; the crawled PDF


@pytest.fixture(scope="module")
def pdf_only_manifest(testdata, tmp_path_factory):
    """Two papers without LaTeX source, extracted through the PDF fallback, scored 1, filtered
    and published; a loopback arXiv serving the second one's PDF (and no e-print for it)."""
    from pipeline import filter as flt
    from pipeline import publish
    from pipeline.classify import SCORE_SCHEMA
    from pipeline.extract import extract_shard
    from pipeline.split import split_of
    from test_extract import write_papers

    base = tmp_path_factory.mktemp("pdf-only")
    root, eprints, served = base / "data", base / "eprints", base / "served"
    pdf = {p: (testdata / "pdfs" / name).read_bytes() for p, name in PDF_ONLY.items()}
    write_papers(root, "2021-05", {"2105.00001": pdf["2105.00001"], "2105.00002": None},
                 pdfs={"2105.00002": pdf["2105.00002"]})
    extract_shard("2021-05", root, progress=False)
    figures = [r for r in store.read_rows(root / "figures" / "2021-05.parquet") if r["status"] == "ok"]
    store.write_rows(root / "scores" / "2021-05.parquet",
                     [{"paper_id": r["paper_id"], "img_name": r["img_name"], "sha256": r["sha256"],
                       "score": 1.0, "model_version": "m", "status": "ok", "error": ""}
                      for r in figures], SCORE_SCHEMA)
    store.write_stats(root / "scores", "2021-05", {"model_version": "m"})
    seed = next(s for s in range(100) if {split_of(p, s) for p in PDF_ONLY} == {"train", "val"})
    flt.run(root, threshold=0.0, seed=seed)
    publish.publish(root, "cvf-pdf", out=str(base / "manifests"))

    eprints.mkdir()
    (eprints / "2105.00001").write_bytes(pdf["2105.00001"])
    (served / "pdf").mkdir(parents=True)
    (served / "pdf" / "2105.00002").write_bytes(pdf["2105.00002"])
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    urls = {"eprint_url": f"http://127.0.0.1:{server.server_port}/e-print/{{id}}",
            "pdf_url": f"http://127.0.0.1:{server.server_port}/pdf/{{id}}"}
    yield {"figures": figures, "eprints": eprints, "urls": urls, "server": server,
           "manifest": base / "manifests" / "cvf-pdf"}
    server.shutdown()
    server.server_close()


def test_pdf_region_figures_rebuild_exactly_from_the_manifest(pdf_only_manifest, tmp_path,
                                                              monkeypatch):
    """extract (PDF fallback) -> filter -> publish -> rebuild from the manifest's Parquet ->
    verify: every figure is cut again to the same sha256, from the e-print that is a PDF and
    from the paper PDF fetched like the crawl does; nothing missing, nothing falls back."""
    from pipeline import verify

    m = pdf_only_manifest
    manifest = m["manifest"]
    rows = [r for split in ("train", "val") for r in pq.read_table(manifest / f"{split}.parquet").to_pylist()]
    assert {r["paper_id"] for r in rows} == set(PDF_ONLY) and len(rows) == len(m["figures"])
    extracted = {(f["paper_id"], f["img_name"]): f for f in m["figures"]}
    for r in rows:  # the manifest says which region: bbox's text reads back to the record's floats
        f = extracted[(r["paper_id"], r["img_name"])]
        assert r["render"] == "pdf-region" and r["page"] == f["page"]
        assert [float(v) for v in r["bbox"].split(",")] == f["bbox"]

    root = tmp_path / "rebuild-root"
    monkeypatch.setenv("CVF_DATA", str(root))
    out = tmp_path / "rebuilt"
    reports = [rebuild(manifest / f"{split}.parquet", split, out, eprints_dir=m["eprints"], delay=0,
                       progress=False, **m["urls"]) for split in ("train", "val")]
    for report in reports:
        assert report["images_missing"] == 0 and report["render_fallback"] == {}
        assert report["images_from_pdf"] == report["images_written"] == report["images_listed"]
        assert report["render_settings"] == {"pdf-region": report["images_listed"]}
    assert (root / "raw" / "2021-05" / "2105.00002.pdf").exists()  # where the crawl keeps it
    result = verify.verify(str(manifest), out)
    assert result["image_problems"] == [] and result["near"] == 0
    assert result["ok"] == result["figures"] == len(rows)

    # A rerun resumes: nothing to fetch or cut again, the same report.
    m["server"].shutdown()
    try:
        again = [rebuild(manifest / f"{split}.parquet", split, out, eprints_dir=m["eprints"],
                         delay=0, progress=False, **m["urls"]) for split in ("train", "val")]
    finally:
        threading.Thread(target=m["server"].serve_forever, daemon=True).start()
    assert again == reports


def test_a_region_that_cannot_be_cut_is_missing_with_its_reason(pdf_only_manifest, tmp_path,
                                                               data_root):
    """A page the PDF lacks, a malformed bbox, no PDF anywhere: each listed figure gets its own
    line in missing.csv; a pdf-region row without page/bbox keeps the official fallback."""
    import pyarrow as pa

    m = pdf_only_manifest
    index = tmp_path / "val.parquet"
    rows = [("2105.00001", "page3_fig1.png", 2, "55.24,50.54,293.75,223.89"),  # fine
            ("2105.00001", "page99_fig9.png", 98, "10.0,10.0,100.0,100.0"),     # no such page
            ("2105.00001", "page3_fig7.png", 2, "10.0,10.0,100.0"),             # three numbers
            ("2105.00003", "page1_fig1.png", 0, "10.0,10.0,100.0,100.0"),       # no e-print, no PDF
            ("2105.00001", "page4_fig3.png", None, "")]                         # no region given
    pq.write_table(pa.table({"paper_id": [r[0] for r in rows], "img_name": [r[1] for r in rows],
                             "render": ["pdf-region"] * len(rows),
                             "page": pa.array([r[2] for r in rows], pa.int64()),
                             "bbox": [r[3] for r in rows]}), index)
    report = rebuild(index, "val", tmp_path / "out", eprints_dir=m["eprints"], delay=0,
                     progress=False, **m["urls"])
    missing = {(r["paper_id"], r["img_name"]): r["reason"] for r in
               csv.DictReader(open(data_root / "rebuild" / "val" / "missing.csv"))}
    assert "page 98 out of range" in missing[("2105.00001", "page99_fig9.png")]
    assert "bad page/bbox" in missing[("2105.00001", "page3_fig7.png")]
    assert "paper PDF missing" in missing[("2105.00003", "page1_fig1.png")]
    assert "e-print is the paper's PDF" in missing[("2105.00001", "page4_fig3.png")]
    assert ("2105.00001", "page3_fig1.png") not in missing
    assert report["images_from_pdf"] == report["images_written"] == 1
    assert report["render_fallback"] == {"pdf-region": 1}
    assert (tmp_path / "out" / "val" / "2105.00001" / "page3_fig1.png").exists()
